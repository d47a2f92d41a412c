"""Typed results of activation collection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RaggedTokens:
    """Token-level activations of ``n`` sequences of different lengths, stored flat.

    ``values[offsets[i]:offsets[i + 1]]`` are the ``(len_i, d)`` activations of sequence ``i``.
    """

    values: torch.Tensor  # (total_tokens, d)
    offsets: torch.Tensor  # (n + 1,) int64, offsets[0] == 0, offsets[-1] == total_tokens

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != len(self.values):
            raise ValueError("RaggedTokens: offsets must start at 0 and end at len(values).")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.values[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def dim(self) -> int:
        return int(self.values.shape[-1])

    def subset(self, index: np.ndarray | list[int] | torch.Tensor) -> RaggedTokens:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        pieces = [self[int(i)] for i in idx]
        lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
        offsets = torch.zeros(len(pieces) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.cat(pieces) if pieces else self.values[:0]
        return RaggedTokens(values, offsets)

    def padded(self, pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, max_len, d)`` right-padded values and the ``(n, max_len)`` bool mask of real tokens."""
        lengths = self.lengths
        n, max_len = len(self), int(lengths.max()) if len(self) else 0
        out = self.values.new_full((n, max_len, self.dim), pad_value)
        lengths = lengths.to(self.values.device)
        mask = torch.arange(max_len, device=self.values.device)[None, :] < lengths[:, None]
        out[mask] = self.values
        return out, mask

    def to(self, *args: Any, **kwargs: Any) -> RaggedTokens:
        return RaggedTokens(self.values.to(*args, **kwargs), self.offsets.to(self.values.device))


Features = torch.Tensor | RaggedTokens


@dataclass
class Activations:
    """Activations of one dataset at one or more sites.

    ``acts["layers.6"]`` is an ``(n, d)`` float tensor for ``pooling="last"``/``"mean"`` or a
    :class:`RaggedTokens` for ``pooling="tokens"``. Rows are in dataset order.
    """

    features: dict[str, Features]
    labels: np.ndarray  # (n,) int64, 1 = positive class
    ids: list[str]
    groups: list[str | None]
    spec: dict[str, Any] = field(default_factory=dict)  # model fingerprint, pooling, max_length, dtype, ...
    #: numeric targets of regression probes, name -> ``(n,)`` float64 (the dataset's ``target_value``)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, site: str | int) -> Features:
        key = f"layers.{site}" if isinstance(site, int) else site
        if key not in self.features:
            raise KeyError(f"No activations for site {site!r}; collected: {', '.join(self.features)}")
        return self.features[key]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def layers(self) -> list[str]:
        return list(self.features)

    def target_values(self, name: str | None = None) -> tuple[str, np.ndarray]:
        """``(name, values)`` of the numeric target ``name`` (default: the only one)."""
        if not self.values:
            raise KeyError("These activations carry no target values; collect a dataset with target_value.")
        if name is None:
            if len(self.values) > 1:
                raise KeyError(f"Several target values ({', '.join(self.values)}); pick one by name.")
            name = next(iter(self.values))
        if name not in self.values:
            raise KeyError(f"No target value {name!r}; have: {', '.join(self.values)}.")
        return name, self.values[name]

    @property
    def pooling(self) -> str:
        return str(self.spec.get("pooling", "last"))

    def subset(self, index: np.ndarray | list[int]) -> Activations:
        idx = np.asarray(index, dtype=np.int64)
        feats: dict[str, Features] = {}
        for key, value in self.features.items():
            feats[key] = value.subset(idx) if isinstance(value, RaggedTokens) else value[torch.as_tensor(idx)]
        return Activations(
            features=feats,
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            spec=dict(self.spec),
            values={k: v[idx] for k, v in self.values.items()},
        )
