"""Fourier tools for models of modular arithmetic (the grokking known-answer test).

A model that has grokked ``a + b mod p`` represents each input by cos/sin(2πk·a/p) for a few *key
frequencies* ``k`` and computes logits that are sums of cos(2πk(a + b - c)/p) (Nanda et al. 2023).

- :func:`fourier_basis`: the orthonormal Fourier basis of functions on ``0..p-1`` (constant, cos k, sin k).
- :func:`frequency_norms` / :func:`key_frequencies`: how much of a matrix indexed by the input (an
  embedding ``W_E[:p]``) sits at each frequency, and which frequencies stand out.
- :func:`fourier_targets`: cos/sin(2πk·x/p) as named regression targets.
- :func:`excluded_loss`: the loss after removing the cos/sin(2πk(a + b - c)/p) components of the logits
  for the given frequencies — high for the frequencies the model uses, near the original for others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def fourier_basis(p: int) -> tuple[list[str], np.ndarray]:
    """``(names, B)``: rows of ``B`` ``(p, p)`` are orthonormal functions of ``x = 0..p-1``.

    Row 0 is the constant; rows ``2k-1`` and ``2k`` are cos and sin of 2πk·x/p for ``k = 1..(p-1)/2``.
    """
    if p < 3 or p % 2 == 0:
        raise ValueError(f"fourier_basis needs an odd modulus p >= 3; got {p}.")
    x = np.arange(p)
    rows, names = [np.ones(p)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
        names += [f"cos{k}", f"sin{k}"]
    basis = np.stack(rows)
    return names, basis / np.linalg.norm(basis, axis=1, keepdims=True)


def frequency_norms(W: np.ndarray | torch.Tensor, p: int) -> np.ndarray:
    """``(p-1)/2`` norms: how much of ``W`` ``(p, d)`` (rows indexed by the input) lies at each frequency ``k``.

    Entry ``k-1`` is the Frobenius norm of ``W`` projected on cos k and sin k.
    """
    W_np = (
        W.detach().cpu().double().numpy() if isinstance(W, torch.Tensor) else np.asarray(W, dtype=np.float64)
    )
    if W_np.shape[0] != p:
        raise ValueError(f"frequency_norms: W has {W_np.shape[0]} rows; need one per input 0..{p - 1}.")
    _, basis = fourier_basis(p)
    coef = basis @ W_np  # (p, d): W in the Fourier basis
    return np.sqrt((coef[1::2] ** 2).sum(1) + (coef[2::2] ** 2).sum(1))


def key_frequencies(W: np.ndarray | torch.Tensor, p: int, *, ratio: float = 4.0) -> list[int]:
    """Frequencies at which ``W`` ``(p, d)`` has more than ``ratio`` times the median frequency norm, ascending.

    A grokked embedding is sparse in the Fourier basis: a handful of frequencies stand far above the rest
    (the median is robust to them), so the rule needs no count of how many to expect.
    """
    norms = frequency_norms(W, p)
    return [int(k) + 1 for k in np.flatnonzero(norms > ratio * np.median(norms))]


def fourier_targets(x: Sequence[int] | np.ndarray, p: int, freqs: Iterable[int]) -> dict[str, np.ndarray]:
    """``{"cos{k}": cos(2πk·x/p), "sin{k}": sin(2πk·x/p)}`` for each ``k`` in ``freqs``."""
    x_arr = np.asarray(x, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in freqs:
        out[f"cos{k}"] = np.cos(2 * np.pi * k * x_arr / p)
        out[f"sin{k}"] = np.sin(2 * np.pi * k * x_arr / p)
    return out


def excluded_loss(
    logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: int, freqs: Iterable[int]
) -> float:
    """Cross-entropy of ``(a + b) % p`` after removing the logits' components along cos/sin(2πk(a+b-c)/p).

    ``logits`` is ``(n, p)`` (one row per pair ``(a, b)``, a column per answer ``c``). For each ``k`` the two
    directions over the whole ``(pair, c)`` grid are projected out (least squares over all entries), as in
    Nanda et al.'s excluded loss. With no frequencies this is the plain loss.
    """
    L = logits.detach().double().clone()
    c = torch.arange(p, dtype=torch.float64)
    s = (a.double() + b.double())[:, None] - c[None, :]  # (n, p): a + b - c
    for k in freqs:
        for fn in (torch.cos, torch.sin):
            u = fn(2 * torch.pi * k * s / p)
            L -= (L * u).sum() / (u * u).sum() * u
    return float(torch.nn.functional.cross_entropy(L, (a + b) % p))
