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
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from probes.collection.activations import Activations, Features, RaggedTokens
from probes.collection.cache import ActivationCache, ShardBuffer
from probes.data.types import Encoded
from probes.errors import CacheError, DatasetError, SiteError
from probes.models.sites import (
    Site,
    block_list,
    final_norm_module,
    model_fingerprint,
    parse_sites,
    residual_hook,
)

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.dataset import ContrastDataset

Pooling = Literal["last", "mean", "tokens"]
POOLINGS: tuple[str, ...] = ("last", "mean", "tokens")
CACHE_VERSION = 1
# A shard is flushed at ``shard_rows`` rows or at this many bytes of features, whichever comes first, so
# token-level collections of long rows keep RAM bounded too.
SHARD_BYTES = 256 * 2**20

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class _StopForward(Exception):
    """Raised by the deepest site's hook to end the forward pass; never escapes :func:`collect`."""


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------
def _storage_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(model: nn.Module) -> str:
    """Hash of the model config, without bookkeeping keys that do not change activations."""
    config = getattr(model, "config", None)
    if config is None:
        return ""
    data = config.to_dict()
    volatile = {"transformers_version", "dtype", "torch_dtype", "architectures", "name_or_path"}
    clean = {k: v for k, v in data.items() if not k.startswith("_") and k not in volatile}
    return _sha(clean)[:16]


def encoding_hash(encoded: Sequence[Encoded]) -> str:
    """Hash of the token ids and target masks: pins tokenizer, template and truncation exactly."""
    h = hashlib.sha256()
    for row in encoded:
        h.update(np.asarray(row.input_ids, dtype=np.int64).tobytes())
        h.update(np.packbits(np.asarray(row.target_mask, dtype=bool)).tobytes())
        h.update(len(row).to_bytes(8, "little"))
    return h.hexdigest()[:16]


def _slug(name: str) -> str:
    tail = Path(str(name).rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tail)[:48]


def _input_device(model: nn.Module) -> torch.device:
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
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout would make activations random), restoring each module's flag."""
    training = [m for m in model.modules() if m.training]
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


# ---------------------------------------------------------------------------------------------------------
# The forward runner: which module to call and with which arguments (decided once per call)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Runner:
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

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        kwargs = dict(self.extra)
        if self.pass_position_ids:
            position_ids = attention_mask.cumsum(-1) - 1
            kwargs["position_ids"] = position_ids.clamp_(min=0)
        self.module(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Output assembly in dataset order
# ---------------------------------------------------------------------------------------------------------
class _Outputs:
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


# ---------------------------------------------------------------------------------------------------------
# The core: encoded rows in, pooled features out
# ---------------------------------------------------------------------------------------------------------
def _validate_rows(encoded: Sequence[Encoded], pooling: str, ids: Sequence[str] | None) -> np.ndarray:
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


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad_batch(
    rows: Sequence[Encoded], pad_id: int, padding_side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[i, sl] = torch.as_tensor(row.input_ids, dtype=torch.long)
        attention[i, sl] = 1
        target[i, sl] = torch.as_tensor(row.target_mask, dtype=torch.bool)
    return input_ids.to(device), attention.to(device), target.to(device)


class _Pooler:
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


def _run_rows(
    model: nn.Module,
    encoded: Sequence[Encoded],
    todo: np.ndarray,
    sites: list[Site],
    pooling: str,
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    layers_attr: str | None,
    out_dtype: torch.dtype,
    device: torch.device,
    on_batch: Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor], None],
    progress_bar: Any,
) -> None:
    """Forward the rows ``todo`` in length-sorted batches, calling ``on_batch(rows, features, counts)``."""
    runner = _Runner.build(model, sites, layers_attr)
    pooler = _Pooler(pooling, out_dtype)
    deepest = max(sites, key=lambda s: s.index)
    captured: dict[str, torch.Tensor] = {}

    def make_hook(site: Site) -> Callable[[torch.Tensor], None]:
        def hook(hidden: torch.Tensor) -> None:
            captured[site.name] = pooler(hidden)
            if site is deepest:
                raise _StopForward

        return hook

    lengths = np.fromiter((len(encoded[i]) for i in todo), dtype=np.int64, count=len(todo))
    # Longest first and stable, so equal-length rows keep dataset order.
    order = todo[np.argsort(-lengths, kind="stable")]
    with ExitStack() as stack:
        for site in sites:
            stack.enter_context(residual_hook(model, site, make_hook(site), layers_attr=layers_attr))
        for batch in _batches(order, batch_size):
            rows = [encoded[i] for i in batch]
            input_ids, attention, target = _pad_batch(rows, pad_id, padding_side, device)
            pooler.set_batch(target)
            captured.clear()
            with suppress(_StopForward):
                runner(input_ids, attention)
            missing = [s.name for s in sites if s.name not in captured]
            if missing:
                raise SiteError(
                    f"The forward pass never reached site(s) {missing}; the model does not run the modules the "
                    "site resolver picked. Pass layers_attr= (and norm_attr=) naming the blocks it runs."
                )
            counts = target.sum(dim=1).cpu()
            on_batch(torch.as_tensor(batch, dtype=torch.int64), dict(captured), counts)
            progress_bar.update(len(batch))


def _resolve_padding_side(padding_side: str | None, tokenizer: Any) -> str:
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side={side!r} is not supported; use 'left' or 'right'.")
    return side


def _pad_id(tokenizer: Any) -> int:
    # Any valid id works: padded positions are masked out and never read.
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


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
    out_dtype = _storage_dtype(dtype)
    counts = _validate_rows(encoded, pooling, None)
    outputs = _Outputs([s.name for s in sites], pooling, counts, out_dtype)
    bar = _progress(len(encoded), 0, progress)
    try:
        with torch.inference_mode(), _eval_mode(model):
            _run_rows(
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
                device=torch.device(device) if device is not None else _input_device(model),
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
    out_dtype = _storage_dtype(dtype)

    encoded = encode_dataset(dataset, tokenizer, max_length=max_length, chat_template=chat_template)
    ids = list(dataset.ids)
    counts = _validate_rows(encoded, pooling, ids)
    for i, row in enumerate(encoded):
        if len(row) > max_length:
            raise DatasetError(
                f"row {ids[i]!r}: encoded to {len(row)} tokens, more than max_length={max_length}."
            )

    fingerprint = model_fingerprint(model, layers_attr)
    spec: dict[str, Any] = {
        "model": fingerprint,
        "model_config_hash": config_hash(model),
        "model_dtype": _dtype_name(next(model.parameters()).dtype),
        "sites": site_names,
        "pooling": pooling,
        "max_length": max_length,
        "dtype": _dtype_name(out_dtype),
        "dataset": dataset.fingerprint(),
        "encoding": encoding_hash(encoded),
        "chat_template": hashlib.sha256(chat_template.encode()).hexdigest()[:16] if chat_template else None,
        "cache_version": CACHE_VERSION,
    }
    key = f"{_slug(str(fingerprint.get('name') or 'model'))}-{_sha(spec)[:20]}"
    spec["cache_key"] = key

    outputs = _Outputs(site_names, pooling, counts, out_dtype)
    done = np.zeros(len(encoded), dtype=bool)
    cache: ActivationCache | None = None
    if cache_dir is not None:
        cache = ActivationCache.open(
            cache_dir,
            key,
            spec=spec,
            n_rows=len(encoded),
            sites=site_names,
            pooling=pooling,
            dtype=_dtype_name(out_dtype),
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
            with torch.inference_mode(), _eval_mode(model):
                _run_rows(
                    model,
                    encoded,
                    todo,
                    sites,
                    pooling,
                    batch_size=batch_size,
                    pad_id=_pad_id(tokenizer),
                    padding_side=_resolve_padding_side(padding_side, tokenizer),
                    layers_attr=layers_attr,
                    out_dtype=out_dtype,
                    device=torch.device(device) if device is not None else _input_device(model),
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
    )
