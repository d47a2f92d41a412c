"""Pooling: a batch's hidden states become one vector per row (or its target tokens), in dataset order.

:class:`Pooler` runs inside the forward hooks, on the model's device, over the detection-target mask;
:class:`Outputs` places each batch's pooled rows at their dataset positions in preallocated tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from probes.collection.activations import Features, RaggedTokens
from probes.data.types import Encoded
from probes.errors import DatasetError, SiteError

Pooling = Literal["last", "mean", "tokens"]
POOLINGS: tuple[str, ...] = ("last", "mean", "tokens")

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def storage_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype features are stored in (``None`` = float32); any dtype but these three is refused."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _STORAGE_DTYPES.values():
            raise ValueError(
                f"dtype={dtype} is not a supported storage dtype; use float32, bfloat16 or float16."
            )
        return dtype
    if dtype not in _STORAGE_DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not a supported storage dtype; use 'float32', 'bfloat16' or 'float16'."
        )
    return _STORAGE_DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def validate_rows(encoded: Sequence[Encoded], pooling: str, ids: Sequence[str] | None) -> np.ndarray:
    """Each row's number of target tokens, raising a named error for a row that pooling cannot read."""
    counts = np.zeros(len(encoded), dtype=np.int64)
    for i, row in enumerate(encoded):
        name = repr(ids[i]) if ids is not None else f"#{i}"
        if len(row.input_ids) == 0:
            raise DatasetError(f"row {name}: encodes to zero tokens; remove the row or give it text.")
        if len(row.target_mask) != len(row.input_ids):
            raise DatasetError(f"row {name}: target_mask and input_ids differ in length; re-encode the row.")
        counts[i] = int(sum(row.target_mask))
        if counts[i] == 0 and pooling != "tokens":
            raise DatasetError(
                f"row {name}: its detection target has no tokens, so pooling={pooling!r} has nothing to read; "
                "raise max_length or fix the row's target."
            )
    return counts


class Pooler:
    """Pools one batch's hidden states over the target mask, on the hidden states' device."""

    def __init__(self, pooling: str, out_dtype: torch.dtype) -> None:
        self.pooling = pooling
        self.out_dtype = out_dtype
        self.mask: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        self.row_of_token: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def set_batch(self, mask: torch.Tensor) -> None:
        self.mask = mask
        b, s = mask.shape
        positions = torch.arange(s, device=mask.device).expand(b, s)
        # Index of the last target token of each row (rows always have one for last/mean pooling).
        self.last = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
        self.counts = mask.sum(dim=1)
        self.row_of_token = torch.arange(b, device=mask.device).repeat_interleave(self.counts)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or hidden.shape[:2] != mask.shape:
            raise SiteError(
                f"A hooked site produced a tensor of shape {tuple(hidden.shape)}, not (batch, seq, d) = "
                f"{tuple(mask.shape) if mask is not None else '?'} + (d,); the site resolver picked the wrong "
                "module for this architecture: pass layers_attr='dotted.path.to.blocks'."
            )
        if self.pooling == "last":
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), self.last]
        else:
            tokens = hidden[mask]  # (t, d), row-major: row by row, positions ascending
            if self.pooling == "tokens":
                pooled = tokens
            else:
                # Sum in float32 whatever the model dtype, then divide: a bf16 running sum would lose bits.
                sums = torch.zeros(
                    hidden.shape[0], hidden.shape[-1], dtype=torch.float32, device=hidden.device
                )
                sums.index_add_(0, self.row_of_token, tokens.float())
                pooled = sums / self.counts.unsqueeze(1)
        return pooled.to(device="cpu", dtype=self.out_dtype)


class Outputs:
    """Preallocated result tensors (allocated at the first batch, when the width ``d`` is known)."""

    def __init__(self, sites: list[str], pooling: str, counts: np.ndarray, dtype: torch.dtype) -> None:
        self.sites = sites
        self.pooling = pooling
        self.dtype = dtype
        self.n = len(counts)
        self.offsets = torch.zeros(self.n + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(torch.as_tensor(counts, dtype=torch.int64), 0)
        self.values: dict[str, torch.Tensor] = {}

    @property
    def dims(self) -> dict[str, int]:
        return {s: int(v.shape[-1]) for s, v in self.values.items()}

    def _alloc(self, site: str, d: int) -> torch.Tensor:
        if site not in self.values:
            rows = int(self.offsets[-1]) if self.pooling == "tokens" else self.n
            # Allocated as a normal tensor even inside inference_mode: an inference tensor could not be
            # used by autograd later (e.g. as the input of a torch-trained probe).
            with torch.inference_mode(False):
                self.values[site] = torch.zeros(rows, d, dtype=self.dtype)
        return self.values[site]

    def fill(self, rows: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Place a block of rows (``rows`` = dataset positions; token features in row order)."""
        if self.pooling == "tokens":
            starts, stops = self.offsets[rows], self.offsets[rows + 1]
            index = torch.cat([torch.arange(int(a), int(b)) for a, b in zip(starts, stops, strict=True)])
        else:
            index = rows
        for site in self.sites:
            value = features[site]
            self._alloc(site, int(value.shape[-1]))[index] = value.to(self.dtype)

    def result(self, d_fallback: int) -> dict[str, Features]:
        out: dict[str, Features] = {}
        for site in self.sites:
            values = self._alloc(site, d_fallback)
            out[site] = RaggedTokens(values, self.offsets.clone()) if self.pooling == "tokens" else values
        return out
