"""The probe contract shared by every probe type.

Sign convention (the one place it is written down): the positive class (label 1) is the state the probe
detects; a higher ``decision_function`` means more of it; ``predict_proba`` returns probabilities of
``[negative, positive]`` like scikit-learn.

Estimators follow scikit-learn's contract for real: every probe is a ``sklearn.base.BaseEstimator`` (and a
``ClassifierMixin`` when it is supervised), so ``clone``, ``Pipeline``, ``GridSearchCV`` and
``cross_val_score`` work and ``sklearn.utils.estimator_checks.check_estimator`` passes (skipped checks are
listed with their reasons in ``tests/test_sklearn_contract.py``). ``__init__`` stores hyperparameters only,
``fit(X, y)`` validates and returns ``self``, learned state ends in ``_``, ``classes_`` holds the two labels
(``classes_[1]`` is the positive class), and use before ``fit`` raises :class:`probes.errors.NotFittedError`
(also scikit-learn's). Scoring is done in torch on the device of the input, so a monitor never moves
activations off the model's device.

Persistence never uses pickle: a probe is ``get_params()`` (JSON) plus ``state_tensors()``
(safetensors), rebuilt with :func:`probe_from_state`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from probes.collection.activations import RaggedTokens
from probes.errors import NotFittedError

P = TypeVar("P", bound="Probe")
ArrayLike = np.ndarray | torch.Tensor

#: The one probe registry: kind name -> (class, preset hyperparameters). Run configs (``probe.kind``,
#: :func:`probes.train.make_probe`) and files (:func:`probe_from_state`) both read it; ``lda`` is
#: ``DiffMeansProbe`` with the preset ``lda=True``. :func:`register_probe` adds to it.
PROBE_REGISTRY: dict[str, tuple[type[Probe], dict[str, Any]]] = {}


class ProbeNotFittedError(NotFittedError, SklearnNotFittedError):
    """What an unfitted probe raises: both :class:`probes.errors.NotFittedError` and scikit-learn's."""


def register_probe(cls: type[P] | None = None, *, kind: str | None = None, **preset: Any) -> Any:
    """Make a probe type known by name: ``@register_probe`` (its ``kind``), or
    ``register_probe(DiffMeansProbe, kind="lda", lda=True)`` for a preset of an existing type."""

    def add(c: type[P]) -> type[P]:
        PROBE_REGISTRY[kind or c.kind] = (c, dict(preset))
        return c

    return add(cls) if cls is not None else add


class _ProbeTypes(Mapping[str, "type[Probe]"]):
    """``PROBE_TYPES``: the registry's kind -> class view (kept for code that read the old name)."""

    def __getitem__(self, kind: str) -> type[Probe]:
        return PROBE_REGISTRY[kind][0]

    def __iter__(self) -> Iterator[str]:
        return iter(PROBE_REGISTRY)

    def __len__(self) -> int:
        return len(PROBE_REGISTRY)


PROBE_TYPES: Mapping[str, type[Probe]] = _ProbeTypes()


class Probe(BaseEstimator, ABC):
    """Base class of all probes (supervised ones add :class:`ClassifierProbe`'s labels)."""

    kind: ClassVar[str] = "probe"
    #: True for probes that read ``pooling="tokens"`` activations (:class:`RaggedTokens`).
    token_level: ClassVar[bool] = False

    # --- the scikit-learn surface -------------------------------------------------------------
    @abstractmethod
    def fit(self: P, X: ArrayLike | RaggedTokens, y: ArrayLike, groups: Any = None) -> P: ...

    @abstractmethod
    def score_torch(self, X: torch.Tensor | RaggedTokens) -> torch.Tensor:
        """Decision scores ``(n,)`` computed in torch on ``X``'s device (no host sync)."""

    def decision_function(self, X: ArrayLike | RaggedTokens) -> np.ndarray:
        self._check_fitted()
        if not (self.token_level or getattr(self, "multi_site", False) or isinstance(X, torch.Tensor)):
            # numpy, lists, DataFrames: scikit-learn's checks (2-D, finite, numeric, dense). Tensors skip them:
            # a monitor scores on the model's device and must not wait for a finiteness check.
            from probes.train._validate import check_rows

            X = check_rows(X, f"{type(self).__name__}.decision_function")
        with torch.inference_mode():
            scores = self.score_torch(X if isinstance(X, RaggedTokens) else as_float_tensor(X))
        return scores.detach().float().cpu().numpy()

    def predict_proba(self, X: ArrayLike | RaggedTokens) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X).astype(np.float64)))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: ArrayLike | RaggedTokens) -> np.ndarray:
        """``classes_[1]`` (the detected state) where ``decision_function > 0``, else ``classes_[0]``."""
        positive = (self.decision_function(X) > 0).astype(np.int64)
        classes = getattr(self, "classes_", None)
        return positive if classes is None else np.asarray(classes)[positive]

    # --- persistence (safetensors + JSON) -----------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyperparameters: every ``__init__`` argument, read back from the attribute of the same name.

        As in scikit-learn, ``__init__`` stores each argument unchanged under its own name, so the signature
        is the one list of hyperparameters (no hand-kept copy to drift). ``deep`` is accepted for
        scikit-learn's ``clone`` / ``GridSearchCV``; probes hold no sub-estimators, so it changes nothing.
        """
        names = [
            name
            for name, param in inspect.signature(type(self).__init__).parameters.items()
            if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ]
        return {name: getattr(self, name) for name in names}

    def set_params(self: P, **params: Any) -> P:
        """Set hyperparameters by name (scikit-learn's ``set_params``); an unknown name is an error."""
        valid = self.get_params()
        unknown = [k for k in params if k not in valid]
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no parameter {', '.join(map(repr, unknown))}; "
                f"valid parameters: {', '.join(valid)}."
            )
        for key, value in params.items():
            setattr(self, key, value)
        return self

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned state as named tensors (saved with safetensors)."""

    @abstractmethod
    def load_state_tensors(self: P, tensors: dict[str, torch.Tensor]) -> P:
        """Restore learned state from :meth:`state_tensors` output; returns ``self``."""

    # --- fast paths for monitors --------------------------------------------------------------
    def linear_form(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(w, b)`` such that the (per-token) score is ``x @ w + b`` in raw activation space.

        Linear probes return it so a monitor can fuse every probe of a layer into one matmul; nonlinear
        probes return ``None`` and are scored with :meth:`score_torch`.
        """
        return None

    def flops_per_row(self) -> int | None:
        """Floating-point operations to score one row (one token, for a monitor), or ``None`` if unknown.

        The probe's own cost: the activations come with the monitored model's forward pass. Cascades
        report it as stage 1's compute per decision.
        """
        return None

    # --- helpers ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "n_features_in_", None) is not None

    def check_saveable(self) -> None:
        """Refuse to save a probe fitted on labels other than 0/1: files store 0/1 labels (1 = detected)."""
        self._check_fitted()
        classes = getattr(self, "classes_", None)
        if classes is not None and np.asarray(classes).tolist() != [0, 1]:
            raise ValueError(
                f"This {type(self).__name__} was fitted on labels {np.asarray(classes).tolist()}; probe files "
                "and bundles store 0/1 labels only (1 = the state detected). Refit on y == positive_label "
                "as 0/1 before saving."
            )

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted

    def _fit_labels(self, y: Any, n: int, who: str) -> np.ndarray:
        """Validate ``y`` (binary), store ``classes_`` and return the labels encoded 0/1."""
        from probes.train._validate import encode_labels

        y01, self.classes_ = encode_labels(y, n, who)
        return y01

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ProbeNotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call fit(X, y) before using it."
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


class ClassifierProbe(ClassifierMixin, Probe):
    """A supervised (binary) probe: scikit-learn's classifier tags, ``score`` (accuracy) and ``classes_``.

    ``classes_`` defaults to ``[0, 1]`` for probes rebuilt from a file (bundles store 0/1 labels).
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # binary: one direction, one sign convention
        return tags


def as_float_tensor(X: ArrayLike) -> torch.Tensor:
    """A float tensor view of ``X`` (numpy or torch); keeps torch tensors on their device and dtype."""
    if isinstance(X, torch.Tensor):
        return X if X.is_floating_point() else X.float()
    return torch.as_tensor(np.asarray(X, dtype=np.float32))


def probe_from_state(kind: str, params: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Probe:
    """Rebuild a fitted probe from its kind, hyperparameters and learned tensors."""
    # The built-in kinds are registered: importing this module ran probes/train/__init__.py first.
    if kind not in PROBE_REGISTRY:
        raise KeyError(f"Unknown probe kind {kind!r}; known: {', '.join(sorted(PROBE_REGISTRY))}")
    cls, preset = PROBE_REGISTRY[kind]
    probe = cls(**{**preset, **params}).load_state_tensors(tensors)
    if isinstance(probe, ClassifierProbe) and not hasattr(probe, "classes_"):
        probe.classes_ = np.array([0, 1], dtype=np.int64)  # files store probes trained on 0/1 labels
    return probe
