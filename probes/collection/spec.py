"""What a collection is: the ``spec`` recorded on :class:`~probes.collection.Activations` and the cache key.

The key hashes everything that changes the activations (model fingerprint and config, sites, pooling,
dtypes, dataset fingerprint, the exact token ids and masks), so a cache entry is reused only when every
row it holds would be computed again bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from probes.collection.pooling import dtype_name
from probes.data.types import Encoded
from probes.models.fingerprint import model_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.dataset import ContrastDataset

# 2: checksummed shards, several poolings per entry, compacted dataset-order data file.
CACHE_VERSION = 2


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


def collection_spec(
    model: nn.Module,
    dataset: ContrastDataset,
    encoded: Sequence[Encoded],
    *,
    sites: list[str],
    poolings: Sequence[str],
    max_length: int,
    out_dtype: torch.dtype,
    chat_template: str | None,
    layers_attr: str | None,
) -> dict[str, Any]:
    """The spec of one collection, with its ``cache_key`` (readable model slug + hash of the rest)."""
    fingerprint = model_fingerprint(model, layers_attr)
    spec: dict[str, Any] = {
        "model": fingerprint,
        "model_config_hash": config_hash(model),
        "model_dtype": dtype_name(next(model.parameters()).dtype),
        "sites": sites,
        # Sorted: the entry holds the same tensors whichever pooling the caller lists first.
        "poolings": sorted(poolings),
        "max_length": max_length,
        "dtype": dtype_name(out_dtype),
        "dataset": dataset.fingerprint(),
        "encoding": encoding_hash(encoded),
        "chat_template": hashlib.sha256(chat_template.encode()).hexdigest()[:16] if chat_template else None,
        "cache_version": CACHE_VERSION,
    }
    spec["cache_key"] = f"{_slug(str(fingerprint.get('name') or 'model'))}-{_sha(spec)[:20]}"
    # The primary pooling (what ``Activations[site]`` returns) is not part of the key.
    spec["pooling"] = poolings[0] if len(poolings) == 1 else list(poolings)
    return spec
