"""The torch training loop shared by the gradient-trained probes (:class:`MLPProbe`, :class:`AttentionProbe`).

Both train with BCE and AdamW on seeded mini-batches and keep the parameters of the epoch with the lowest
loss on a held-out validation split; only the forward pass differs, so each probe passes its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from probes.train._validate import threads_for

# (logits, targets) of one batch; the argument is a batch of positions 0..n_train-1 on the device.
BatchFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_training_params(
    who: str, lr: float, max_epochs: int, batch_size: int, val_fraction: float, patience: int
) -> None:
    if not float(lr) > 0:
        raise ValueError(f"{who}: lr must be > 0; got {lr}.")
    if int(max_epochs) < 1 or int(batch_size) < 1 or int(patience) < 1:
        raise ValueError(
            f"{who}: max_epochs, batch_size and patience must be >= 1; got {max_epochs}, {batch_size}, {patience}."
        )
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"{who}: val_fraction must be in [0, 1); got {val_fraction}.")


def standardizer(
    rows: torch.Tensor | None, d: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(mean, std)`` of the training rows, or the identity ``(0, 1)`` when ``rows`` is None.

    Constant features keep a scale of 1 so that folding the standardiser into the weights never divides by 0.
    """
    if rows is None:
        return (
            torch.zeros(d, dtype=torch.float64, device=device),
            torch.ones(d, dtype=torch.float64, device=device),
        )
    rows = rows.double()
    mean = rows.mean(0)
    std = rows.std(0, correction=0)
    return mean, torch.where(std > 1e-12 * (1.0 + mean.abs()), std, torch.ones_like(std))


class EarlyStopping:
    """Keeps the parameters of the epoch with the lowest validation loss; says when to stop."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.best_epoch, self.bad, self.state = patience, float("inf"), -1, 0, None

    def step(self, epoch: int, val_loss: float, params: dict[str, torch.Tensor]) -> bool:
        """Record one epoch; return True when training should stop."""
        if self.state is None or val_loss < self.best - 1e-6 * max(1.0, abs(self.best)):
            self.best, self.best_epoch, self.bad = val_loss, epoch, 0
            self.state = {k: v.detach().clone() for k, v in params.items()}
            return False
        self.bad += 1
        return self.bad >= self.patience


@dataclass(frozen=True)
class TrainResult:
    params: dict[str, torch.Tensor]  # the best epoch's parameters (the last epoch's without validation)
    n_epochs: int  # epochs run
    best_epoch: int  # 1-based epoch whose parameters were kept
    val_loss: float  # validation loss of that epoch; nan without validation


def train_early_stopped(
    params: dict[str, torch.Tensor],
    train_batch: BatchFn,
    validation: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None,
    *,
    n_train: int,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    device: torch.device,
    work_per_step: float,
    module: torch.nn.Module | None = None,
) -> TrainResult:
    """Minimise BCE over ``params`` with AdamW on seeded mini-batches, early-stopped on ``validation``.

    ``train_batch`` maps a batch of training positions to ``(logits, targets)``; ``validation`` (None: no
    validation split) gives the validation ``(logits, targets)``. ``module``, when given, is switched to
    train mode for the updates and to eval mode for validation.
    """
    opt = torch.optim.AdamW(params.values(), lr=float(lr), weight_decay=float(weight_decay))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(int(seed))
    stopper = EarlyStopping(int(patience))
    epoch = 0
    with threads_for(work_per_step, device):
        for epoch in range(int(max_epochs)):
            if module is not None:
                module.train()
            for idx in torch.randperm(n_train, generator=gen).split(int(batch_size)):
                opt.zero_grad(set_to_none=True)
                loss_fn(*train_batch(idx.to(device))).backward()
                opt.step()
            if validation is not None:
                if module is not None:
                    module.eval()
                with torch.no_grad():
                    val_loss = float(loss_fn(*validation()))
                if stopper.step(epoch, val_loss, params):
                    break
    if stopper.state is None:
        return TrainResult({k: v.detach() for k, v in params.items()}, epoch + 1, epoch + 1, float("nan"))
    return TrainResult(dict(stopper.state), epoch + 1, stopper.best_epoch + 1, stopper.best)
