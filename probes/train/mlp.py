"""A one-hidden-layer MLP probe (torch), early-stopped on a held-out validation split."""

from __future__ import annotations

from typing import Any

import torch

from probes.errors import BundleError
from probes.train._torch_fit import check_training_params, standardizer, train_early_stopped
from probes.train._validate import (
    check_groups,
    check_matrix,
    check_n_features,
    holdout_split,
)
from probes.train.base import ArrayLike, ClassifierProbe, register_probe

_STATE = ("hidden_weight", "hidden_bias", "out_weight", "out_bias", "mean", "scale")


@register_probe
class MLPProbe(ClassifierProbe):
    """``Linear(d, hidden) -> ReLU -> Linear(hidden, 1)`` on standardised inputs, trained with BCE.

    AdamW on mini-batches; a seeded validation split (grouped when ``fit`` gets ``groups``) picks the
    epoch with the lowest validation loss and stops after ``patience`` epochs without improvement.
    Seeded: the same data and ``seed`` give the same probe on the same device.
    """

    kind = "mlp"

    def __init__(
        self,
        hidden: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        max_epochs: int = 200,
        batch_size: int = 256,
        val_fraction: float = 0.2,
        patience: int = 10,
        seed: int = 0,
        device: str = "cpu",
        standardize: bool = True,
    ) -> None:
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.seed = seed
        self.device = device
        self.standardize = standardize

    def fit(self, X: ArrayLike, y: ArrayLike, groups: Any = None) -> MLPProbe:
        who = "MLPProbe.fit"
        if int(self.hidden) < 1:
            raise ValueError(f"{who}: hidden must be >= 1; got {self.hidden}.")
        check_training_params(
            who, self.lr, self.max_epochs, self.batch_size, self.val_fraction, self.patience
        )
        Xt = check_matrix(X, who)
        y_np = self._fit_labels(y, Xt.shape[0], who)
        g = check_groups(groups, Xt.shape[0], who)
        tr, va = holdout_split(y_np, g, float(self.val_fraction), int(self.seed))
        dev = torch.device(self.device)
        X_all = Xt.to(dev, torch.float32)
        Xtr = X_all[torch.as_tensor(tr, device=dev)]
        mean, std = standardizer(Xtr if self.standardize else None, Xt.shape[1], dev)
        m32, s32 = mean.float(), std.float()
        Xtr = (Xtr - m32) / s32
        Xva = (X_all[torch.as_tensor(va, device=dev)] - m32) / s32
        ytr = torch.as_tensor(y_np[tr], dtype=torch.float32, device=dev)
        yva = torch.as_tensor(y_np[va], dtype=torch.float32, device=dev)

        # Initialise on the CPU under a private RNG: the user's global RNG state is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            net = torch.nn.Sequential(
                torch.nn.Linear(Xt.shape[1], int(self.hidden)),
                torch.nn.ReLU(),
                torch.nn.Linear(int(self.hidden), 1),
            )
        net = net.to(dev)
        result = train_early_stopped(
            dict(net.named_parameters()),
            lambda idx: (net(Xtr[idx]).squeeze(-1), ytr[idx]),
            (lambda: (net(Xva).squeeze(-1), yva)) if len(va) else None,
            n_train=len(tr),
            lr=self.lr,
            weight_decay=self.weight_decay,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            patience=self.patience,
            seed=self.seed,
            device=dev,
            work_per_step=float(int(self.batch_size)) * Xt.shape[1] * int(self.hidden),
            module=net,
        )
        params = result.params
        # Fold the standardiser into the first layer so scoring reads raw activations.
        W1 = params["0.weight"].double() / std[None, :]
        b1 = params["0.bias"].double() - W1 @ mean
        self.hidden_weight_ = W1.float().cpu()
        self.hidden_bias_ = b1.float().cpu()
        self.out_weight_ = params["2.weight"].reshape(-1).float().cpu()
        self.out_bias_ = params["2.bias"].reshape(1).float().cpu()
        self.mean_, self.scale_ = mean.float().cpu(), std.float().cpu()
        self.n_epochs_ = result.n_epochs
        self.best_epoch_ = result.best_epoch
        self.val_loss_ = result.val_loss
        self.n_features_in_ = int(Xt.shape[1])
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        cache: dict[str, tuple[torch.Tensor, ...]] = self.__dict__.setdefault("_device_cache", {})
        key = str(device)
        if key not in cache:
            cache[key] = tuple(
                t.to(device)
                for t in (self.hidden_weight_, self.hidden_bias_, self.out_weight_, self.out_bias_)
            )
        return cache[key]

    def score_torch(self, X: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        self._check_fitted()
        if not isinstance(X, torch.Tensor) or X.ndim != 2:
            raise ValueError("MLPProbe.score_torch takes a 2-D torch tensor (n, d).")
        check_n_features(int(X.shape[1]), int(self.n_features_in_), "MLPProbe")
        W1, b1, w2, b2 = self._weights_on(X.device)
        h = torch.relu(torch.addmm(b1, X.to(torch.float32), W1.T))
        return h @ w2 + b2

    def flops_per_row(self) -> int:
        self._check_fitted()
        hidden = int(self.hidden_weight_.shape[0])
        return 2 * int(self.n_features_in_) * hidden + 3 * hidden

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {k: getattr(self, f"{k}_").detach().cpu().contiguous() for k in _STATE}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> MLPProbe:
        missing = [k for k in _STATE if k not in tensors]
        if missing:
            raise BundleError(f"MLPProbe state is missing tensors {missing}; the file is incomplete.")
        W1 = tensors["hidden_weight"]
        if (
            W1.ndim != 2
            or tensors["out_weight"].shape != (W1.shape[0],)
            or tensors["hidden_bias"].shape != (W1.shape[0],)
        ):
            raise BundleError("MLPProbe state has inconsistent layer shapes.")
        for k in _STATE:
            setattr(self, f"{k}_", tensors[k].to(torch.float32))
        self.n_features_in_ = int(W1.shape[1])
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self
