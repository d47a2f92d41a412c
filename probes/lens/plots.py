"""A layer x position heatmap (PNG) and an HTML table of a lens: the top token at every layer and position."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np


def lens_heatmap(result: Any, path: str | Path, *, max_positions: int = 32, title: str | None = None) -> Path:
    """Top-1 probability per layer (rows, ``layers.0`` at the bottom) and position, the top token written in."""
    from probes.evaluation.plots import new_figure as _figure
    from probes.evaluation.plots import save_figure as _save

    n_pos = min(len(result.tokens), max_positions)
    probs = np.asarray(result.top_probs)[:, :n_pos, 0]
    n_layers = probs.shape[0]
    fig = _figure(figsize=(max(6.0, 0.9 * n_pos + 1.5), max(3.0, 0.42 * n_layers + 1.4)))
    ax = fig.subplots()
    im = ax.imshow(probs, aspect="auto", origin="lower", cmap="Blues", vmin=0.0, vmax=1.0)
    for li in range(n_layers):
        for p in range(n_pos):
            tok = result.top_tokens[li][p][0].replace("\n", "\\n")
            ax.text(
                p,
                li,
                tok[:8],
                ha="center",
                va="center",
                fontsize=7,
                color="white" if probs[li, p] > 0.6 else "black",
            )
    ax.set_yticks(range(n_layers), result.layers, fontsize=7)
    ax.set_xticks(
        range(n_pos), [t.replace("\n", "\\n")[:8] for t in result.tokens[:n_pos]], rotation=60, fontsize=7
    )
    ax.set_xlabel("input token (the lens shows the prediction for the next one)")
    ax.set_title(title or f"{result.lens} lens: top-1 next token and its probability", fontsize=9)
    fig.colorbar(im, ax=ax, label="top-1 probability")
    return _save(fig, path)


def lens_html(result: Any, path: str | Path, *, title: str | None = None) -> Path:
    """A standalone HTML table: a column per position, a row per layer, the top token (top-k on hover)."""
    rows = []
    header = "".join(f"<th>{html.escape(t)}</th>" for t in result.tokens)
    for li in reversed(range(len(result.layers))):
        cells = []
        for p in range(len(result.tokens)):
            prob = float(result.top_probs[li, p, 0])
            tip = " | ".join(
                f"{tok!r} {float(pr):.3f}"
                for tok, pr in zip(result.top_tokens[li][p], result.top_probs[li, p], strict=True)
            )
            shade = f"rgba(31,119,180,{prob:.2f})"
            cells.append(
                f'<td style="background:{shade}" title="{html.escape(tip)}  KL→final {float(result.kl_to_final[li, p]):.3f}">'
                f"{html.escape(result.top_tokens[li][p][0])}</td>"
            )
        rows.append(f"<tr><th>{result.layers[li]}</th>{''.join(cells)}</tr>")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title or result.lens + " lens")}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;white-space:pre}} thead th{{background:#eee}}</style></head><body>
<h3>{html.escape(title or result.lens + " lens")}: the top next token at each layer (rows) after each input token
(columns); shade = its probability, hover for the top-k and the KL to the final layer</h3>
<table><thead><tr><th>layer</th>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table></body></html>
"""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out
