"""Token-level probes for ``pooling="tokens"`` activations (:class:`RaggedTokens`).

:class:`TokenProbe` scores every token with one linear map and aggregates the token scores of a sequence
(``mean``, ``max``, ``last``, ``ema``, ``rolling``; the exact definitions live in
:mod:`probes.train.aggregate`). :class:`AttentionProbe` pools tokens with a learned softmax attention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from probes.collection.activations import RaggedTokens
from probes.errors import BundleError
from probes.train._logistic_fit import fit_logistic_sklearn
from probes.train._torch_fit import check_training_params, standardizer, train_early_stopped
from probes.train._validate import (
    check_groups,
    check_n_features,
    check_ragged,
    holdout_split,
)
from probes.train.aggregate import (
    StreamingAggregator,
    aggregate,
    attention_pool,
    attention_weights,
    check_aggregation,
    segment_ids,
)
from probes.train.base import ArrayLike, ClassifierProbe, register_probe
from probes.train.linear import LinearProbe, fit_logistic_many


@register_probe
class TokenProbe(ClassifierProbe, LinearProbe):
    """Per-token logistic scorer plus a sequence aggregation.

    Training, in two steps:

    1. every token gets its sequence's label and a weight ``1 / len(sequence)``, and an L2 logistic
       regression (sklearn's objective, ``C``) is fitted on all tokens -- each *sequence* counts once,
       so long sequences do not dominate and ``C`` has the same meaning as for :class:`LogisticProbe`;
    2. the token scores are aggregated per training sequence and a 1-D logistic regression
       ``a * aggregate + c`` (``calibrate=True``) maps them to sequence log-odds. Every aggregation is an
       increasing affine-equivariant function of the token scores (max, means and EMAs of ``a*s + c`` are
       ``a * (...) + c`` when ``a > 0``), so the map is folded into the token scorer: ``coef_`` and
       ``intercept_`` already give calibrated per-token scores and the aggregated score is a sequence
       log-odds without any post-processing. A monitor needs only :meth:`linear_form` and
       :meth:`streaming_aggregator`.
    """

    kind = "token"
    token_level = True
    _extra_state = ("calibration",)

    def __init__(
        self,
        aggregation: str = "mean",
        alpha: float = 0.5,
        window: int = 8,
        C: float = 1.0,
        standardize: bool = True,
        max_iter: int = 1000,
        class_weight: str | None = None,
        calibrate: bool = True,
        backend: str = "sklearn",
    ) -> None:
        self.aggregation = aggregation
        self.alpha = alpha
        self.window = window
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.calibrate = calibrate
        self.backend = backend

    def fit(self, X: RaggedTokens, y: ArrayLike, groups: Any = None) -> TokenProbe:  # type: ignore[override]
        who = "TokenProbe.fit"
        check_aggregation(self.aggregation, self.alpha, self.window)
        if not float(self.C) > 0:
            raise ValueError(f"{who}: C must be > 0; got {self.C}.")
        if self.backend not in ("sklearn", "torch"):
            raise ValueError(f"{who}: backend must be 'sklearn' or 'torch'; got {self.backend!r}.")
        X = check_ragged(X, who)
        y_np = self._fit_labels(y, len(X), who)
        check_groups(groups, len(X), who)
        offsets = X.offsets.to(torch.long).cpu()
        lengths = (offsets[1:] - offsets[:-1]).numpy()
        seg = np.repeat(np.arange(len(X)), lengths)
        tok_y = y_np[seg]
        tok_w = (1.0 / lengths)[seg]
        values = X.values if X.values.is_floating_point() else X.values.float()
        if self.backend == "torch":
            p = fit_logistic_many(
                values[None],
                tok_y,
                C=float(self.C),
                standardize=self.standardize,
                max_iter=int(self.max_iter),
                class_weight=self.class_weight,
                sample_weight=tok_w,
            )[0]
            self.coef_, self.intercept_, self.mean_, self.scale_ = p.coef_, p.intercept_, p.mean_, p.scale_
            self.n_features_in_ = p.n_features_in_
        else:
            w, b, mean, scale, _ = fit_logistic_sklearn(
                values,
                tok_y,
                float(self.C),
                self.standardize,
                True,
                int(self.max_iter),
                self.class_weight,
                sample_weight=tok_w,
            )
            self._set_linear(w, b, mean, scale)
        a, c = 1.0, 0.0
        if self.calibrate:
            from sklearn.linear_model import LogisticRegression

            with torch.inference_mode():
                agg = self.score_torch(X).double().cpu().numpy()
            lr = LogisticRegression(C=1.0).fit(agg[:, None], y_np)
            if float(lr.coef_[0, 0]) > 0:  # a non-increasing map would flip the sign convention
                a, c = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        self.coef_ = (self.coef_.double() * a).float()
        self.intercept_ = (self.intercept_.double() * a + c).float()
        self.calibration_ = torch.tensor([a, c], dtype=torch.float64)
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self

    def score_tokens(self, X: RaggedTokens) -> torch.Tensor:
        """``(T,)`` per-token log-odds on ``X.values``'s device (calibrated: see the class docstring)."""
        self._check_fitted()
        if not isinstance(X, RaggedTokens):
            raise ValueError("TokenProbe.score_tokens takes RaggedTokens (collect with pooling='tokens').")
        check_n_features(X.dim, int(self.n_features_in_), "TokenProbe")
        w, b = self._weights_on(X.values.device)
        return X.values.to(torch.float32) @ w + b

    def score_torch(self, X: RaggedTokens) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(X, RaggedTokens):
            raise ValueError(
                "TokenProbe scores token-level activations: pass RaggedTokens (collect with pooling='tokens'); "
                f"got {type(X).__name__}."
            )
        s = self.score_tokens(X)
        return aggregate(s, X.offsets, self.aggregation, float(self.alpha), int(self.window))

    def streaming_aggregator(self) -> StreamingAggregator:
        """A fresh token-by-token aggregator that reproduces :meth:`score_torch` (see ``aggregate``)."""
        return StreamingAggregator(self.aggregation, float(self.alpha), int(self.window))


_ATTN_STATE = ("query", "value_coef", "value_intercept", "mean", "scale")


@register_probe
class AttentionProbe(ClassifierProbe):
    """Attention-pooled probe: ``score = sum_t softmax_t(x_t . q) * (x_t . v + b)`` over a sequence's tokens.

    With ``window=w`` it is the MultiMax-style variant: the softmax pool is taken over every window of
    ``w`` consecutive tokens and the score is the maximum over windows (a sequence shorter than ``w`` scores
    its whole-sequence pool), so one short burst in a long text is not averaged away.

    The query ``q`` and value head ``(v, b)`` are learned with BCE on sequence labels (AdamW, mini-batches
    of sequences, early stopping on a seeded validation split -- grouped when ``fit`` gets ``groups``).
    Both start at zero, i.e. as a mean-pooled probe. :meth:`score_tokens` gives the per-token values
    ``x_t . v + b`` and :meth:`attention_weights` the softmax weights. A monitor streams the score exactly
    (online softmax, O(1) state per row; O(w) with a window) from :meth:`attention_form` and
    :meth:`streaming_aggregator`.
    """

    kind = "attention"
    token_level = True

    def __init__(
        self,
        lr: float = 3e-2,
        weight_decay: float = 1e-3,
        max_epochs: int = 100,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        patience: int = 10,
        seed: int = 0,
        device: str = "cpu",
        standardize: bool = True,
        window: int | None = None,
    ) -> None:
        self.window = window
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.seed = seed
        self.device = device
        self.standardize = standardize

    def fit(self, X: RaggedTokens, y: ArrayLike, groups: Any = None) -> AttentionProbe:  # type: ignore[override]
        who = "AttentionProbe.fit"
        check_training_params(
            who, self.lr, self.max_epochs, self.batch_size, self.val_fraction, self.patience
        )
        if self.window is not None and (int(self.window) != self.window or int(self.window) < 1):
            raise ValueError(
                f"{who}: window must be None (whole sequence) or an integer >= 1; got {self.window}."
            )
        X = check_ragged(X, who)
        y_np = self._fit_labels(y, len(X), who)
        g = check_groups(groups, len(X), who)
        tr, va = holdout_split(y_np, g, float(self.val_fraction), int(self.seed))
        dev = torch.device(self.device)
        offsets = X.offsets.to(torch.long).to(dev)
        values = X.values.to(dev, torch.float32)
        lengths = offsets[1:] - offsets[:-1]
        seg = segment_ids(offsets)
        d = X.dim
        in_train = torch.zeros(len(X), dtype=torch.bool, device=dev)
        in_train[torch.as_tensor(tr, device=dev)] = True
        mean, std = standardizer(values[in_train[seg]] if self.standardize else None, d, dev)
        Z = (values - mean.float()) / std.float()
        y_t = torch.as_tensor(y_np, dtype=torch.float32, device=dev)

        def gather(seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Token rows and offsets of the given sequences (flat, in the given order)."""
            lens = lengths[seqs]
            new_off = torch.zeros(len(seqs) + 1, dtype=torch.long, device=dev)
            new_off[1:] = lens.cumsum(0)
            tok = torch.arange(int(new_off[-1]), device=dev) + torch.repeat_interleave(
                offsets[seqs] - new_off[:-1], lens
            )
            return tok, new_off

        params = {
            "query": torch.zeros(d, device=dev, requires_grad=True),
            "value_coef": torch.zeros(d, device=dev, requires_grad=True),
            "value_intercept": torch.zeros(1, device=dev, requires_grad=True),
        }

        def forward(tok: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
            z = Z[tok]
            return attention_pool(
                z @ params["value_coef"] + params["value_intercept"], z @ params["query"], off, self.window
            )

        tr_t = torch.as_tensor(tr, dtype=torch.long, device=dev)
        va_t = torch.as_tensor(va, dtype=torch.long, device=dev)
        va_tok, va_off = gather(va_t)
        y_va = y_t[va_t]

        def train_batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            batch = tr_t[idx]
            return forward(*gather(batch)), y_t[batch]

        result = train_early_stopped(
            params,
            train_batch,
            (lambda: (forward(va_tok, va_off), y_va)) if len(va) else None,
            n_train=len(tr),
            lr=self.lr,
            weight_decay=self.weight_decay,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            patience=self.patience,
            seed=self.seed,
            device=dev,
            work_per_step=float(self.batch_size) * float(lengths.float().mean()) * d * 4,
        )
        best = result.params
        # Fold the standardiser in: softmax ignores the constant -mean.q shift of the logits.
        q_raw = best["query"].double() / std
        v_raw = best["value_coef"].double() / std
        self.query_ = q_raw.float().cpu()
        self.value_coef_ = v_raw.float().cpu()
        self.value_intercept_ = (best["value_intercept"].double() - mean @ v_raw).reshape(1).float().cpu()
        self.mean_, self.scale_ = mean.float().cpu(), std.float().cpu()
        self.n_epochs_ = result.n_epochs
        self.val_loss_ = result.val_loss
        self.n_features_in_ = d
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self

    def attention_form(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q, v, b)``: attention logit ``x @ q`` and per-token value ``x @ v + b`` in raw activation space."""
        self._check_fitted()
        return self.query_.clone(), self.value_coef_.clone(), self.value_intercept_.reshape(()).clone()

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache: dict[str, tuple[torch.Tensor, ...]] = self.__dict__.setdefault("_device_cache", {})
        key = str(device)
        if key not in cache:
            cache[key] = (
                self.query_.to(device),
                self.value_coef_.to(device),
                self.value_intercept_.reshape(()).to(device),
            )
        q, v, b = cache[key]
        return q, v, b

    def _check_input(self, X: Any) -> RaggedTokens:
        self._check_fitted()
        if not isinstance(X, RaggedTokens):
            raise ValueError(
                "AttentionProbe scores token-level activations: pass RaggedTokens (collect with pooling='tokens'); "
                f"got {type(X).__name__}."
            )
        check_n_features(X.dim, int(self.n_features_in_), "AttentionProbe")
        return X

    def score_tokens(self, X: RaggedTokens) -> torch.Tensor:
        """``(T,)`` per-token value scores ``x_t . v + b`` (log-odds units)."""
        X = self._check_input(X)
        _, v, b = self._weights_on(X.values.device)
        return X.values.to(torch.float32) @ v + b

    def attention_logits(self, X: RaggedTokens) -> torch.Tensor:
        X = self._check_input(X)
        q, _, _ = self._weights_on(X.values.device)
        return X.values.to(torch.float32) @ q

    def attention_weights(self, X: RaggedTokens) -> torch.Tensor:
        """``(T,)`` softmax attention weights; each sequence's weights sum to 1."""
        return attention_weights(self.attention_logits(X), X.offsets)

    def score_torch(self, X: RaggedTokens) -> torch.Tensor:  # type: ignore[override]
        X = self._check_input(X)
        q, v, b = self._weights_on(X.values.device)
        x = X.values.to(torch.float32)
        return attention_pool(x @ v + b, x @ q, X.offsets, self.window)

    def streaming_aggregator(self) -> StreamingAggregator:
        """A fresh token-by-token aggregator that reproduces :meth:`score_torch` from the two per-token
        columns of :meth:`attention_form` (value, then attention logit)."""
        return StreamingAggregator("attention", window=None if self.window is None else int(self.window))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {k: getattr(self, f"{k}_").detach().cpu().contiguous() for k in _ATTN_STATE}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> AttentionProbe:
        missing = [k for k in _ATTN_STATE if k not in tensors]
        if missing:
            raise BundleError(f"AttentionProbe state is missing tensors {missing}; the file is incomplete.")
        d = int(tensors["query"].numel())
        if any(tensors[k].shape != (d,) for k in ("query", "value_coef", "mean", "scale")):
            raise BundleError("AttentionProbe state has inconsistent shapes.")
        for k in _ATTN_STATE:
            setattr(self, f"{k}_", tensors[k].to(torch.float32))
        self.value_intercept_ = self.value_intercept_.reshape(1)
        self.n_features_in_ = d
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self
