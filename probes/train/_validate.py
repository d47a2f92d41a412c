"""Input validation and data splitting shared by every probe type (the checks ``fit`` runs first)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from probes.collection.activations import RaggedTokens

ArrayLike = np.ndarray | torch.Tensor


def encode_labels(y: Any, n: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """``(y01, classes)``: binary labels encoded 0/1 and the two class labels they stand for.

    Labels 0/1 (or booleans) mean what the package's sign convention says (1 = the state detected). Any
    other two labels are sorted as scikit-learn sorts them, and the second one (``classes[1]``) is the
    positive class, as in ``LogisticRegression``. A column vector ``(n, 1)`` is accepted with scikit-learn's
    ``DataConversionWarning``; more than two classes, continuous targets and ``None`` are errors.
    """
    if y is None:
        raise ValueError(
            f"{who} requires y to be passed, but the target y is None: pass one 0/1 label per row "
            "(1 = the state the probe detects)."
        )
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y_np.ndim == 2 and y_np.shape[1] == 1:
        from sklearn.exceptions import DataConversionWarning

        warnings.warn(
            f"A column-vector y was passed when a 1d array was expected ({who}); it was raveled.",
            DataConversionWarning,
            stacklevel=3,
        )
        y_np = y_np.ravel()
    if y_np.ndim != 1:
        raise ValueError(f"{who}: y must be 1-D (one label per row); got shape {tuple(y_np.shape)}.")
    if len(y_np) != n:
        raise ValueError(f"{who}: X has {n} rows but y has {len(y_np)} labels; pass one label per row.")
    if y_np.dtype == bool:
        y_np = y_np.astype(np.int64)
    from sklearn.utils.multiclass import check_classification_targets

    check_classification_targets(y_np)  # "Unknown label type: continuous ..." for regression targets
    values = np.unique(y_np)
    if len(values) < 2:
        only = values[0].item() if len(values) and hasattr(values[0], "item") else "-"
        raise ValueError(
            f"{who}: y holds only class {only!r}; a probe needs examples of both classes (0 and 1): "
            "it can't train when only one class is present."
        )
    if len(values) > 2:
        raise ValueError(
            f"{who}: Only binary classification is supported. y holds {len(values)} classes "
            f"({values[:10].tolist()}); label the state the probe detects 1 and everything else 0."
        )
    if np.isin(values, [0, 1]).all():
        return y_np.astype(np.int64), np.array([0, 1], dtype=np.int64)
    return (y_np == values[1]).astype(np.int64), values


def check_labels(y: Any, n: int, who: str) -> np.ndarray:
    """``y`` as an int64 array of 0/1 with both classes present and one label per row."""
    return encode_labels(y, n, who)[0]


def check_matrix(X: Any, who: str) -> torch.Tensor:
    """``X`` as a 2-D floating tensor (device and dtype kept) with only finite values.

    Torch tensors stay on their device; anything else goes through scikit-learn's ``check_array`` (so lists,
    DataFrames, memmaps and read-only arrays work, and sparse, complex or string input is refused with
    scikit-learn's own message).
    """
    if isinstance(X, RaggedTokens):
        raise ValueError(
            f"{who} reads pooled activations (n, d); got token-level RaggedTokens. "
            "Collect with pooling='last' or 'mean', or use TokenProbe / AttentionProbe."
        )
    if isinstance(X, torch.Tensor):
        t = X if X.is_floating_point() else X.float()
        if t.ndim != 2:
            raise ValueError(
                f"{who}: X must be 2-D (n_samples, n_features); got shape {tuple(t.shape)}. "
                "Reshape a single row with X.reshape(1, -1)."
            )
        if t.shape[0] < 2 or t.shape[1] < 1:
            raise ValueError(f"{who}: X needs at least 2 rows and 1 feature; got shape {tuple(t.shape)}.")
        _check_finite(t, who)
        return t
    arr = _check_array(X, who, min_samples=2)
    return torch.as_tensor(arr)


def check_rows(X: Any, who: str) -> torch.Tensor:
    """``X`` to *score*: like :func:`check_matrix`, but one row is enough."""
    if isinstance(X, torch.Tensor):
        t = X if X.is_floating_point() else X.float()
        if t.ndim != 2:
            raise ValueError(
                f"{who}: X must be 2-D (n_samples, n_features); got shape {tuple(t.shape)}. "
                "Reshape a single row with X.reshape(1, -1)."
            )
        return t
    return torch.as_tensor(_check_array(X, who, min_samples=1))


def _check_array(X: Any, who: str, min_samples: int) -> np.ndarray:
    from sklearn.utils import check_array

    shape = np.shape(X) if isinstance(X, np.ndarray | list | tuple) else getattr(X, "shape", None)
    if shape is not None and len(shape) != 2:
        raise ValueError(
            f"{who}: X must be 2-D (n_samples, n_features); got shape {tuple(shape)}. Reshape your data: "
            "X.reshape(1, -1) for a single row, X.reshape(-1, 1) for a single feature."
        )
    name = who.split(".")[0]
    try:
        arr = check_array(
            X,
            dtype=(np.float32, np.float64),
            ensure_min_samples=min_samples,
            estimator=name,
            input_name="X",
        )
    except TypeError as exc:  # sparse input
        raise TypeError(f"{who}: {exc}") from exc
    except ValueError as exc:
        hint = (
            " Check the activation collection (fp16 overflow is a common cause: collect in bfloat16 or "
            "float32)."
            if "NaN" in str(exc) or "infinity" in str(exc)
            else ""
        )
        raise ValueError(f"{who}: {exc}{hint}") from exc
    return np.ascontiguousarray(arr)


def check_ragged(X: Any, who: str) -> RaggedTokens:
    """``X`` as :class:`RaggedTokens` with non-empty sequences and finite values."""
    if not isinstance(X, RaggedTokens):
        raise ValueError(
            f"{who} reads token-level activations: pass RaggedTokens (collect with pooling='tokens'); "
            f"got {type(X).__name__}."
        )
    if X.values.ndim != 2:
        raise ValueError(f"{who}: RaggedTokens.values must be (tokens, d); got {tuple(X.values.shape)}.")
    if len(X) == 0:
        raise ValueError(f"{who}: RaggedTokens holds no sequences.")
    lengths = X.lengths
    if bool((lengths <= 0).any()):
        empty = torch.nonzero(lengths <= 0).flatten()[:5].tolist()
        raise ValueError(f"{who}: sequences {empty} have no tokens; drop them before fitting or scoring.")
    _check_finite(X.values if X.values.is_floating_point() else X.values.float(), who)
    return X


def check_n_features(d: int, n_features_in: int, who: str) -> None:
    if d != n_features_in:
        raise ValueError(
            f"X has {d} features, but {who} is expecting {n_features_in} features as input (it was fitted on "
            f"{n_features_in} features); score activations from the same model and site the probe was trained on."
        )


def _check_finite(t: torch.Tensor, who: str, chunk_rows: int = 65536) -> None:
    # In row chunks: the boolean mask of a memory-mapped (n, d) set would otherwise be a quarter of its size.
    if not all(bool(torch.isfinite(t[i : i + chunk_rows]).all()) for i in range(0, t.shape[0], chunk_rows)):
        raise ValueError(
            f"{who}: X contains NaN or infinite values; check the activation collection "
            "(fp16 overflow is a common cause: collect in bfloat16 or float32)."
        )


def check_groups(groups: Any, n: int, who: str) -> np.ndarray | None:
    """Integer group codes ``(n,)``; a ``None`` entry makes the row its own group."""
    if groups is None:
        return None
    g = list(groups.tolist() if isinstance(groups, np.ndarray | torch.Tensor) else groups)
    if len(g) != n:
        raise ValueError(f"{who}: groups has {len(g)} entries but X has {n} rows.")
    keys = [("row", i) if v is None else ("group", str(v)) for i, v in enumerate(g)]
    _, codes = np.unique(np.array([f"{a}:{b}" for a, b in keys]), return_inverse=True)
    return codes.astype(np.int64)


def cv_splits(
    y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold (train, validation) index pairs; grouped when ``groups`` is given.

    With groups, every group lands in exactly one validation fold, so paired examples (the two sides of a
    contrast pair share a group) never sit on both sides of a split.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if n_splits < 2:
        raise ValueError(f"cv must be an int >= 2 (number of folds); got {n_splits}.")
    if groups is None:
        min_class = int(np.bincount(y, minlength=2).min())
        if min_class < n_splits:
            raise ValueError(
                f"cv={n_splits} folds need at least {n_splits} examples of each class; got {min_class}."
            )
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"cv={n_splits} folds need at least {n_splits} distinct groups; got {n_groups}.")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(y)), y, groups))
    for k, (tr, va) in enumerate(folds):
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[va])) < 2:
            raise ValueError(
                f"cv fold {k} holds a single class (groups are too large or labels too imbalanced); "
                "use fewer folds or pass a fixed C."
            )
    return folds


def holdout_split(
    y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One seeded (train, validation) split for early stopping; grouped when ``groups`` is given.

    The validation part holds about ``fraction`` of the rows and both classes when possible; returns an
    empty validation index when ``fraction`` is 0 or the data are too small to split.
    """
    n = len(y)
    all_idx = np.arange(n)
    if fraction <= 0 or n < 10:
        return all_idx, all_idx[:0]
    codes = groups if groups is not None else all_idx
    uniq = np.unique(codes)
    rng = np.random.default_rng(seed)
    # Stratify by each group's majority label so both classes reach validation.
    group_label = np.zeros(len(uniq), dtype=np.int64)
    pos_rate = np.bincount(np.searchsorted(uniq, codes), weights=y, minlength=len(uniq))
    count = np.bincount(np.searchsorted(uniq, codes), minlength=len(uniq))
    group_label[pos_rate / np.maximum(count, 1) >= 0.5] = 1
    val_groups: list[np.ndarray] = []
    for label in (0, 1):
        members = uniq[group_label == label]
        k = int(round(fraction * len(members)))
        k = min(max(k, 1), len(members) - 1) if len(members) >= 2 else 0
        val_groups.append(rng.permutation(members)[:k])
    is_val = np.isin(codes, np.concatenate(val_groups))
    if is_val.all() or not is_val.any():
        return all_idx, all_idx[:0]
    return all_idx[~is_val], all_idx[is_val]


@contextmanager
def threads_for(work_per_step: float, device: torch.device) -> Iterator[None]:
    """Run tiny CPU training steps on one thread, restoring the thread count afterwards.

    Steps of a few million multiply-adds are dominated by thread synchronisation: on a loaded 2-core
    machine one thread was 10-30x faster than two for the attention probe's steps.
    """
    if device.type != "cpu" or work_per_step >= 2e7:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
