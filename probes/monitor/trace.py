"""The per-token record of a monitored generation: raw and smoothed scores, where each row fired.

During generation the monitor only appends device tensors (one small step record per forward); tokens are
decoded, tensors moved to the host and rows cut at their end only when the trace is read.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class _Step:
    start: int  # column index of the first position of this step
    ids: torch.Tensor | None  # (B, n)
    valid: torch.Tensor | None  # (B, n) bool; None: all real tokens
    raw: torch.Tensor | None  # (B, n, P); None when the step was not scored (e.g. an unscored prompt)
    smoothed: torch.Tensor | None
    firing: torch.Tensor | None  # (B, n, P) bool
    is_prompt: bool
    running: torch.Tensor | None = None  # (B, n, P) each probe's sequence score of the prefix


@dataclass(frozen=True)
class TraceRow:
    """One sequence of the trace, cut at its end (EOS, or the step where the monitor stopped it)."""

    positions: np.ndarray  # (T,) column index in the generated sequences
    token_ids: np.ndarray  # (T,)
    prompt: np.ndarray  # (T,) bool
    score: np.ndarray  # (T, P) raw decision scores, NaN where not scored
    smoothed: np.ndarray  # (T, P)
    firing: np.ndarray  # (T, P) bool
    running: np.ndarray  # (T, P) each probe's sequence score of the prefix up to this token
    fired_at: int | None  # position where the row first fired
    fired_probe: int | None
    stopped: bool


class Trace:
    """Per row and token: raw score, smoothed score, whether it fired, for every probe of the monitor."""

    def __init__(
        self,
        probe_names: list[str],
        thresholds: list[float],
        batch: int,
        tokenizer: Any = None,
        eos_ids: list[int] | None = None,
        stop_rows: bool = False,
        end_id: int | None = None,
    ) -> None:
        self.probe_names = probe_names
        self.thresholds = thresholds
        self.batch = batch
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids or [])
        self._stop_rows = stop_rows
        # The token a stopped row is forced to end with (see Monitor.logits_processor).
        self._end_ids = set(self.eos_ids) | ({int(end_id)} if end_id is not None else set())
        self._stopped_rows: set[int] = set()
        self._steps: list[_Step] = []
        self._sequences: torch.Tensor | None = None
        self._rows: list[TraceRow] | None = None
        self._n_steps_built = -1

    def _append(self, step: _Step) -> None:
        self._steps.append(step)

    # --- materialisation (host side, only when read) ----------------------------------------------
    @property
    def rows(self) -> list[TraceRow]:
        key = (len(self._steps), None if self._sequences is None else tuple(self._sequences.shape))
        if self._rows is None or self._n_steps_built != key:
            self._rows = self._build()
            self._n_steps_built = key  # type: ignore[assignment]
        return self._rows

    def _build(self) -> list[TraceRow]:
        b, p = self.batch, len(self.probe_names)
        cols: dict[
            int, tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
        ] = {}
        for step in self._steps:
            if step.valid is not None:
                valid = step.valid.detach().cpu().numpy()
            else:
                n_pos = (
                    step.raw.shape[1]
                    if step.raw is not None
                    else (step.ids.shape[1] if step.ids is not None else 1)
                )
                valid = np.ones((b, n_pos), dtype=bool)
            n = valid.shape[1]
            ids = step.ids.detach().cpu().numpy() if step.ids is not None else np.full((b, n), -1)
            if step.raw is not None:
                raw = step.raw.detach().float().cpu().numpy()
                sm = step.smoothed.detach().float().cpu().numpy()  # type: ignore[union-attr]
                fi = step.firing.detach().cpu().numpy()  # type: ignore[union-attr]
                ru = sm if step.running is None else step.running.detach().float().cpu().numpy()
            else:
                raw = sm = ru = np.full((b, n, p), np.nan, dtype=np.float32)
                fi = np.zeros((b, n, p), dtype=bool)
            for t in range(n):
                cols[step.start + t] = (
                    step.is_prompt,
                    ids[:, t],
                    valid[:, t],
                    raw[:, t],
                    sm[:, t],
                    fi[:, t],
                    ru[:, t],
                )
        if self._sequences is not None:
            # Tokens generate sampled but never fed back (the last step): shown unscored.
            seq = self._sequences.detach().cpu().numpy()
            for pos in range(seq.shape[1]):
                if pos not in cols:
                    nan = np.full((b, p), np.nan, dtype=np.float32)
                    cols[pos] = (False, seq[:, pos], np.ones(b, bool), nan, nan, np.zeros((b, p), bool), nan)
        order = sorted(cols)
        rows = []
        for r in range(b):
            keep_pos, keep = [], []
            fired_at = fired_probe = None
            end = math.inf
            for pos in order:
                if pos > end:
                    break
                is_prompt, ids, valid, raw, sm, fi, ru = cols[pos]
                if not valid[r]:
                    continue
                if pos == end and fired_at is not None and int(ids[r]) in self._end_ids:
                    # The end token the monitor forced after the firing token: the model did not write it,
                    # and whether it was read at all depends on the other rows, so it is never scored.
                    raw = sm = ru = np.full_like(raw, np.nan)
                    fi = np.zeros_like(fi)
                keep_pos.append(pos)
                keep.append((int(ids[r]), is_prompt, raw[r], sm[r], fi[r], ru[r]))
                if fired_at is None and fi[r].any():
                    fired_at, fired_probe = pos, int(np.argmax(fi[r]))
                    if self._stop_rows or r in self._stopped_rows:
                        # The next token still lands: the forced EOS with Monitor.logits_processor, else
                        # the token sampled in the same step (a stopping criterion alone is one token late).
                        end = min(end, pos + 1)
                if not is_prompt and int(ids[r]) in self.eos_ids:
                    end = min(end, pos)
            rows.append(
                TraceRow(
                    positions=np.asarray(keep_pos, dtype=np.int64),
                    token_ids=np.asarray([k[0] for k in keep], dtype=np.int64),
                    prompt=np.asarray([k[1] for k in keep], dtype=bool),
                    score=np.asarray([k[2] for k in keep], dtype=np.float32).reshape(-1, p),
                    smoothed=np.asarray([k[3] for k in keep], dtype=np.float32).reshape(-1, p),
                    firing=np.asarray([k[4] for k in keep], dtype=bool).reshape(-1, p),
                    running=np.asarray([k[5] for k in keep], dtype=np.float32).reshape(-1, p),
                    fired_at=fired_at,
                    fired_probe=fired_probe,
                    stopped=fired_at is not None and (self._stop_rows or r in self._stopped_rows),
                )
            )
        return rows

    def _token_strings(self, token_ids: np.ndarray, tokenizer: Any) -> list[str]:
        if tokenizer is None:
            return [str(int(t)) for t in token_ids]
        # Decode prefixes so word-initial spaces (sentencepiece "▁", byte-level "Ġ") come out right; a prefix
        # ending inside a multi-byte character (byte fallback) waits for the token that completes it.
        pieces, prev = [], ""
        ids = [int(t) for t in token_ids]
        for i in range(len(ids)):
            text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
            if text.endswith("\ufffd") and i + 1 < len(ids):
                pieces.append("")
                continue
            common = len(prev) if text.startswith(prev) else len(os.path.commonprefix([prev, text]))
            pieces.append(text[common:])
            prev = text
        return pieces

    # --- views ------------------------------------------------------------------------------------
    @property
    def fired_at(self) -> list[int | None]:
        """Per row, the position (column index) where it first fired, or None."""
        return [row.fired_at for row in self.rows]

    def to_dataframe(self, tokenizer: Any = None, include_unscored: bool = False) -> pd.DataFrame:
        """Long format: one line per row, token and probe.

        Columns: ``row``, ``position`` (column index in the generated sequences, so
        ``sequences[row, position] == token_id``), ``token_id``, ``token``, ``prompt``, ``probe``,
        ``threshold``, ``score`` (raw per-token decision score), ``smoothed`` (what is compared with the
        threshold), ``running`` (the probe's sequence score of the prefix: for a token-level probe its
        offline score of the text up to here), ``fired`` (smoothed score above the threshold for
        ``patience`` tokens at this token).
        """
        import pandas as pd

        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        records: dict[str, list[Any]] = {
            k: []
            for k in (
                "row",
                "position",
                "token_id",
                "token",
                "prompt",
                "probe",
                "threshold",
                "score",
                "smoothed",
                "running",
                "fired",
            )
        }
        for r, row in enumerate(self.rows):
            tokens = self._token_strings(row.token_ids, tokenizer)
            for i, pos in enumerate(row.positions):
                scored = not np.isnan(row.score[i]).all()
                if not scored and not include_unscored:
                    continue
                for j, name in enumerate(self.probe_names):
                    records["row"].append(r)
                    records["position"].append(int(pos))
                    records["token_id"].append(int(row.token_ids[i]))
                    records["token"].append(tokens[i])
                    records["prompt"].append(bool(row.prompt[i]))
                    records["probe"].append(name)
                    records["threshold"].append(self.thresholds[j])
                    records["score"].append(float(row.score[i, j]))
                    records["smoothed"].append(float(row.smoothed[i, j]))
                    records["running"].append(float(row.running[i, j]))
                    records["fired"].append(bool(row.firing[i, j]))
        return pd.DataFrame(records)

    def to_html(
        self,
        path: str | Path | None = None,
        *,
        tokenizer: Any = None,
        probe: str | None = None,
        value: str = "smoothed",
    ) -> str:
        """Self-contained HTML: each row's text with tokens shaded by score (red above the threshold, blue
        below), a legend, and a marker where the monitor fired. Written to ``path`` when given."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        j = self.probe_names.index(probe) if probe is not None else 0
        name, thr = self.probe_names[j], self.thresholds[j]
        center = thr if math.isfinite(thr) else 0.0
        values = [row.smoothed[:, j] if value == "smoothed" else row.score[:, j] for row in self.rows]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        span = float(np.max(np.abs(finite - center))) if finite.size else 1.0
        span = span if span > 0 else 1.0
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'><title>probes monitor trace</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}",
            ".row{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9;border:1px solid #ddd;"
            "padding:.6em;margin:.8em 0;border-radius:4px}",
            ".t{border-radius:2px}.p{color:#777}.fire{background:#000;color:#fff;font-weight:bold;padding:0 .3em;"
            "margin:0 .2em;border-radius:3px}",
            ".legend{display:flex;align-items:center;gap:.5em;font-size:.9em}",
            ".bar{width:16em;height:1em;background:linear-gradient(to right,rgba(40,90,220,.85),#fff,rgba(220,40,40,.85))}",
            "</style></head><body>",
            f"<h2>Monitor trace: probe <code>{html.escape(name)}</code></h2>",
            f"<div class='legend'><span>{center - span:.3g}</span><div class='bar'></div><span>{center + span:.3g}</span>"
            f"<span>({html.escape(value)} decision score; white = threshold {thr:.4g}; grey text = prompt, "
            "unshaded = not scored; <span class='fire'>&#9940; fired</span> marks where the monitor fired)</span></div>",
        ]
        for r, row in enumerate(self.rows):
            tokens = self._token_strings(row.token_ids, tokenizer)
            status = "stopped" if row.stopped else ("fired" if row.fired_at is not None else "did not fire")
            parts.append(f"<h4>row {r} &mdash; {status}</h4><div class='row'>")
            for i, tok in enumerate(tokens):
                v = float(values[r][i])
                cls = "t p" if row.prompt[i] else "t"
                title = f"position {int(row.positions[i])}; score {float(row.score[i, j]):.4g}; smoothed {float(row.smoothed[i, j]):.4g}"
                style = ""
                if math.isfinite(v):
                    a = min(1.0, abs(v - center) / span) * 0.85
                    rgb = "220,40,40" if v > center else "40,90,220"
                    style = f" style='background:rgba({rgb},{a:.3f})'"
                parts.append(
                    f"<span class='{cls}'{style} title='{html.escape(title)}'>{html.escape(tok)}</span>"
                )
                if row.fired_at is not None and int(row.positions[i]) == row.fired_at:
                    label = "stopped" if row.stopped else "fired"
                    parts.append(
                        f"<span class='fire' title='{html.escape(self.probe_names[row.fired_probe or 0])}'>&#9940; {label}</span>"
                    )
            parts.append("</div>")
        parts.append("</body></html>")
        out = "".join(parts)
        if path is not None:
            Path(path).write_text(out, encoding="utf-8")
        return out

    def __repr__(self) -> str:
        return f"Trace(batch={self.batch}, probes={self.probe_names}, steps={len(self._steps)})"
