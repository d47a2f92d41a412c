"""Known-answer analysis of the grokked model with the public API: the numbers and plots of the README.

    python scripts/grokking_analysis.py            # reads models/grokking_113, writes docs/images/grokking_*

1. Fourier analysis of the embedding: norm per frequency, key frequencies.
2. Sparse regression probes (``probes.SparseProbe``) on ``layers.0`` at the token ``a`` of ``"a b ="``: R² on
   held-out values of ``a`` for cos/sin(2πk·a/113), for every frequency k; the circle the two probes of a key
   frequency trace.
3. Excluded loss: the loss after removing each frequency's cos/sin(2πk(a + b - c)/113) from the logits.

Writes ``docs/images/grokking_circle.png``, ``docs/images/grokking_excluded_loss.png`` and
``docs/images/grokking_numbers.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import probes
from probes.evaluation import excluded_loss, fourier_targets, frequency_norms, key_frequencies

P = 113


def embedding_activations(model, tokenizer, tmp: Path):
    rng = np.random.default_rng(0)
    targets = fourier_targets(np.arange(P), P, range(1, (P - 1) // 2 + 1))
    rows = []
    for a in range(P):
        values = {name: float(v[a]) for name, v in targets.items()}
        text = f"{a} {int(rng.integers(P))} ="
        rows.append(
            {
                "id": str(a),
                "text": text,
                "group": str(a),
                "target": {"span": [0, len(str(a))]},
                "target_value": values,
            }
        )
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = probes.load_dataset(tmp / "data.jsonl", kind="regress")
    return probes.collect(model, tokenizer, data, layers=["layers.0"], pooling="last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/grokking_113")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--tmp", type=Path, default=Path(".cache/grokking_analysis"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, tokenizer = probes.load_model(args.model, device="cpu", progress=False)
    W_E = model.get_input_embeddings().weight[:P]
    norms = frequency_norms(W_E, P)
    keys = key_frequencies(W_E, P)
    print(
        f"key frequencies: {keys}  (norms {np.round(norms[np.asarray(keys) - 1], 2).tolist()}, median {np.median(norms):.2f})"
    )

    acts = embedding_activations(model, tokenizer, args.tmp)
    order = np.random.default_rng(1).permutation(P)
    train, test = acts.subset(order[:80]), acts.subset(order[80:])
    r2: dict[str, dict[str, float]] = {}
    coords: dict[str, int] = {}
    t0 = time.perf_counter()
    for k in range(1, (P - 1) // 2 + 1):
        for fn in ("cos", "sin"):
            name = f"{fn}{k}"
            probe = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
                train["layers.0"], train.values[name], groups=train.groups
            )
            rep = probes.evaluate_regression(probe, test, layer="layers.0", target=name, n_bootstrap=500)
            r2[name] = {"r2": round(rep.r2, 4), "lo": round(rep.r2_ci[0], 4), "hi": round(rep.r2_ci[1], 4)}
            coords[name] = rep.n_coordinates
            if k in keys:
                print(rep)
    fit_s = time.perf_counter() - t0

    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    a, b = a.flatten(), b.flatten()
    with torch.no_grad():
        logits = model(input_ids=torch.stack([a, b, torch.full_like(a, P)], 1)).logits[:, -1, :P]
    base = excluded_loss(logits, a, b, P, [])
    single = [excluded_loss(logits, a, b, P, [k]) for k in range(1, (P - 1) // 2 + 1)]
    all_keys = excluded_loss(logits, a, b, P, keys)
    others = [k for k in range(1, 57) if k not in keys][: len(keys)]
    other_loss = excluded_loss(logits, a, b, P, others)

    unused = [k for k in range(1, 57) if norms[k - 1] < 2 * np.median(norms)]
    numbers = {
        "key_frequencies": keys,
        "frequency_norms": np.round(norms, 4).tolist(),
        "probe_r2_key": {f"{fn}{k}": r2[f"{fn}{k}"] for k in keys for fn in ("cos", "sin")},
        "probe_coordinates_key": {f"{fn}{k}": coords[f"{fn}{k}"] for k in keys for fn in ("cos", "sin")},
        "probe_r2_unused_max": max(r2[f"{fn}{k}"]["r2"] for k in unused for fn in ("cos", "sin")),
        "probe_r2_unused_median": float(
            np.median([r2[f"{fn}{k}"]["r2"] for k in unused for fn in ("cos", "sin")])
        ),
        "n_unused": len(unused),
        "probe_r2_all": {k: v["r2"] for k, v in r2.items()},
        "probe_fit_s_112_probes": round(fit_s, 1),
        "loss": base,
        "excluded_loss_keys": all_keys,
        "excluded_loss_same_number_of_other_frequencies": other_loss,
        "excluded_loss_single": [round(x, 6) for x in single],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grokking_numbers.json").write_text(json.dumps(numbers, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: v
                for k, v in numbers.items()
                if k not in ("probe_r2_all", "frequency_norms", "excluded_loss_single")
            },
            indent=1,
        )
    )
    plots(acts, train, test, keys, r2, norms, single, base, args.out)


def plots(acts, train, test, keys, r2, norms, single, base, out: Path) -> None:
    from matplotlib.figure import Figure

    k = keys[0]
    cos = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
        train["layers.0"], train.values[f"cos{k}"], groups=train.groups
    )
    sin = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
        train["layers.0"], train.values[f"sin{k}"], groups=train.groups
    )
    fig = Figure(figsize=(10, 4.4))
    ax1, ax2 = fig.subplots(1, 2)
    for part, marker, label in ((train, "o", "train a"), (test, "^", "held-out a")):
        x, y = cos.predict(part["layers.0"]), sin.predict(part["layers.0"])
        a = np.array([int(i) for i in part.ids])
        sc = ax1.scatter(x, y, c=(k * a) % P, cmap="hsv", marker=marker, s=22, label=label, vmin=0, vmax=P)
    t = np.linspace(0, 2 * np.pi, 200)
    ax1.plot(np.cos(t), np.sin(t), color="grey", lw=0.6, ls=":")
    ax1.set_aspect("equal")
    ax1.set_xlabel(f"probe for cos(2π·{k}·a/113)  ({cos.n_nonzero_} coords)")
    ax1.set_ylabel(f"probe for sin(2π·{k}·a/113)  ({sin.n_nonzero_} coords)")
    ax1.set_title(f"Two sparse probes on the embedding trace the circle (k={k})", fontsize=9)
    ax1.legend(fontsize=7, loc="lower right")
    fig.colorbar(sc, ax=ax1, label=f"{k}·a mod 113")
    ks = np.arange(1, len(norms) + 1)
    best = np.maximum([r2[f"cos{i}"]["r2"] for i in ks], [r2[f"sin{i}"]["r2"] for i in ks])
    ax2.bar(ks, np.clip(best, -0.2, 1), color=["#d62728" if i in keys else "#7f7f7f" for i in ks])
    ax2.set_xlabel("frequency k")
    ax2.set_ylabel("held-out R² (best of cos/sin probe)")
    ax2.set_title(f"Held-out R² per frequency (red: the key frequencies {keys})", fontsize=9)
    ax2.axhline(0.9, color="k", lw=0.6, ls=":")
    fig.tight_layout()
    fig.savefig(out / "grokking_circle.png", dpi=120)

    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    ax.bar(ks, single, color=["#d62728" if i in keys else "#7f7f7f" for i in ks])
    ax.axhline(base, color="k", lw=0.6, ls=":", label=f"loss {base:.1e}")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("frequency k removed from the logits")
    ax.set_ylabel("excluded loss (all 113² pairs)")
    ax.set_title("Excluded loss: removing one frequency's cos/sin(2πk(a+b−c)/113)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grokking_excluded_loss.png", dpi=120)


if __name__ == "__main__":
    main()
