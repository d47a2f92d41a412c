"""Fit time and held-out AUROC of every pooled probe vs scikit-learn, and a batched 24-layer sweep.

    python bench/fit.py            # 10k and 100k x 768, 24-layer sweep at 5k rows (~5 min on 2 idle cores)
    python bench/fit.py --quick    # 2k and 20k rows, sweep at 2k rows (~1 min)
    python bench/fit.py --threads 1   # every probe on one thread
    python bench/fit.py --threads 1 --issue13   # only LogisticProbe() (auto) and torch vs sklearn, 100k x 768

The baseline is measured in the same run: ``StandardScaler`` + ``LogisticRegression(lbfgs, C=1,
max_iter=1000)`` from scikit-learn. Ratios are baseline time / probe time (> 1 = faster than sklearn).
The synthetic activations imitate a residual stream: anisotropic noise (a decaying spectrum plus a few
shared low-rank factors), large per-feature offsets with a handful of "massive" dimensions, and a planted
class direction; the layer sweep plants a signal that rises and falls with depth.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import timed  # noqa: E402

from probes.train import DiffMeansProbe, LogisticProbe, MLPProbe, fit_logistic_many  # noqa: E402

D = 768


def make_data(
    n: int, seed: int, strength: float = 1.0, generator_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of 768-d synthetic activations; the class geometry depends only on ``generator_seed``."""
    geo = torch.Generator().manual_seed(generator_seed)
    spectrum = torch.logspace(math.log10(3.0), math.log10(0.3), D)
    factors = torch.randn(8, D, generator=geo) * 1.5
    offset = torch.randn(D, generator=geo) * 2.0
    offset[:4] *= 40.0  # "massive activation" dimensions
    direction = torch.randn(D, generator=geo)
    direction = direction / direction.norm()
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % 2
    X = torch.randn(n, D, generator=g) * spectrum + torch.randn(n, 8, generator=g) @ factors + offset
    X += (y.float() - 0.5)[:, None] * (1.2 * strength) * direction
    return X.numpy(), y.numpy().astype(np.int64)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def sklearn_baseline(X: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(X, y)


def pooled_rows(
    n: int, mlp_epochs: int, only_logistic: bool = False
) -> list[tuple[str, str, float, float, float, float]]:
    X, y = make_data(n, seed=1)
    Xte, yte = make_data(20_000, seed=2)
    base, t_base = timed(lambda: sklearn_baseline(X, y))
    auc_base = auroc(yte, base.decision_function(Xte))
    rows = [(f"{n // 1000}k x {D}", "sklearn LogisticRegression(lbfgs)", t_base, 1.0, auc_base, 0.0)]
    probes = {
        "LogisticProbe() (default backend='auto')": lambda: LogisticProbe(),
        "LogisticProbe(backend='sklearn')": lambda: LogisticProbe(backend="sklearn"),
        "LogisticProbe(backend='torch')": lambda: LogisticProbe(backend="torch"),
        "DiffMeansProbe": lambda: DiffMeansProbe(),
        "DiffMeansProbe(lda=True)": lambda: DiffMeansProbe(lda=True),
        f"MLPProbe(hidden=256, max_epochs={mlp_epochs})": lambda: MLPProbe(max_epochs=mlp_epochs),
    }
    if only_logistic:
        probes = {k: v for k, v in probes.items() if "backend='auto'" in k or "backend='torch'" in k}
    for name, make in probes.items():
        probe, t = timed(lambda make=make: make().fit(X, y))
        a = auroc(yte, probe.decision_function(Xte))
        rows.append((f"{n // 1000}k x {D}", name, t, t_base / t, a, a - auc_base))
        print(f"  {name}: {t:.2f}s", flush=True)
    return rows


def layer_sweep(n: int, layers: int = 24) -> tuple[float, float, float, float]:
    strengths = [0.3 + 1.2 * math.sin(math.pi * (i + 1) / (layers + 1)) for i in range(layers)]
    train = [make_data(n, seed=10, strength=s, generator_seed=100 + i) for i, s in enumerate(strengths)]
    test = [make_data(5_000, seed=11, strength=s, generator_seed=100 + i) for i, s in enumerate(strengths)]
    y = train[0][1]
    stack = torch.as_tensor(np.stack([x for x, _ in train]))
    probes, t_batched = timed(lambda: fit_logistic_many(stack, y, C=1.0))
    refs, t_seq = timed(lambda: [sklearn_baseline(x, y) for x, _ in train])
    diffs, corrs = [], []
    for probe, ref, (Xte, yte) in zip(probes, refs, test, strict=True):
        diffs.append(abs(auroc(yte, probe.decision_function(Xte)) - auroc(yte, ref.decision_function(Xte))))
        scaler, lr = ref.steps[0][1], ref.steps[1][1]
        corrs.append(float(np.corrcoef(probe.coef_.numpy(), lr.coef_[0] / scaler.scale_)[0, 1]))
    return t_batched, t_seq, max(diffs), min(corrs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument(
        "--issue13",
        action="store_true",
        help="only the issue-13 check: LogisticProbe() (auto) and backend='torch' vs sklearn on 100k x 768",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="threads for torch and for sklearn/BLAS alike (1 gives stable numbers on a shared machine)",
    )
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000)
    if args.issue13:
        sizes = sizes[1:]
    sweep_n = 2_000 if args.quick else 5_000
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; timings share the CPU with anything else running"
    )
    rows = []
    for n, epochs in zip(sizes, (30, 5)[-len(sizes) :], strict=True):
        print(f"fitting on {n} x {D} ...", flush=True)
        rows += pooled_rows(n, epochs, only_logistic=args.issue13)
    if not args.issue13:
        print(f"layer sweep: 24 layers x {sweep_n} x {D} ...", flush=True)
        t_b, t_s, max_diff, min_corr = layer_sweep(sweep_n)

    print()
    print("| data | probe | fit (s) | speed vs sklearn | held-out AUROC | AUROC - sklearn |")
    print("|---|---|---:|---:|---:|---:|")
    for data, name, t, ratio, a, da in rows:
        print(f"| {data} | {name} | {t:.2f} | {ratio:.2f}x | {a:.4f} | {da:+.4f} |")
    if args.issue13:
        return
    print()
    print(f"| layer sweep (24 layers x {sweep_n} x {D}) | fit (s) | speed-up |")
    print("|---|---:|---:|")
    print(f"| 24 sequential sklearn LogisticRegression(lbfgs) fits | {t_s:.2f} | 1.00x |")
    print(f"| one fit_logistic_many (batched torch L-BFGS) | {t_b:.2f} | {t_s / t_b:.2f}x |")
    print(f"max |AUROC difference| over layers: {max_diff:.4f}; min weight correlation: {min_corr:.4f}")


if __name__ == "__main__":
    main()
