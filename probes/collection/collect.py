"""Exact, early-stopping activation collection with a resumable, checksummed disk cache.

How a collection runs
---------------------
1. The dataset is encoded once (``probes.data.render.encode_dataset``): token ids plus the detection mask.
2. Rows are sorted by length (longest first, so an out-of-memory error shows up on the first batch) and cut
   into batches of ``batch_size`` rows, or of as many rows as fit ``max_tokens`` computed tokens; results
   are written back in dataset order.
3. Where the model allows it exactly, the rows of a batch are **packed** into few sequences (own
   ``position_ids``, block-diagonal 4-D attention mask), so the pass computes about as many tokens as the
   rows hold; otherwise they are padded exactly (see :mod:`probes.collection.engine`).
4. One forward pass per batch reads every requested site through forward hooks. The hook of the deepest site
   raises a private exception once it has read its activations, so blocks after it never run. The pass calls
   the *base* model (``model.base_model``), so no logits are computed even when ``final_norm`` is requested.
5. Each hook pools at once on the device into every requested pooling (``last``/``mean``/``tokens`` over the
   target mask, all from the one hidden state) and the batch moves to the CPU in one copy: full hidden
   states never outlive their batch. NaN or infinite features stop the collection, naming the rows.
6. With ``cache_dir``, finished rows are flushed to checksummed safetensors shards every ``flush_seconds``
   of work, at 64 MiB, or every ``shard_rows`` rows (and when an exception interrupts the run); a rerun
   computes only the missing rows. A complete entry is compacted into one dataset-order file, and the
   result is memory-mapped from it: it need not fit in RAM.

Steps 2-5 live in :mod:`probes.collection.engine` and :mod:`probes.collection.pooling`, the spec and cache
key in :mod:`probes.collection.spec`, the shard format in :mod:`probes.collection.cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from probes.collection.activations import Activations, Features, RaggedTokens
from probes.collection.cache import ActivationCache, ShardBuffer
from probes.collection.engine import eval_mode, input_device, resolve_padding_side, run_rows, tokenizer_pad_id
from probes.collection.pooling import (
    Outputs,
    Pooling,
    dtype_name,
    feature_key,
    parse_poolings,
    storage_dtype,
    validate_rows,
)
from probes.collection.spec import collection_spec
from probes.data.types import Encoded, EncodedRows
from probes.errors import DatasetError
from probes.models.sites import Site, block_list, parse_sites

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.dataset import ContrastDataset

# A shard is flushed at this many bytes of features, after this much work, or at ``shard_rows`` rows,
# whichever comes first: RAM stays bounded for long token-level rows, and a kill -9 loses at most about
# FLUSH_SECONDS of work.
SHARD_BYTES = 64 * 2**20
FLUSH_SECONDS = 30.0


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="collect", unit="row", disable=not enabled, leave=False)


def _check_batching(batch_size: int, max_tokens: int | None, shard_rows: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (or None), got {max_tokens}.")
    if shard_rows is not None and shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1 (or None), got {shard_rows}.")


def collect_encoded(
    model: nn.Module,
    encoded: Sequence[Encoded],
    layers: Sequence[str | int] | str | int,
    pooling: Pooling | Sequence[Pooling] = "last",
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    packing: bool | Literal["auto"] = "auto",
    pad_token_id: int = 0,
    padding_side: Literal["left", "right"] = "right",
    layers_attr: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    stats: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Collect pooled activations of already-encoded rows, in their order, without a cache.

    The lower-level twin of :func:`collect` for callers that tokenize themselves; same sites, pooling,
    batching, packing and early stop. Returns ``{site: features}`` for one pooling, or
    ``{pooling: {site: features}}`` when ``pooling`` is a list.
    """
    poolings = parse_poolings(pooling)
    _check_batching(batch_size, max_tokens, None)
    layers_attr = layers_attr or getattr(model, "_probes_layers_attr", None)
    sites = parse_sites(layers, len(block_list(model, layers_attr)))  # type: ignore[arg-type]
    out_dtype = storage_dtype(dtype)
    counts = validate_rows(encoded, poolings, None)
    outputs = Outputs([s.name for s in sites], poolings, counts, out_dtype)
    bar = _progress(len(encoded), 0, progress)
    try:
        with torch.inference_mode(), eval_mode(model):
            run_rows(
                model,
                encoded,
                np.arange(len(encoded)),
                sites,
                poolings,
                batch_size=batch_size,
                max_tokens=max_tokens,
                packing=packing,
                pad_id=pad_token_id,
                padding_side=padding_side,
                layers_attr=layers_attr,
                out_dtype=out_dtype,
                device=torch.device(device) if device is not None else input_device(model),
                on_batch=lambda rows, feats, _counts: outputs.fill(rows, feats),
                progress_bar=bar,
                stats=stats,
            )
    finally:
        bar.close()
    result = outputs.result(_hidden_size(model))
    return result[poolings[0]] if isinstance(pooling, str) else result


def _hidden_size(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)


def _from_mapped(
    cache: ActivationCache, sites: list[str], poolings: list[str]
) -> dict[str, dict[str, Features]]:
    features, offsets = cache.load_mapped()
    out: dict[str, dict[str, Features]] = {p: {} for p in poolings}
    for site in sites:
        for p in poolings:
            value = features[feature_key(site, p)]
            out[p][site] = (
                RaggedTokens(value, offsets.clone()) if offsets is not None and p == "tokens" else value
            )
    return out


# ---------------------------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectionPlan:
    """What a collection computes, decided before any forward pass, exactly as :func:`probes.collect` does."""

    layers_attr: str | None
    sites: list[Site]
    poolings: list[str]  # as stored: sorted, so the entry is the same whichever pooling a caller lists first
    out_dtype: torch.dtype
    encoded: EncodedRows  # flat arrays: a driver's memory follows the token count (issue #14)
    ids: list[str]
    spec: dict[str, Any]
    counts: list[int]  # target tokens per row (validate_rows)

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    @property
    def keys(self) -> list[str]:
        return [feature_key(s, p) for s in self.site_names for p in self.poolings]

    def open_cache(self, cache_dir: str | Path) -> ActivationCache:
        return ActivationCache.open(
            cache_dir,
            self.spec["cache_key"],
            spec=self.spec,
            n_rows=len(self.encoded),
            sites=self.site_names,
            poolings=self.poolings,
            dtype=dtype_name(self.out_dtype),
        )


def plan_collection(
    model: nn.Module,
    tokenizer: Any,
    dataset: ContrastDataset,
    layers: Sequence[str | int] | str | int,
    pooling: Pooling | Sequence[Pooling],
    *,
    max_length: int,
    max_chars: int | None,
    chat_template: str | None,
    layers_attr: str | None,
    dtype: str | torch.dtype | None,
) -> CollectionPlan:
    """Encoding, row checks, spec and cache key of a collection: the steps :func:`probes.collect` takes."""
    from probes.data.render import encode_dataset

    poolings = parse_poolings(pooling)
    layers_attr = layers_attr or getattr(model, "_probes_layers_attr", None)
    sites = parse_sites(layers, len(block_list(model, layers_attr)))  # type: ignore[arg-type]
    out_dtype = storage_dtype(dtype)
    encoded = encode_dataset(
        dataset,
        tokenizer,
        max_length=max_length,
        max_chars=max_chars,
        chat_template=chat_template,
        compact=True,
    )
    ids = list(dataset.ids)
    counts = validate_rows(encoded, poolings, ids)
    for i, row in enumerate(encoded):
        if len(row) > max_length:
            raise DatasetError(
                f"row {ids[i]!r}: encoded to {len(row)} tokens, more than max_length={max_length}."
            )
    spec = collection_spec(
        model,
        dataset,
        encoded,
        sites=[s.name for s in sites],
        poolings=poolings,
        max_length=max_length,
        out_dtype=out_dtype,
        chat_template=chat_template,
        layers_attr=layers_attr,
    )
    return CollectionPlan(layers_attr, sites, sorted(poolings), out_dtype, encoded, ids, spec, counts)


def collect(
    model: nn.Module,
    tokenizer: Any,
    dataset: ContrastDataset,
    layers: Sequence[str | int] | str | int,
    pooling: Pooling | Sequence[Pooling] = "last",
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    packing: bool | Literal["auto"] = "auto",
    max_length: int = 512,
    max_chars: int | None = None,
    cache_dir: str | Path | None = None,
    chat_template: str | None = None,
    progress: bool = True,
    layers_attr: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    padding_side: Literal["left", "right"] | None = None,
    shard_rows: int | None = None,
    flush_seconds: float = FLUSH_SECONDS,
    stats: dict[str, int] | None = None,
) -> Activations:
    """Residual-stream activations of every row of ``dataset`` at ``layers``, in one early-stopping pass.

    Args:
        model: a Hugging Face model (causal LM or encoder), e.g. from :func:`probes.load_model`.
        tokenizer: its (fast) tokenizer.
        dataset: a :class:`~probes.data.ContrastDataset`.
        layers: site names (``"layers.6"``, ``6``, ``-1``, ``"final_norm"``), a list of them, or ``"all"``
            (``layers.0`` .. ``layers.L``).
        pooling: ``"last"`` token of the detection target, ``"mean"`` over it, every target token
            (``"tokens"``, a :class:`RaggedTokens` per site), or a list of them, all computed from one
            forward pass (``acts[site]`` is the first; ``acts.pooled("mean")`` each one).
        batch_size: rows per forward pass (rows are length-sorted first); ignored when ``max_tokens`` is set.
        max_tokens: token budget of one forward pass (rows x padded width, or the packed sequences' tokens);
            rows per batch then vary with their length. ``None``: ``batch_size`` rows per pass.
        packing: ``"auto"`` packs several rows into one sequence where that is exact for the model and the
            packed plan is estimated cheaper than the padded one (see ``engine.choose_plan``; where packing is
            not exact it pads, saying so in a log line); ``True`` packs whenever exact (error if not);
            ``False`` pads. ``stats["packed"]`` says which ran.
        max_length: rows are truncated to this many tokens (the data layer's policy: the start is kept).
        max_chars: rows are cut to this many characters before tokenizing (default 64 x max_length), so a
            huge row costs memory in proportion to max_length (see :mod:`probes.data.render`).
        cache_dir: folder of the disk cache; ``None`` keeps everything in memory. With a cache the result is
            memory-mapped from the cache's data file.
        chat_template: a Jinja chat template overriding the tokenizer's, for chat rows.
        progress: show a progress bar.
        layers_attr: dotted path of the block list for unknown architectures.
        dtype: storage dtype of the features (``"float32"`` default, ``"bfloat16"``, ``"float16"``).
        device: where inputs go; default the device of the input embeddings.
        padding_side: ``"left"``/``"right"``; default the tokenizer's. Results are the same either way.
        shard_rows: with a cache, also flush every this many rows (default: by time and size only).
        flush_seconds: with a cache, finished rows are flushed after at most this much work (default 30 s)
            or 64 MiB of features, so a crash loses at most about that much.
        stats: a dict that gains ``computed_tokens``, ``real_tokens``, ``batches`` and ``packed``.

    Returns:
        :class:`Activations` in dataset order with labels, ids, groups and ``spec`` (model fingerprint,
        sites, poolings, max_length, dtype, dataset fingerprint, cache key).
    """
    poolings = parse_poolings(pooling)
    _check_batching(batch_size, max_tokens, shard_rows)
    plan = plan_collection(
        model,
        tokenizer,
        dataset,
        layers,
        pooling,
        max_length=max_length,
        max_chars=max_chars,
        chat_template=chat_template,
        layers_attr=layers_attr,
        dtype=dtype,
    )
    layers_attr, sites, site_names, out_dtype = plan.layers_attr, plan.sites, plan.site_names, plan.out_dtype
    encoded, ids, counts, spec = plan.encoded, plan.ids, plan.counts, plan.spec
    engine = dict(
        batch_size=batch_size,
        max_tokens=max_tokens,
        packing=packing,
        pad_id=tokenizer_pad_id(tokenizer),
        padding_side=resolve_padding_side(padding_side, tokenizer),
        layers_attr=layers_attr,
        out_dtype=out_dtype,
        device=torch.device(device) if device is not None else input_device(model),
        ids=ids,
        stats=stats,
    )
    if cache_dir is None:
        outputs = Outputs(site_names, poolings, counts, out_dtype)
        bar = _progress(len(encoded), 0, progress)
        try:
            with torch.inference_mode(), eval_mode(model):
                run_rows(
                    model,
                    encoded,
                    np.arange(len(encoded)),
                    sites,
                    poolings,
                    on_batch=lambda rows, feats, _counts: outputs.fill(rows, feats),
                    progress_bar=bar,
                    **engine,  # type: ignore[arg-type]
                )
        finally:
            bar.close()
        by_pooling = outputs.result(_hidden_size(model))
    else:
        by_pooling = _collect_cached(
            model,
            encoded,
            sites,
            poolings,
            spec,
            Path(cache_dir),
            out_dtype,
            progress,
            shard_rows,
            flush_seconds,
            engine,
        )
    return Activations(
        features=by_pooling[poolings[0]],
        labels=np.asarray(dataset.labels, dtype=np.int64),
        ids=ids,
        groups=list(dataset.groups),
        spec=spec,
        by_pooling=by_pooling,
        values={n: dataset.target_values(n) for n in dataset.value_names},
    )


def _collect_cached(
    model: nn.Module,
    encoded: Sequence[Encoded],
    sites: list[Any],
    poolings: list[str],
    spec: dict[str, Any],
    cache_dir: Path,
    out_dtype: torch.dtype,
    progress: bool,
    shard_rows: int | None,
    flush_seconds: float,
    engine: dict[str, Any],
) -> dict[str, dict[str, Features]]:
    """Compute the rows the cache entry lacks into shards, compact the entry, and map it."""
    site_names = [s.name for s in sites]
    stored = sorted(poolings)  # the entry is the same whichever pooling the caller lists first
    cache = ActivationCache.open(
        cache_dir,
        spec["cache_key"],
        spec=spec,
        n_rows=len(encoded),
        sites=site_names,
        poolings=stored,
        dtype=dtype_name(out_dtype),
    )
    if not cache.complete:
        done = cache.done_rows()
        todo = np.flatnonzero(~done)
        keys = [feature_key(s, p) for s in site_names for p in stored]
        dims = {k: _hidden_size(model) for k in keys}
        buffer = ShardBuffer.for_keys(keys)

        def flush() -> None:
            nonlocal buffer
            if buffer.n_rows:
                cache.write_shard(buffer, dims)
                buffer = ShardBuffer.for_keys(keys)

        def on_batch(rows: torch.Tensor, feats: dict[str, torch.Tensor], batch_counts: torch.Tensor) -> None:
            for k in keys:
                dims[k] = int(feats[k].shape[-1])
            buffer.add(rows, feats, batch_counts)
            if (
                buffer.n_bytes >= SHARD_BYTES
                or buffer.age_s >= flush_seconds
                or (shard_rows is not None and buffer.n_rows >= shard_rows)
            ):
                flush()

        if len(todo):
            bar = _progress(len(encoded), int(done.sum()), progress)
            try:
                with torch.inference_mode(), eval_mode(model):
                    run_rows(
                        model, encoded, todo, sites, stored, on_batch=on_batch, progress_bar=bar, **engine
                    )
            finally:
                # Also on an exception (Ctrl-C, OOM, a crash in a later batch): finished rows are kept.
                bar.close()
                flush()
        cache.mark_complete()
    return _from_mapped(cache, site_names, poolings)
