"""Exact, early-stopping activation collection with a resumable disk cache.

How a collection runs
---------------------
1. The dataset is encoded once (``probes.data.render.encode_dataset``): token ids plus the detection mask.
2. Rows are sorted by length (longest first, so an out-of-memory error shows up on the first batch) and cut
   into batches, which keeps padding small; results are written back in dataset order.
3. One forward pass per batch reads every requested site through forward hooks. The hook of the deepest site
   raises a private exception once it has read its activations, so blocks after it never run. The pass calls
   the *base* model (``model.base_model``), so no logits are computed even when ``final_norm`` is requested.
4. Padding is exact on both sides: an attention mask always, and ``position_ids`` = cumulative sum of the
   mask minus one whenever the model's forward takes them, so a left-padded row sees the positions it would
   see alone.
5. Each hook pools at once on the device (``last``/``mean``/``tokens`` over the target mask) and moves only
   the pooled rows to the CPU: full hidden states never outlive their batch.
6. With ``cache_dir``, finished rows are flushed to safetensors shards every ``shard_rows`` rows (and when an
   exception interrupts the run); a rerun loads the done rows and computes only the missing ones.

Steps 2-5 live in :mod:`probes.collection.engine` and :mod:`probes.collection.pooling`, the spec and cache
key in :mod:`probes.collection.spec`, the shard format in :mod:`probes.collection.cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from probes.collection.activations import Activations, Features
from probes.collection.cache import ActivationCache, ShardBuffer
from probes.collection.engine import eval_mode, input_device, resolve_padding_side, run_rows, tokenizer_pad_id
from probes.collection.pooling import POOLINGS, Outputs, Pooling, dtype_name, storage_dtype, validate_rows
from probes.collection.spec import collection_spec
from probes.data.types import Encoded
from probes.errors import CacheError, DatasetError
from probes.models.sites import block_list, parse_sites

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.dataset import ContrastDataset

# A shard is flushed at ``shard_rows`` rows or at this many bytes of features, whichever comes first, so
# token-level collections of long rows keep RAM bounded too.
SHARD_BYTES = 256 * 2**20


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="collect", unit="row", disable=not enabled, leave=False)


def collect_encoded(
    model: nn.Module,
    encoded: Sequence[Encoded],
    layers: Sequence[str | int] | str | int,
    pooling: Pooling = "last",
    *,
    batch_size: int = 16,
    pad_token_id: int = 0,
    padding_side: Literal["left", "right"] = "right",
    layers_attr: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Features]:
    """Collect pooled activations of already-encoded rows, in their order, without a cache.

    The lower-level twin of :func:`collect` for callers that tokenize themselves; same sites, pooling,
    batching, padding and early stop.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not supported; use 'last', 'mean' or 'tokens'.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    layers_attr = layers_attr or getattr(model, "_probes_layers_attr", None)
    sites = parse_sites(layers, len(block_list(model, layers_attr)))  # type: ignore[arg-type]
    out_dtype = storage_dtype(dtype)
    counts = validate_rows(encoded, pooling, None)
    outputs = Outputs([s.name for s in sites], pooling, counts, out_dtype)
    bar = _progress(len(encoded), 0, progress)
    try:
        with torch.inference_mode(), eval_mode(model):
            run_rows(
                model,
                encoded,
                np.arange(len(encoded)),
                sites,
                pooling,
                batch_size=batch_size,
                pad_id=pad_token_id,
                padding_side=padding_side,
                layers_attr=layers_attr,
                out_dtype=out_dtype,
                device=torch.device(device) if device is not None else input_device(model),
                on_batch=lambda rows, feats, _counts: outputs.fill(rows, feats),
                progress_bar=bar,
            )
    finally:
        bar.close()
    return outputs.result(_hidden_size(model))


def _hidden_size(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)


# ---------------------------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------------------------
def collect(
    model: nn.Module,
    tokenizer: Any,
    dataset: ContrastDataset,
    layers: Sequence[str | int] | str | int,
    pooling: Pooling = "last",
    *,
    batch_size: int = 16,
    max_length: int = 512,
    max_chars: int | None = None,
    cache_dir: str | Path | None = None,
    chat_template: str | None = None,
    progress: bool = True,
    layers_attr: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    padding_side: Literal["left", "right"] | None = None,
    shard_rows: int = 1024,
) -> Activations:
    """Residual-stream activations of every row of ``dataset`` at ``layers``, in one early-stopping pass.

    Args:
        model: a Hugging Face model (causal LM or encoder), e.g. from :func:`probes.load_model`.
        tokenizer: its (fast) tokenizer.
        dataset: a :class:`~probes.data.ContrastDataset`.
        layers: site names (``"layers.6"``, ``6``, ``-1``, ``"final_norm"``), a list of them, or ``"all"``
            (``layers.0`` .. ``layers.L``).
        pooling: ``"last"`` token of the detection target, ``"mean"`` over it, or every target token
            (``"tokens"``, a :class:`RaggedTokens` per site).
        batch_size: rows per forward pass (rows are length-sorted first).
        max_length: rows are truncated to this many tokens (the data layer's policy: the start is kept).
        max_chars: rows are cut to this many characters before tokenizing (default 64 x max_length), so a
            huge row costs memory in proportion to max_length (see :mod:`probes.data.render`).
        cache_dir: folder of the disk cache; ``None`` keeps everything in memory.
        chat_template: a Jinja chat template overriding the tokenizer's, for chat rows.
        progress: show a progress bar.
        layers_attr: dotted path of the block list for unknown architectures.
        dtype: storage dtype of the features (``"float32"`` default, ``"bfloat16"``, ``"float16"``).
        device: where inputs go; default the device of the input embeddings.
        padding_side: ``"left"``/``"right"``; default the tokenizer's. Results are the same either way.
        shard_rows: with a cache, finished rows are flushed every this many rows, so a crash loses at most
            that much work and RAM holds at most one shard beyond the result.

    Returns:
        :class:`Activations` in dataset order with labels, ids, groups and ``spec`` (model fingerprint,
        sites, pooling, max_length, dtype, dataset fingerprint, cache key).
    """
    from probes.data.render import encode_dataset

    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not supported; use 'last', 'mean' or 'tokens'.")
    if batch_size < 1 or shard_rows < 1:
        raise ValueError(f"batch_size and shard_rows must be >= 1, got {batch_size} and {shard_rows}.")
    layers_attr = layers_attr or getattr(model, "_probes_layers_attr", None)
    n_layers = len(block_list(model, layers_attr))
    sites = parse_sites(layers, n_layers)  # type: ignore[arg-type]
    site_names = [s.name for s in sites]
    out_dtype = storage_dtype(dtype)

    encoded = encode_dataset(
        dataset, tokenizer, max_length=max_length, max_chars=max_chars, chat_template=chat_template
    )
    ids = list(dataset.ids)
    counts = validate_rows(encoded, pooling, ids)
    for i, row in enumerate(encoded):
        if len(row) > max_length:
            raise DatasetError(
                f"row {ids[i]!r}: encoded to {len(row)} tokens, more than max_length={max_length}."
            )

    spec = collection_spec(
        model,
        dataset,
        encoded,
        sites=site_names,
        pooling=pooling,
        max_length=max_length,
        out_dtype=out_dtype,
        chat_template=chat_template,
        layers_attr=layers_attr,
    )

    outputs = Outputs(site_names, pooling, counts, out_dtype)
    done = np.zeros(len(encoded), dtype=bool)
    cache: ActivationCache | None = None
    if cache_dir is not None:
        cache = ActivationCache.open(
            cache_dir,
            spec["cache_key"],
            spec=spec,
            n_rows=len(encoded),
            sites=site_names,
            pooling=pooling,
            dtype=dtype_name(out_dtype),
        )
        for rows, feats, _offsets in cache.iter_shards():
            outputs.fill(rows, feats)
            done[rows.numpy()] = True
        if cache.complete and not done.all():
            raise CacheError(
                f"The cache at {cache.folder} is marked complete but lacks rows. Delete it and rerun."
            )

    todo = np.flatnonzero(~done)
    if len(todo):
        buffer = ShardBuffer(site_names, tokens=pooling == "tokens")

        def flush() -> None:
            nonlocal buffer
            if cache is not None and buffer.n_rows:
                cache.write_shard(buffer, outputs.dims)
                buffer = ShardBuffer(site_names, tokens=pooling == "tokens")

        def on_batch(rows: torch.Tensor, feats: dict[str, torch.Tensor], batch_counts: torch.Tensor) -> None:
            outputs.fill(rows, feats)
            if cache is None:
                return
            buffer.add(rows, feats, batch_counts)
            if buffer.n_rows >= shard_rows or buffer.n_bytes >= SHARD_BYTES:
                flush()

        bar = _progress(len(encoded), int(done.sum()), progress)
        try:
            with torch.inference_mode(), eval_mode(model):
                run_rows(
                    model,
                    encoded,
                    todo,
                    sites,
                    pooling,
                    batch_size=batch_size,
                    pad_id=tokenizer_pad_id(tokenizer),
                    padding_side=resolve_padding_side(padding_side, tokenizer),
                    layers_attr=layers_attr,
                    out_dtype=out_dtype,
                    device=torch.device(device) if device is not None else input_device(model),
                    on_batch=on_batch,
                    progress_bar=bar,
                )
        finally:
            # Also on an exception (Ctrl-C, OOM, a crash in a later batch): finished rows are kept.
            bar.close()
            flush()
    if cache is not None and not cache.complete:
        cache.mark_complete()

    return Activations(
        features=outputs.result(_hidden_size(model)),
        labels=np.asarray(dataset.labels, dtype=np.int64),
        ids=ids,
        groups=list(dataset.groups),
        spec=spec,
        values={n: dataset.target_values(n) for n in dataset.value_names},
    )
