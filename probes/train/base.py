"""The probe contract shared by every probe type.

Sign convention (the one place it is written down): the positive class (label 1) is the state the probe
detects; a higher ``decision_function`` means more of it; ``predict_proba`` returns probabilities of
``[negative, positive]`` like scikit-learn.

Estimators follow scikit-learn's contract: ``__init__`` stores hyperparameters only, ``fit(X, y)``
validates and returns ``self``, learned state ends in ``_``, and use before ``fit`` raises
:class:`probes.errors.NotFittedError`. Scoring is done in torch on the device of the input, so a monitor
never moves activations off the model's device.

Persistence never uses pickle: a probe is ``get_params()`` (JSON) plus ``state_tensors()``
(safetensors), rebuilt with :func:`probe_from_state`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from probes.collection.activations import RaggedTokens
from probes.errors import NotFittedError

P = TypeVar("P", bound="Probe")
ArrayLike = np.ndarray | torch.Tensor

PROBE_TYPES: dict[str, type[Probe]] = {}


def register_probe(cls: type[P]) -> type[P]:
    """Class decorator: make a probe type loadable by its ``kind`` name."""
    PROBE_TYPES[cls.kind] = cls
    return cls


class Probe(ABC):
    """Base class of all probes."""

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
        with torch.inference_mode():
            scores = self.score_torch(X if isinstance(X, RaggedTokens) else as_float_tensor(X))
        return scores.detach().float().cpu().numpy()

    def predict_proba(self, X: ArrayLike | RaggedTokens) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X).astype(np.float64)))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: ArrayLike | RaggedTokens) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)

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

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet. Call fit(X, y) before using it."
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def as_float_tensor(X: ArrayLike) -> torch.Tensor:
    """A float tensor view of ``X`` (numpy or torch); keeps torch tensors on their device and dtype."""
    if isinstance(X, torch.Tensor):
        return X if X.is_floating_point() else X.float()
    return torch.as_tensor(np.asarray(X, dtype=np.float32))


def probe_from_state(kind: str, params: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Probe:
    """Rebuild a fitted probe from its kind, hyperparameters and learned tensors."""
    import probes.train  # noqa: F401  (registers the built-in probe types)

    if kind not in PROBE_TYPES:
        raise KeyError(f"Unknown probe kind {kind!r}; known: {', '.join(sorted(PROBE_TYPES))}")
    return PROBE_TYPES[kind](**params).load_state_tensors(tensors)
