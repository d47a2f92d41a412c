"""What a monitor reports: a row firing, the scores of the newest position, one streamed token."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FireEvent:
    """What a callable ``action`` receives when a row fires (once per row and generation)."""

    row: int
    position: int
    probe: str
    smoothed: float
    threshold: float


@dataclass(frozen=True)
class StepScores:
    """Scores of the newest position of every row: tensors on the model's device, probes in
    ``Monitor.probe_names`` order."""

    score: torch.Tensor  # (batch, probes) raw per-token decision scores (an attention probe: its value)
    smoothed: torch.Tensor  # (batch, probes) what is compared with the threshold
    firing: torch.Tensor  # (batch, probes) bool: smoothed above threshold for ``patience`` tokens
    fired: torch.Tensor  # (batch,) bool: the row has fired at some point of this generation
    position: int  # column index of the position in the sequence
    running: torch.Tensor | None = None  # (batch, probes): each probe's sequence score of the prefix so far


@dataclass(frozen=True)
class StreamEvent:
    """One generated token from :meth:`Monitor.stream`."""

    token_id: int
    text: str
    score: dict[str, float]
    smoothed: dict[str, float]
    fired: bool  # this token made the row fire (the stream ends after it when action="stop")
