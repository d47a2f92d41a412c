"""The forward engine: length-sorted batches, packing or exact padding, hooks at every site, an early stop.

:func:`run_rows` cuts length-sorted rows into batches (``batch_size`` rows, or as many as fit a
``max_tokens`` budget), lays each batch out, runs one forward pass of the base model with a hook on every
requested site, and stops the pass at the deepest site by raising :class:`_StopForward` from its hook.

Two layouts, both exact (equal to each row's own unpadded forward):

* **packed** (where the model allows it and :func:`choose_plan` estimates it cheaper): several rows share one
  sequence, each with its own
  ``position_ids`` (0, 1, ...) and a block-diagonal 4-D attention mask (additive float, causal inside each
  row for decoders, full inside each row for encoders), so the pass computes about as many tokens as the
  rows hold. With a flash-attention model the rows go in one ``(1, total)`` sequence with restarting
  ``position_ids`` and no mask, which transformers turns into a varlen kernel call.
* **padded**: rows padded to the batch's longest row, an attention mask, and ``position_ids`` = cumulative
  sum of the mask minus one whenever the model takes them, so a left-padded row sees its own positions.

Packing is used only when :func:`packing_plan` finds it exact for this model: the model must take
``position_ids``, must not use ALiBi (BLOOM, MPT, Falcon with ``alibi``: their bias is built from a 2-D
mask), rows must fit its sliding window, and a one-off self-check (two short random rows, packed vs each
alone, at every requested site) must agree. Otherwise the engine falls back to padded batches and says so
in one log line.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from probes.collection.pooling import BatchLayout, Pooler, feature_key, nonfinite_error, nonfinite_rows
from probes.data.types import Encoded, EncodedRows
from probes.errors import SiteError
from probes.models.sites import Site, block_list, final_norm_module, residual_hook

log = logging.getLogger("probes.collection")

# Packs are at least this long (or the longest row): short rows share a sequence, and the dense T x T
# attention of a pack stays a small part of its cost (4 T d of 24 d^2 FLOPs per token at T = 256).
PACK_TOKENS = 256
PAD_TOLERANCE = 0.05  # a padded token-budget batch ends before a row shorter than 95% of its longest
# Model types whose position information is an ALiBi bias built from a 2-D padding mask.
_ALIBI_TYPES = frozenset({"bloom", "mpt", "baichuan"})


class _StopForward(Exception):
    """Raised by the deepest site's hook to end the forward pass; never escapes :func:`run_rows`."""


def input_device(model: nn.Module) -> torch.device:
    # The embedding's device is where inputs must go, also for models split across devices by accelerate.
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, nn.Module):
        param = next(emb.parameters(), None)
        if param is not None:
            return param.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _contains(root: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in root.modules())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout would make activations random), restoring each module's flag."""
    training = [m for m in model.modules() if m.training]
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


@dataclass
class _Runner:
    """Which module to call and with which arguments, decided once per collection (not per batch)."""

    module: nn.Module
    pass_position_ids: bool
    extra: dict[str, Any]

    @classmethod
    def build(cls, model: nn.Module, sites: list[Site], layers_attr: str | None) -> _Runner:
        blocks = block_list(model, layers_attr)
        needed: list[nn.Module] = [blocks]
        if any(s.is_final_norm for s in sites):
            norm = final_norm_module(model)
            if norm is not None:
                needed.append(norm)
        # Call the base model (no LM head, so no logits) when it holds every hooked module.
        base = getattr(model, "base_model", None)
        module = model
        if isinstance(base, nn.Module) and base is not model and all(_contains(base, m) for m in needed):
            module = base
        params = inspect.signature(module.forward).parameters
        extra: dict[str, Any] = {}
        if "use_cache" in params:
            extra["use_cache"] = False
        config = getattr(model, "config", None)
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # A config that asks for all hidden states or attentions would make every pass collect them.
        for flag in ("output_hidden_states", "output_attentions"):
            if getattr(config, flag, False) and (flag in params or takes_kwargs):
                extra[flag] = False
        return cls(module, "position_ids" in params, extra)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> None:
        kwargs = dict(self.extra)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        elif self.pass_position_ids and attention_mask is not None and attention_mask.ndim == 2:
            position_ids = attention_mask.cumsum(-1) - 1
            kwargs["position_ids"] = position_ids.clamp_(min=0)
        self.module(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


@dataclass
class Batch:
    """One forward pass: its rows (dataset positions, in layout order), inputs and pooling layout."""

    rows: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    layout: BatchLayout

    @property
    def computed_tokens(self) -> int:
        return int(self.input_ids.numel())


def plan_batches(
    order: np.ndarray,
    lengths: dict[int, int] | np.ndarray,
    batch_size: int,
    max_tokens: int | None,
    packed: bool,
) -> list[list[list[int]]]:
    """Cut length-sorted rows (``order``, longest first) into batches of sequences of rows.

    A batch is a list of sequences, a sequence a list of rows (one row per sequence when padded). Without
    ``max_tokens`` a batch holds ``batch_size`` rows; with it, as many rows as keep the computed tokens
    (sequences x the longest sequence) within ``max_tokens`` (always at least one row) and, padded, pad no row
    by more than ``PAD_TOLERANCE`` of the batch's width: on a large dataset the lengths are dense and batches
    fill the budget; on a sparse tail (few long rows) batches get smaller instead of computing padding.

    Packed, without ``max_tokens``: each run of ``batch_size`` rows is packed first-fit-decreasing into
    sequences of ``max(PACK_TOKENS, its longest row)`` tokens. Packed, with ``max_tokens``: each batch opens
    sequences of ``cap = max(longest remaining row, min(PACK_TOKENS, max_tokens))`` tokens, as many as the
    budget holds, takes the longest remaining rows first-fit while one fits, then fills the gaps that are
    left with the *shortest* remaining rows (best fit). Long rows leave gaps that only short rows can fill,
    and the shortest rows are at the other end of the order, so computed tokens come within a few percent
    of the real ones (see docs/benchmarks.md).
    """
    n = len(order)
    batches: list[list[list[int]]] = []
    if not packed:
        i = 0
        while i < n:
            longest = max(1, int(lengths[order[i]]))
            if max_tokens is None:
                take = batch_size
            else:  # within the budget, and no row padded by more than PAD_TOLERANCE of the batch width
                fit = max(1, max_tokens // longest)
                shortest = longest * (1 - PAD_TOLERANCE)
                take = 1
                while take < fit and i + take < n and int(lengths[order[i + take]]) >= shortest:
                    take += 1
            batches.append([[int(r)] for r in order[i : i + take]])
            i += take
        return batches
    if max_tokens is not None:
        return _pack_two_ended([int(r) for r in order], [int(lengths[r]) for r in order], max_tokens)
    for i in range(0, n, batch_size):
        group = order[i : i + batch_size]
        cap = max(PACK_TOKENS, int(lengths[group[0]]))
        seqs: list[list[int]] = []
        room: list[int] = []
        for r in group:  # first fit, longest first
            need = int(lengths[r])
            for k, free in enumerate(room):
                if need <= free:
                    seqs[k].append(int(r))
                    room[k] -= need
                    break
            else:
                seqs.append([int(r)])
                room.append(cap - need)
        batches.append(seqs)
    return batches


def encoded_lengths(encoded: Sequence[Encoded]) -> np.ndarray:
    """Every row's length, without building the rows of an :class:`EncodedRows`."""
    if isinstance(encoded, EncodedRows):
        return encoded.lengths
    return np.fromiter((len(row) for row in encoded), dtype=np.int64, count=len(encoded))


def plan_cost(
    batches: list[list[list[int]]], lengths: dict[int, int] | np.ndarray, mode: str | None, per_key: float
) -> float:
    """Estimated compute of a plan, in token-forward units: every computed position costs 1 (the linear
    layers), plus ``per_key`` per attention key it attends over. Padded and 4-D-masked packed batches attend
    over the whole batch width (the mask does not skip work); ``"varlen"`` attends only within each row."""
    cost = 0.0
    for seqs in batches:
        width = max(sum(int(lengths[r]) for r in seq) for seq in seqs)
        if mode == "varlen":
            cost += sum(int(lengths[r]) * (1 + per_key * int(lengths[r])) for seq in seqs for r in seq)
        else:
            cost += len(seqs) * width * (1 + per_key * width)
    return cost


def attention_cost_per_key(model: nn.Module) -> float:
    """Attention's cost per key relative to one token's linear layers: ``4d`` against ``24d^2`` FLOPs per
    token and block (QK and AV versus QKV, output and a 4x MLP), ``1 / (6d)``; 0 when the width is unknown."""
    config = getattr(model, "config", None)
    width = (
        getattr(config, "hidden_size", None)
        or getattr(config, "n_embd", None)
        or getattr(config, "d_model", None)
    )
    return 1.0 / (6 * int(width)) if isinstance(width, int) and width > 0 else 0.0


def choose_plan(
    order: np.ndarray,
    lengths: dict[int, int] | np.ndarray,
    batch_size: int,
    max_tokens: int | None,
    mode: str | None,
    packing: bool | str,
    per_key: float,
) -> tuple[list[list[list[int]]], bool]:
    """The batches :func:`run_rows` runs and whether they are packed. ``packing="auto"`` packs only when the
    packed plan is estimated cheaper (:func:`plan_cost`): packing removes padding but makes each short row of a
    4-D-masked sequence attend over the whole sequence, which on data whose sorted batches pad little costs
    more than it saves (docs/benchmarks.md). ``mode`` is :func:`packing_plan`'s (None: not exact, pad)."""
    if mode is None or packing is False:
        return plan_batches(order, lengths, batch_size, max_tokens, False), False
    packed = plan_batches(order, lengths, batch_size, max_tokens, True)
    if packing is True:
        return packed, True
    padded = plan_batches(order, lengths, batch_size, max_tokens, False)
    if plan_cost(packed, lengths, mode, per_key) < plan_cost(padded, lengths, None, per_key):
        return packed, True
    return padded, False


def _pack_two_ended(rows: list[int], lengths: list[int], max_tokens: int) -> list[list[list[int]]]:
    """The token-budget packer of :func:`plan_batches`: ``rows`` longest first, ``lengths`` aligned."""
    batches: list[list[list[int]]] = []
    lo, hi = 0, len(rows)  # rows[lo:hi] are still to place; the longest at lo, the shortest at hi - 1
    while lo < hi:
        cap = max(lengths[lo], min(PACK_TOKENS, max_tokens))
        packs = max(1, max_tokens // cap)
        seqs: list[list[int]] = []
        room: list[int] = []
        while lo < hi:  # the longest rows, first fit, opening sequences while the budget has room
            need = lengths[lo]
            k = next((k for k, free in enumerate(room) if need <= free), -1)
            if k < 0:
                if len(seqs) == packs:
                    break
                seqs.append([])
                room.append(cap)
                k = len(seqs) - 1
            seqs[k].append(rows[lo])
            room[k] -= need
            lo += 1
        while lo < hi:  # the gaps, filled with the shortest rows (best fit: the tightest gap that holds one)
            need = lengths[hi - 1]
            k = min((k for k, free in enumerate(room) if need <= free), key=room.__getitem__, default=-1)
            if k < 0:
                break
            hi -= 1
            seqs[k].append(rows[hi])
            room[k] -= need
        batches.append(seqs)
    return batches


def _padded_batch(
    rows: list[int],
    encoded: Sequence[Encoded],
    pad_id: int,
    padding_side: str,
    device: torch.device,
) -> Batch:
    got = [encoded[r] for r in rows]  # once per row: a flat EncodedRows builds each row on access
    width = max(len(e) for e in got)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=np.int64)
    starts = np.zeros(len(rows), dtype=np.int64)
    for i, e in enumerate(got):
        n = len(e)
        lo = width - n if padding_side == "left" else 0
        ids[i, lo : lo + n] = e.input_ids
        attention[i, lo : lo + n] = 1
        starts[i] = i * width + lo
    layout = BatchLayout.build((len(rows), width), starts, got, device)
    return Batch(
        np.asarray(rows, dtype=np.int64),
        torch.from_numpy(ids).to(device),
        torch.from_numpy(attention).to(device),
        None,
        layout,
    )


def _packed_batch(
    seqs: list[list[int]],
    encoded: Sequence[Encoded],
    pad_id: int,
    device: torch.device,
    mode: str,
    mask_dtype: torch.dtype,
) -> Batch:
    """Rows of each sequence side by side, own positions, block-diagonal mask (``mode``: causal/bidirectional)
    or, for ``mode="varlen"``, every row in one sequence with restarting positions and no mask."""
    if mode == "varlen":
        seqs = [[r for seq in seqs for r in seq]]
    got = {
        r: encoded[r] for seq in seqs for r in seq
    }  # once per row: a flat EncodedRows builds each on access
    width = max(sum(len(got[r]) for r in seq) for seq in seqs)
    b = len(seqs)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    positions = np.zeros((b, width), dtype=np.int64)
    # Segment id per position; padding gets its own id per position, so it attends only to itself (a query
    # that sees no key at all would make NaN that 0-weight attention could still carry into real rows).
    segment = -1 - np.arange(b * width, dtype=np.int64).reshape(b, width)
    rows: list[int] = []
    starts: list[int] = []
    for i, seq in enumerate(seqs):
        at = 0
        for r in seq:
            n = len(got[r])
            ids[i, at : at + n] = got[r].input_ids
            positions[i, at : at + n] = np.arange(n)
            segment[i, at : at + n] = len(rows)
            rows.append(r)
            starts.append(i * width + at)
            at += n
        positions[i, at:] = np.arange(width - at)
    layout = BatchLayout.build((b, width), np.asarray(starts, dtype=np.int64), [got[r] for r in rows], device)
    mask: torch.Tensor | None = None
    if mode != "varlen":
        seg = torch.from_numpy(segment).to(device)
        allowed = seg[:, :, None] == seg[:, None, :]
        if mode == "causal":
            allowed &= torch.ones(width, width, dtype=torch.bool, device=device).tril_()
        mask = torch.zeros(b, 1, width, width, dtype=mask_dtype, device=device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(mask_dtype).min)
    return Batch(
        np.asarray(rows, dtype=np.int64),
        torch.from_numpy(ids).to(device),
        mask,
        torch.from_numpy(positions).to(device),
        layout,
    )


def _compute_dtype(model: nn.Module) -> torch.dtype:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return param.dtype if param is not None else torch.float32


# model -> {(attention implementation, called module): packing mode or None}; weak, so a model that is
# freed takes its entry with it (an id() key could be reused by a later, different model).
_PLAN_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int], str | None]] = (
    weakref.WeakKeyDictionary()
)


def packing_plan(
    model: nn.Module,
    runner: _Runner,
    layers_attr: str | None,
    device: torch.device,
    longest: int,
) -> tuple[str | None, str]:
    """``(mode, reason)``: ``"causal"``/``"bidirectional"``/``"varlen"`` when packing is exact for this
    model, else ``None`` and why not. The self-check runs once per model."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type in _ALIBI_TYPES or getattr(config, "alibi", False):
        return None, f"{model_type} uses ALiBi position biases, which a packed sequence cannot express"
    if not runner.pass_position_ids:
        return None, f"{type(runner.module).__name__}.forward takes no position_ids"
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and window > 0 and longest > window:
        return None, f"a row of {longest} tokens is longer than the sliding window ({window})"
    impl = str(getattr(config, "_attn_implementation", "") or "")
    key = (impl, id(runner.module))
    plans = _PLAN_CACHE.setdefault(model, {})
    if key not in plans:
        # Checked at every block's output (not only the requested sites), so one check serves every
        # later collection from this model.
        every = [Site(f"layers.{i}", i) for i in range(len(block_list(model, layers_attr)) + 1)]
        candidates = ["varlen"] if impl.startswith("flash") else ["causal", "bidirectional"]
        plans[key] = next(
            (m for m in candidates if _self_check(model, runner, every, layers_attr, device, m)), None
        )
    mode = plans[key]
    if mode is None:
        return None, "the packed-vs-unpacked self-check disagreed (the model ignores a custom 4-D mask)"
    return mode, ""


def _self_check(
    model: nn.Module,
    runner: _Runner,
    sites: list[Site],
    layers_attr: str | None,
    device: torch.device,
    mode: str,
) -> bool:
    """Two random rows (5 and 3 tokens) packed with one padding position vs each alone: equal at every site?"""
    emb = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    vocab = int(
        getattr(emb, "num_embeddings", 0) or getattr(getattr(model, "config", None), "vocab_size", 0) or 0
    )
    if vocab < 16:
        return False
    # Distinct tokens: with repeated ones, attention that leaks across rows can average identical values
    # and hide the leak.
    ids = (torch.randperm(min(vocab, 1000) - 3, generator=torch.Generator().manual_seed(0))[:8] + 3).tolist()
    rows = [Encoded(tuple(ids[:5]), (True,) * 5), Encoded(tuple(ids[5:]), (True,) * 3)]
    dtype = _compute_dtype(model)
    pooler = Pooler(["tokens"], torch.float32)
    deepest = max(sites, key=lambda s: s.index)
    got: dict[str, torch.Tensor] = {}

    def hook_for(site: Site) -> Callable[[torch.Tensor], None]:
        def hook(hidden: torch.Tensor) -> None:
            got[site.name] = pooler(site.name, hidden)[feature_key(site.name, "tokens")].float()
            if site is deepest:
                raise _StopForward

        return hook

    try:
        with ExitStack() as stack:
            for site in sites:
                stack.enter_context(residual_hook(model, site, hook_for(site), layers_attr=layers_attr))
            reference: list[dict[str, torch.Tensor]] = []
            for i in range(len(rows)):
                batch = _padded_batch([i], rows, 0, "right", device)
                pooler.set_batch(batch.layout)
                got.clear()
                with suppress(_StopForward):
                    runner(batch.input_ids, batch.attention_mask)
                reference.append(dict(got))
            # Capacity for one padding position at the end, which must not disturb the rows.
            packed = _packed_batch([[0, 1]], rows, 0, device, mode, dtype)
            if mode != "varlen":
                pad = Encoded((0,), (False,))
                packed = _packed_batch([[0, 1, 2]], [*rows, pad], 0, device, mode, dtype)
            pooler.set_batch(packed.layout)
            got.clear()
            with suppress(_StopForward):
                runner(packed.input_ids, packed.attention_mask, packed.position_ids)
    except Exception as exc:  # noqa: BLE001 - any failure of the packed call means: do not pack
        log.debug("packing self-check (%s) failed: %s", mode, exc)
        return False
    tol = 1e-4 if dtype == torch.float32 or dtype == torch.float64 else 2e-2
    for site in sites:
        if site.name not in got or any(site.name not in r for r in reference):
            return False
        expected = torch.cat([r[site.name] for r in reference])
        if got[site.name].shape != expected.shape:
            return False
        scale = max(1.0, float(expected.abs().max()))
        if not float((got[site.name] - expected).abs().max()) <= tol * scale:
            return False
    return True


def _nonfinite_alone(
    row: int,
    encoded: Sequence[Encoded],
    pooler: Pooler,
    runner: _Runner,
    captured: dict[str, torch.Tensor],
    keys: list[str],
    pad_id: int,
    device: torch.device,
) -> bool:
    """Whether ``row`` forwarded on its own (no packing, no padding) has a non-finite feature."""
    batch = _padded_batch([row], encoded, pad_id, "right", device)
    pooler.set_batch(batch.layout)
    captured.clear()
    with suppress(_StopForward):
        runner(batch.input_ids, batch.attention_mask)
    return bool(nonfinite_rows(pooler.to_host({k: captured[k] for k in keys}), batch.layout))


def run_rows(
    model: nn.Module,
    encoded: Sequence[Encoded],
    todo: np.ndarray,
    sites: list[Site],
    poolings: Sequence[str],
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    layers_attr: str | None,
    out_dtype: torch.dtype,
    device: torch.device,
    on_batch: Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor], None],
    progress_bar: Any,
    max_tokens: int | None = None,
    packing: bool | str = "auto",
    ids: Sequence[str] | None = None,
    stats: dict[str, int] | None = None,
    batches: list[list[list[int]]] | None = None,
) -> None:
    """Forward the rows ``todo`` in length-sorted batches, calling ``on_batch(rows, features, counts)``.

    ``features`` are keyed by :func:`~probes.collection.pooling.feature_key` (``"<site>/<pooling>"``) and
    are on the CPU in ``out_dtype``; ``counts`` are the rows' target-token counts. ``packing``: ``"auto"``
    packs where exact (else pads, with a log line), ``True`` raises if packing is not exact, ``False``
    pads. ``ids`` name rows in errors (NaN features); ``stats`` gains ``computed_tokens``, ``real_tokens``,
    ``batches`` and ``packed`` (1/0). ``batches``: run this plan of :func:`plan_batches` (batches of
    sequences of positions in ``encoded``, covering ``todo``) instead of planning; the Ray engine sends each
    worker its block of the driver's plan this way. It must match the packing decision: one row per
    sequence when the batches are padded.
    """
    if packing not in ("auto", True, False):
        raise ValueError(f"packing must be 'auto', True or False; got {packing!r}.")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}.")
    runner = _Runner.build(model, sites, layers_attr)
    pooler = Pooler(poolings, out_dtype)
    deepest = max(sites, key=lambda s: s.index)
    captured: dict[str, torch.Tensor] = {}

    def make_hook(site: Site) -> Callable[[torch.Tensor], None]:
        def hook(hidden: torch.Tensor) -> None:
            captured.update(pooler(site.name, hidden))
            if site is deepest:
                raise _StopForward

        return hook

    lengths = encoded_lengths(encoded)
    # Longest first and stable, so equal-length rows keep dataset order.
    order = todo[np.argsort(-lengths[todo], kind="stable")]
    mode: str | None = None
    if packing is not False and len(order):
        mode, reason = packing_plan(model, runner, layers_attr, device, int(lengths[order[0]]))
        if mode is None:
            if packing is True:
                raise ValueError(f"packing=True, but packing is not exact for this model: {reason}.")
            said = _PLAN_CACHE.setdefault(model, {})
            if (reason, -1) not in said:  # one line per model and reason, not one per collection
                said[(reason, -1)] = None
                log.warning("collect: padded batches instead of packed sequences: %s.", reason)
    mask_dtype = _compute_dtype(model)
    keys = [feature_key(s.name, p) for s in sites for p in poolings]
    totals = stats if stats is not None else {}
    for name in ("computed_tokens", "real_tokens", "batches"):
        totals.setdefault(name, 0)
    totals["packed"] = int(mode is not None)
    with ExitStack() as stack:
        for site in sites:
            stack.enter_context(residual_hook(model, site, make_hook(site), layers_attr=layers_attr))
        if batches is None:
            batches, packs = choose_plan(
                order, lengths, batch_size, max_tokens, mode, packing, attention_cost_per_key(model)
            )
            mode = mode if packs else None
            totals["packed"] = int(packs)
        elif mode is None and any(len(seq) != 1 for b in batches for seq in b):
            raise ValueError(
                "run_rows got a packed plan (several rows in one sequence), but this model's batches are padded."
            )
        for seqs in batches:
            if mode is None:
                batch = _padded_batch([s[0] for s in seqs], encoded, pad_id, padding_side, device)
            else:
                batch = _packed_batch(seqs, encoded, pad_id, device, mode, mask_dtype)
            pooler.set_batch(batch.layout)
            captured.clear()
            with suppress(_StopForward):
                runner(batch.input_ids, batch.attention_mask, batch.position_ids)
            missing = sorted({s.name for s in sites if feature_key(s.name, poolings[0]) not in captured})
            if missing:
                raise SiteError(
                    f"The forward pass never reached site(s) {missing}; the model does not run the modules the "
                    "site resolver picked. Pass layers_attr= (and norm_attr=) naming the blocks it runs."
                )
            features = pooler.to_host({k: captured[k] for k in keys})
            bad = nonfinite_rows(features, batch.layout)
            if bad:
                rows = [int(batch.rows[i]) for i in bad]
                if mode is not None:
                    # In a packed sequence a NaN row's values reach its neighbours through 0-weight
                    # attention (0 * NaN = NaN): forward the suspects alone to name only the culprits.
                    rows = [
                        r
                        for r in rows
                        if _nonfinite_alone(r, encoded, pooler, runner, captured, keys, pad_id, device)
                    ]
                raise nonfinite_error(rows or [int(batch.rows[i]) for i in bad], ids)
            counts = batch.layout.counts.cpu()
            totals["computed_tokens"] += batch.computed_tokens
            totals["real_tokens"] += int(lengths[batch.rows].sum())
            totals["batches"] += 1
            on_batch(torch.from_numpy(batch.rows), features, counts)
            progress_bar.update(len(batch.rows))


def resolve_padding_side(padding_side: str | None, tokenizer: Any) -> str:
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side={side!r} is not supported; use 'left' or 'right'.")
    return side


def tokenizer_pad_id(tokenizer: Any) -> int:
    # Any valid id works: padded positions are masked out and never read.
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
