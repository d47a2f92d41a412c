"""Pooling: a batch's hidden states become one vector per row (or its target tokens), in dataset order.

:class:`Pooler` runs inside the forward hooks, on the model's device. It reads a batch through flat token
indices (:class:`BatchLayout`), so a padded batch and a packed one (several rows in one sequence) pool with
the same code, and every requested pooling (``last``, ``mean``, ``tokens``) comes from the one hidden state.
:class:`Outputs` places each batch's pooled rows at their dataset positions in preallocated tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from probes.collection.activations import Features, RaggedTokens
from probes.data.types import Encoded
from probes.errors import CollectionError, DatasetError, SiteError

Pooling = Literal["last", "mean", "tokens"]
POOLINGS: tuple[str, ...] = ("last", "mean", "tokens")


def parse_poolings(pooling: str | Sequence[str]) -> list[str]:
    """``"mean"`` or ``["mean", "last", ...]`` as a non-empty, duplicate-free list (order kept: the first is
    the primary pooling, the one ``Activations[site]`` returns)."""
    items = [pooling] if isinstance(pooling, str) else list(pooling)
    if not items:
        raise ValueError("pooling must be 'last', 'mean', 'tokens' or a non-empty list of them.")
    for p in items:
        if p not in POOLINGS:
            raise ValueError(f"pooling={p!r} is not supported; use 'last', 'mean' or 'tokens' (or a list).")
    if len(set(items)) != len(items):
        raise ValueError(f"pooling lists {items} with a repeat; name each pooling once.")
    return items


def feature_key(site: str, pooling: str) -> str:
    """The name of one (site, pooling) tensor in the engine, the cache shards and the result."""
    return f"{site}/{pooling}"


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


def validate_rows(
    encoded: Sequence[Encoded], pooling: str | Sequence[str], ids: Sequence[str] | None
) -> np.ndarray:
    """Each row's number of target tokens, raising a named error for a row that pooling cannot read."""
    counts = np.zeros(len(encoded), dtype=np.int64)
    pooled = [p for p in parse_poolings(pooling) if p != "tokens"]
    for i, row in enumerate(encoded):
        name = repr(ids[i]) if ids is not None else f"#{i}"
        if len(row.input_ids) == 0:
            raise DatasetError(f"row {name}: encodes to zero tokens; remove the row or give it text.")
        if len(row.target_mask) != len(row.input_ids):
            raise DatasetError(f"row {name}: target_mask and input_ids differ in length; re-encode the row.")
        counts[i] = int(sum(row.target_mask))
        if counts[i] == 0 and pooled:
            raise DatasetError(
                f"row {name}: its detection target has no tokens, so pooling={pooled[0]!r} has nothing to read; "
                "raise max_length or fix the row's target."
            )
    return counts


@dataclass(frozen=True)
class BatchLayout:
    """Where one batch's rows sit in the ``(b, s)`` input, as flat indices into ``hidden.view(b * s, d)``.

    ``token_index`` lists every target token, row by row (positions ascending); ``last_index`` is each
    row's last target token (0 for a row without one, read only by ``tokens`` pooling, which ignores it);
    ``row_of_token`` is the batch row each entry of ``token_index`` belongs to; ``counts`` its tokens.
    """

    shape: tuple[int, int]
    token_index: torch.Tensor  # (t,) int64
    last_index: torch.Tensor  # (rows,) int64
    row_of_token: torch.Tensor  # (t,) int64
    counts: torch.Tensor  # (rows,) int64

    @classmethod
    def build(
        cls, shape: tuple[int, int], starts: np.ndarray, rows: Sequence[Encoded], device: torch.device
    ) -> BatchLayout:
        """``starts[i]`` = flat index of row ``i``'s first token (padded: ``i * s + left pad``; packed:
        ``pack * s + offset in the pack``)."""
        masks = [np.frombuffer(bytes(r.target_mask), dtype=np.bool_) for r in rows]
        counts = np.fromiter((int(m.sum()) for m in masks), dtype=np.int64, count=len(rows))
        positions = [np.flatnonzero(m) for m in masks]
        flat = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        flat = flat + np.repeat(starts, counts)
        last = np.fromiter(
            (s + (p[-1] if len(p) else 0) for s, p in zip(starts, positions, strict=True)),
            dtype=np.int64,
            count=len(rows),
        )
        row_of_token = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        # One host-to-device copy for the four index vectors.
        packed = torch.from_numpy(np.concatenate([flat, last, row_of_token, counts])).to(device)
        t, b = len(flat), len(rows)
        return cls(
            shape,
            packed[:t],
            packed[t : t + b],
            packed[t + b : 2 * t + b],
            packed[2 * t + b :],
        )


class Pooler:
    """Pools one batch's hidden states into every requested pooling, on the hidden states' device.

    Results stay on the device until :meth:`to_host` moves the whole batch at once (into pinned memory on
    a GPU, with one synchronisation per batch rather than one per site and pooling).
    """

    def __init__(self, poolings: Sequence[str], out_dtype: torch.dtype) -> None:
        self.poolings = list(poolings)
        self.out_dtype = out_dtype
        self.layout: BatchLayout | None = None

    def set_batch(self, layout: BatchLayout) -> None:
        self.layout = layout

    def __call__(self, site: str, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        layout = self.layout
        if layout is None or tuple(hidden.shape[:2]) != layout.shape or hidden.ndim != 3:
            raise SiteError(
                f"A hooked site produced a tensor of shape {tuple(hidden.shape)}, not (batch, seq, d) = "
                f"{layout.shape if layout is not None else '?'} + (d,); the site resolver picked the wrong "
                "module for this architecture: pass layers_attr='dotted.path.to.blocks'."
            )
        flat = hidden.reshape(-1, hidden.shape[-1])
        out: dict[str, torch.Tensor] = {}
        tokens: torch.Tensor | None = None
        for pooling in self.poolings:
            if pooling == "last":
                pooled = flat.index_select(0, layout.last_index)
            else:
                if tokens is None:
                    tokens = flat.index_select(0, layout.token_index)  # (t, d), row by row
                if pooling == "tokens":
                    pooled = tokens
                else:
                    # Sum in float32 whatever the model dtype, then divide: a bf16 running sum would lose bits.
                    sums = torch.zeros(
                        len(layout.counts), flat.shape[-1], dtype=torch.float32, device=flat.device
                    )
                    sums.index_add_(0, layout.row_of_token, tokens.float())
                    pooled = sums / layout.counts.clamp(min=1).unsqueeze(1)
            out[feature_key(site, pooling)] = pooled
        return out

    def to_host(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every feature of one batch in ``out_dtype`` on the CPU, with one device synchronisation."""
        out: dict[str, torch.Tensor] = {}
        on_gpu = False
        for key, value in features.items():
            value = value.to(self.out_dtype)
            if value.device.type == "cpu":
                out[key] = value if value.is_contiguous() else value.contiguous()
                continue
            on_gpu = True
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            out[key] = host
        if on_gpu:
            torch.cuda.synchronize()
        return out


def nonfinite_rows(features: dict[str, torch.Tensor], layout: BatchLayout) -> list[int]:
    """Batch positions of rows with a NaN or infinite feature (any site, any pooling)."""
    bad: torch.Tensor | None = None
    for key, value in features.items():
        finite = torch.isfinite(value).all(dim=-1)
        if key.endswith("/tokens"):
            bad_tokens = torch.zeros(len(layout.counts), dtype=torch.int64, device=finite.device)
            bad_tokens.index_add_(0, layout.row_of_token.to(finite.device), (~finite).long())
            finite = bad_tokens == 0
        bad = ~finite if bad is None else bad | ~finite
    return [] if bad is None or not bool(bad.any()) else torch.nonzero(bad).flatten().tolist()


def nonfinite_error(rows: Sequence[int], ids: Sequence[str] | None) -> CollectionError:
    """The error naming dataset rows whose features are NaN or infinite."""
    names = [repr(ids[r]) if ids is not None else f"#{r}" for r in rows]
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return CollectionError(
        f"The model produced NaN or infinite activations for dataset row(s) {shown}. Nothing was stored for "
        "them (rows finished before them are kept in the cache). Check these rows, or the model's weights "
        "and dtype (float16 overflows on some models: load it in bfloat16 or float32)."
    )


class Outputs:
    """Preallocated result tensors (allocated at the first batch, when the width ``d`` is known)."""

    def __init__(
        self, sites: list[str], poolings: Sequence[str], counts: np.ndarray, dtype: torch.dtype
    ) -> None:
        self.sites = sites
        self.poolings = list(poolings)
        self.keys = [feature_key(s, p) for s in sites for p in self.poolings]
        self.dtype = dtype
        self.n = len(counts)
        self.offsets = torch.zeros(self.n + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(torch.as_tensor(counts, dtype=torch.int64), 0)
        self.values: dict[str, torch.Tensor] = {}

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[-1]) for k, v in self.values.items()}

    def _alloc(self, key: str, d: int) -> torch.Tensor:
        if key not in self.values:
            rows = int(self.offsets[-1]) if key.endswith("/tokens") else self.n
            # Allocated as a normal tensor even inside inference_mode: an inference tensor could not be
            # used by autograd later (e.g. as the input of a torch-trained probe).
            with torch.inference_mode(False):
                self.values[key] = torch.zeros(rows, d, dtype=self.dtype)
        return self.values[key]

    def token_index(self, rows: torch.Tensor) -> torch.Tensor:
        """Flat positions in the token tensors of ``rows``' tokens, row by row."""
        starts, stops = self.offsets[rows], self.offsets[rows + 1]
        lengths = stops - starts
        if len(rows) == 0 or int(lengths.sum()) == 0:
            return torch.zeros(0, dtype=torch.int64)
        base = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
        return base + torch.arange(int(lengths.sum()), dtype=torch.int64)

    def fill(self, rows: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Place a block of rows (``rows`` = dataset positions; token features in row order)."""
        token_index = None
        for key in self.keys:
            value = features[key]
            if key.endswith("/tokens"):
                if token_index is None:
                    token_index = self.token_index(rows)
                index = token_index
            else:
                index = rows
            self._alloc(key, int(value.shape[-1]))[index] = value.to(self.dtype)

    def result(self, d_fallback: int) -> dict[str, dict[str, Features]]:
        """``{pooling: {site: features}}``."""
        out: dict[str, dict[str, Features]] = {p: {} for p in self.poolings}
        for site in self.sites:
            for pooling in self.poolings:
                values = self._alloc(feature_key(site, pooling), d_fallback)
                out[pooling][site] = (
                    RaggedTokens(values, self.offsets.clone()) if pooling == "tokens" else values
                )
        return out
