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
    """Activations of one dataset at one or more sites, for one or more poolings.

    ``acts["layers.6"]`` is an ``(n, d)`` float tensor for ``pooling="last"``/``"mean"`` or a
    :class:`RaggedTokens` for ``pooling="tokens"``. Rows are in dataset order. When several poolings were
    collected in one pass, ``acts[site]`` is the first (primary) one, ``acts[site, "mean"]`` any one, and
    ``acts.pooled("mean")`` a single-pooling view; ``acts.poolings`` lists them. Collected with a cache, the
    tensors are memory-mapped from it (ordinary tensors whose pages load on first touch).
    """

    features: dict[str, Features]
    labels: np.ndarray  # (n,) int64, 1 = positive class
    ids: list[str]
    groups: list[str | None]
    spec: dict[str, Any] = field(default_factory=dict)  # model fingerprint, pooling, max_length, dtype, ...
    by_pooling: dict[str, dict[str, Features]] = field(default_factory=dict)  # every pooling collected
    #: numeric targets of regression probes, name -> ``(n,)`` float64 (the dataset's ``target_value``)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_pooling:
            self.by_pooling = {self.pooling: self.features}

    def __getitem__(self, site: str | int | tuple[str | int, str]) -> Features:
        if isinstance(site, tuple):
            site, pooling = site
            return self.pooled(pooling)[site]
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
        """The primary pooling (the first one asked for)."""
        value = self.spec.get("pooling", "last")
        return str(value[0] if isinstance(value, list) else value)

    @property
    def poolings(self) -> list[str]:
        return list(self.by_pooling)

    def pooled(self, pooling: str) -> Activations:
        """The activations of one of the collected poolings (shares the tensors, copies nothing)."""
        if pooling not in self.by_pooling:
            raise KeyError(f"pooling {pooling!r} was not collected; collected: {', '.join(self.by_pooling)}")
        return Activations(
            features=self.by_pooling[pooling],
            labels=self.labels,
            ids=self.ids,
            groups=self.groups,
            spec={**self.spec, "pooling": pooling},
            values=self.values,
        )

    def subset(self, index: np.ndarray | list[int]) -> Activations:
        idx = np.asarray(index, dtype=np.int64)

        def take(features: dict[str, Features]) -> dict[str, Features]:
            return {
                k: v.subset(idx) if isinstance(v, RaggedTokens) else v[torch.as_tensor(idx)]
                for k, v in features.items()
            }

        by_pooling = {p: take(f) for p, f in self.by_pooling.items()}
        return Activations(
            features=by_pooling[self.pooling] if self.pooling in by_pooling else take(self.features),
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            spec=dict(self.spec),
            by_pooling=by_pooling,
            values={k: v[idx] for k, v in self.values.items()},
        )
