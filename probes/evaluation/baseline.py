"""Baselines without the model's internals: can the labels be read off the surface text, or off length?

If TF-IDF + logistic regression on the text scores as well as the probe, the dataset is confounded (the
classes differ in wording, topic or length) and a high probe AUROC says nothing about the model's internal
state. Run it twice with the same splits: on the full texts and on the detected spans alone
(``ContrastDataset.texts`` and ``.target_texts``).

TF-IDF does not see *where* the detected span sits in the token sequence, yet a residual stream does (a
causal model's activations carry position). :func:`length_baseline` fits a logistic regression on a few
token counts per row (:func:`length_features`: tokens before the target, target tokens, total tokens); if it
comes close to the probe, the probe may be reading position or length rather than the state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.evaluation.metrics import auprc, auroc, with_ci

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.types import Encoded


@dataclass
class BaselineResult:
    """Held-out metrics of a baseline (text-only or length)."""

    auroc: float
    auroc_ci: tuple[float, float]
    auprc: float
    accuracy: float
    n_train: int
    n_test: int
    n_features: int
    C: float = 1.0
    scores: list[float] | None = None  # test decision scores, for plots and paired comparisons

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_baseline(
    train_texts: Sequence[str],
    train_labels: Any,
    test_texts: Sequence[str],
    test_labels: Any,
    *,
    train_groups: Sequence[Any] | None = None,
    test_groups: Sequence[Any] | None = None,
    C: float | str = "auto",
    n_bootstrap: int = 1000,
    seed: int = 0,
    keep_scores: bool = False,
) -> BaselineResult:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, fitted on the train texts only.

    ``C="auto"`` picks the inverse regularisation strength from ``CS_GRID`` by cross-validated AUROC on
    the train texts (grouped folds when ``train_groups`` is given): a baseline that is too weak would
    hide exactly the confound it exists to expose. ``train_groups``/``test_groups`` also guard against
    leakage: a group present in both splits is an error, because a pair split across train and test lets
    the baseline memorise it. ``test_groups`` makes the AUROC interval a grouped bootstrap.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y_train, y_test = _check_inputs(
        "text_baseline",
        len(train_texts),
        train_labels,
        len(test_texts),
        test_labels,
        train_groups,
        test_groups,
    )
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    X_train = vectorizer.fit_transform(list(train_texts))
    X_test = vectorizer.transform(list(test_texts))
    if C == "auto":
        C = _choose_C(X_train, y_train, train_groups, seed)
    elif isinstance(C, str):
        raise ValueError(f"C must be a float or 'auto', got {C!r}.")
    clf = LogisticRegression(C=float(C), max_iter=2000, random_state=seed).fit(X_train, y_train)
    scores = clf.decision_function(X_test)
    return _result(
        scores,
        y_train,
        y_test,
        test_groups=test_groups,
        n_features=len(vectorizer.vocabulary_),
        C=float(C),
        n_bootstrap=n_bootstrap,
        seed=seed,
        keep_scores=keep_scores,
    )


def _result(
    scores: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    *,
    test_groups: Sequence[Any] | None,
    n_features: int,
    C: float,
    n_bootstrap: int,
    seed: int,
    keep_scores: bool,
) -> BaselineResult:
    """The report of a fitted baseline from its test decision scores (log-odds: ``> 0`` is positive)."""
    value, ci = with_ci(auroc, y_test, scores, test_groups, n_bootstrap=n_bootstrap, seed=seed)
    return BaselineResult(
        auroc=value,
        auroc_ci=ci,
        auprc=auprc(y_test, scores),
        accuracy=float(np.mean((scores > 0).astype(np.int64) == y_test)),
        n_train=int(y_train.size),
        n_test=int(y_test.size),
        n_features=n_features,
        C=C,
        scores=[float(v) for v in scores] if keep_scores else None,
    )


def _check_inputs(
    who: str,
    n_train: int,
    train_labels: Any,
    n_test: int,
    test_labels: Any,
    train_groups: Sequence[Any] | None,
    test_groups: Sequence[Any] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 vectors, after checking counts, both train classes and that no group leaks."""
    y_train = np.asarray(train_labels).astype(np.int64).ravel()
    y_test = np.asarray(test_labels).astype(np.int64).ravel()
    if n_train != y_train.size or n_test != y_test.size:
        raise ValueError(f"{who}: train and test need one label per row.")
    if np.unique(y_train).size < 2:
        raise ValueError(f"{who}: the train split needs both classes.")
    if train_groups is not None and test_groups is not None:
        shared = {g for g in train_groups if g is not None} & {g for g in test_groups if g is not None}
        if shared:
            example = sorted(map(str, shared))[:3]
            raise ValueError(
                f"{who}: {len(shared)} groups appear in both train and test (e.g. {example}); "
                "split the dataset by group (ContrastDataset.split) so pairs never leak."
            )
    return y_train, y_test


LENGTH_FEATURES = ("tokens_before_target", "target_tokens", "total_tokens")


def length_features(encoded: Sequence[Encoded]) -> np.ndarray:
    """Per row: tokens before the first target token, target tokens, total tokens (float64, ``(n, 3)``).

    A row whose target was cut away entirely (``target_mask`` all False) counts every token as "before".
    Columns follow :data:`LENGTH_FEATURES`.
    """
    out = np.zeros((len(encoded), len(LENGTH_FEATURES)), dtype=np.float64)
    for i, row in enumerate(encoded):
        mask = np.asarray(row.target_mask, dtype=bool)
        hits = np.flatnonzero(mask)
        out[i] = (hits[0] if hits.size else mask.size, hits.size, len(row.input_ids))
    return out


def length_baseline(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    train_groups: Sequence[Any] | None = None,
    test_groups: Sequence[Any] | None = None,
    C: float = 1.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    keep_scores: bool = False,
) -> BaselineResult:
    """Standardised logistic regression on per-row length features (:func:`length_features`).

    Reported like :func:`text_baseline` (AUROC with a grouped bootstrap CI when ``test_groups`` is given;
    a group in both splits is an error). With three features there is little to regularise, so ``C`` is
    fixed rather than cross-validated.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train = np.asarray(train_features, dtype=np.float64)
    X_test = np.asarray(test_features, dtype=np.float64)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise ValueError(
            f"length_baseline: features must be (n, k) arrays with the same k, got {X_train.shape} and "
            f"{X_test.shape}; build them with length_features(encode_dataset(...))."
        )
    y_train, y_test = _check_inputs(
        "length_baseline", len(X_train), train_labels, len(X_test), test_labels, train_groups, test_groups
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=2000, random_state=seed))
    clf.fit(X_train, y_train)
    scores = clf.decision_function(X_test)
    return _result(
        scores,
        y_train,
        y_test,
        test_groups=test_groups,
        n_features=int(X_train.shape[1]),
        C=float(C),
        n_bootstrap=n_bootstrap,
        seed=seed,
        keep_scores=keep_scores,
    )


CS_GRID = (0.1, 1.0, 10.0, 100.0)


def _choose_C(X: Any, y: np.ndarray, groups: Sequence[Any] | None, seed: int) -> float:
    """Best C of ``CS_GRID`` by 3-fold (grouped when possible) cross-validated AUROC on train only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    n_minor = int(min(y.sum(), y.size - y.sum()))
    if n_minor < 3:
        return 1.0
    if groups is not None and len({g for g in groups if g is not None}) >= 3:
        keys = [f"row{i}" if g is None else f"g{g}" for i, g in enumerate(groups)]
        splits = list(GroupKFold(n_splits=3).split(X, y, keys))
    else:
        splits = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=seed).split(X, y))
    best_c, best_auc = 1.0, -np.inf
    for c in CS_GRID:
        fold_aucs = []
        for tr, va in splits:
            if np.unique(y[tr]).size < 2:
                continue
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(X[tr], y[tr])
            value = auroc(y[va], clf.decision_function(X[va]))
            if np.isfinite(value):
                fold_aucs.append(value)
        mean = float(np.mean(fold_aucs)) if fold_aucs else -np.inf
        if mean > best_auc + 1e-9:  # ties keep the smaller C (stronger regularisation)
            best_c, best_auc = c, mean
    return best_c


def confound_check(
    probe_auroc: float | None,
    baseline_auroc: float | None,
    margin: float = 0.05,
    *,
    what: str = "text-only",
    reading: str | None = None,
) -> str | None:
    """A warning when a baseline comes within ``margin`` of the probe's AUROC, else ``None``.

    ``what`` names the baseline; ``reading`` says what the probe could be reading instead of the state
    (default: "position or length" for a baseline whose name starts with "length", else "surface text").
    """
    if probe_auroc is None or baseline_auroc is None:
        return None
    if math.isnan(probe_auroc) or math.isnan(baseline_auroc):
        return None
    if reading is None:
        reading = "position or length" if what.startswith("length") else "surface text"
    if baseline_auroc >= probe_auroc - margin:
        return (
            f"{what} baseline AUROC {baseline_auroc:.3f} is within {margin:g} of (or above) the probe's "
            f"{probe_auroc:.3f}: the dataset may be confounded — the probe could be reading {reading} "
            "rather than the model's internal state."
        )
    return None
