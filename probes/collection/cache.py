"""The on-disk activation cache: a manifest plus safetensors shards, written with atomic renames.

Layout of one cache entry (``cache_dir/<key>/``)::

    manifest.json            what this entry holds (spec, sites, dims) and which shards are complete
    shard-00000.safetensors  a block of finished rows: ``row_index`` (k,) int64 dataset positions, and per site
    shard-00001.safetensors  ``<site>`` (k, d) pooled features, or for ``pooling="tokens"`` ``<site>`` (t, d)
    ...                      token features plus one shared ``offsets`` (k + 1,) int64

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``, so a
reader never sees half a file. A shard counts only once the manifest lists it: a crash between writing a
shard and updating the manifest leaves an orphan that the resumed run simply overwrites. Rows of a shard are
in the order they were computed (length-sorted), not dataset order; ``row_index`` maps them back.

There is no lock: run one collection per entry at a time. Concurrent runs duplicate work and may leave an
entry that fails validation; that raises :class:`~probes.errors.CacheError` (delete the folder, rerun) and
never returns wrong rows silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.errors import CacheError

FORMAT = "probes-activation-cache/1"
MANIFEST = "manifest.json"
OFFSETS = "offsets"
ROW_INDEX = "row_index"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # fsync before the rename: after a power cut the name points at complete data or at nothing.
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _delete_hint(folder: Path) -> str:
    return f"Delete the folder {folder} (e.g. `rm -r '{folder}'`) and collect again to rebuild it."


class ShardBuffer:
    """Finished rows waiting to be written as one shard."""

    def __init__(self, sites: list[str], tokens: bool) -> None:
        self.sites = sites
        self.tokens = tokens
        self.rows: list[torch.Tensor] = []
        self.features: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
        self.lengths: list[torch.Tensor] = []
        self.n_rows = 0
        self.n_bytes = 0

    def add(
        self, rows: torch.Tensor, features: dict[str, torch.Tensor], lengths: torch.Tensor | None
    ) -> None:
        self.rows.append(rows)
        for site in self.sites:
            self.features[site].append(features[site])
            self.n_bytes += features[site].numel() * features[site].element_size()
        if self.tokens and lengths is not None:
            self.lengths.append(lengths)
        self.n_rows += len(rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {ROW_INDEX: torch.cat(self.rows).to(torch.int64)}
        for site in self.sites:
            out[site] = torch.cat(self.features[site]).contiguous()
        if self.tokens:
            lengths = torch.cat(self.lengths).to(torch.int64)
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)
            out[OFFSETS] = offsets
        return out


class ActivationCache:
    """One cache entry ``cache_dir/<key>/``: validates an existing manifest, lists done rows, appends shards."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        cache_dir: str | Path,
        key: str,
        *,
        spec: dict[str, Any],
        n_rows: int,
        sites: list[str],
        pooling: str,
        dtype: str,
    ) -> ActivationCache:
        """Open (or start) the entry for ``key``; raise :class:`CacheError` if it holds something else."""
        folder = Path(cache_dir).expanduser() / key
        path = folder / MANIFEST
        expected = {
            "format": FORMAT,
            "key": key,
            "n_rows": n_rows,
            "sites": sites,
            "pooling": pooling,
            "dtype": dtype,
        }
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CacheError(
                    f"The cache manifest {path} is unreadable ({exc}). {_delete_hint(folder)}"
                ) from exc
            if not isinstance(manifest, dict):
                raise CacheError(f"The cache manifest {path} is not a JSON object. {_delete_hint(folder)}")
            for field, value in expected.items():
                if manifest.get(field) != value:
                    raise CacheError(
                        f"The cache at {folder} does not match this collection: manifest {field}="
                        f"{manifest.get(field)!r}, expected {value!r}. {_delete_hint(folder)}"
                    )
            if not isinstance(manifest.get("shards"), list) or not isinstance(manifest.get("dims"), dict):
                raise CacheError(
                    f"The cache manifest {path} lacks 'shards' or 'dims'. {_delete_hint(folder)}"
                )
            return cls(folder, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {**expected, "spec": spec, "dims": {}, "shards": [], "rows_done": 0, "complete": False}
        cache = cls(folder, manifest)
        cache._write_manifest()
        return cache

    # ------------------------------------------------------------------ reading
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.manifest["dims"].items()}

    def iter_shards(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]]:
        """Yield ``(row_index, {site: features}, offsets or None)`` per shard, validated against the manifest."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        n_rows = int(self.manifest["n_rows"])
        tokens = self.manifest["pooling"] == "tokens"
        seen = np.zeros(n_rows, dtype=bool)
        dims = self.dims
        for entry in self.manifest["shards"]:
            path = self.folder / str(entry.get("file"))
            hint = _delete_hint(self.folder)
            if not path.is_file():
                raise CacheError(f"Cache shard {path} listed in the manifest is missing. {hint}")
            try:
                tensors = load_file(path)
            except (SafetensorError, OSError, ValueError) as exc:
                raise CacheError(f"Cache shard {path} is corrupt ({exc}). {hint}") from exc
            rows = tensors.get(ROW_INDEX)
            if rows is None or rows.ndim != 1 or len(rows) != int(entry.get("rows", -1)):
                raise CacheError(f"Cache shard {path} has a bad '{ROW_INDEX}' for its manifest entry. {hint}")
            rows_np = rows.numpy()
            if len(rows_np) and (rows_np.min() < 0 or rows_np.max() >= n_rows or seen[rows_np].any()):
                raise CacheError(f"Cache shard {path} holds out-of-range or duplicate rows. {hint}")
            if len(np.unique(rows_np)) != len(rows_np):
                raise CacheError(f"Cache shard {path} holds duplicate rows. {hint}")
            seen[rows_np] = True
            offsets = tensors.get(OFFSETS) if tokens else None
            if tokens and (offsets is None or offsets.shape != (len(rows) + 1,)):
                raise CacheError(f"Cache shard {path} lacks valid token offsets. {hint}")
            features: dict[str, torch.Tensor] = {}
            for site in self.manifest["sites"]:
                value = tensors.get(site)
                n_expected = int(offsets[-1]) if offsets is not None else len(rows)
                if (
                    value is None
                    or value.shape != (n_expected, dims.get(site, -1))
                    or str(value.dtype).removeprefix("torch.") != self.manifest["dtype"]
                ):
                    raise CacheError(
                        f"Cache shard {path} has a missing or mis-shaped tensor for {site!r}. {hint}"
                    )
                features[site] = value
            yield rows, features, offsets

    def done_rows(self) -> np.ndarray:
        """Boolean mask over dataset rows already in a listed shard (reads only ``row_index`` tensors)."""
        from safetensors import safe_open

        done = np.zeros(int(self.manifest["n_rows"]), dtype=bool)
        for entry in self.manifest["shards"]:
            path = self.folder / str(entry.get("file"))
            try:
                with safe_open(str(path), framework="pt") as fh:
                    rows = fh.get_tensor(ROW_INDEX).numpy()
            except Exception as exc:  # noqa: BLE001 - any failure to read a shard means the cache is unusable
                hint = _delete_hint(self.folder)
                raise CacheError(f"Cache shard {path} is missing or corrupt ({exc}). {hint}") from exc
            if len(rows) and (rows.min() < 0 or rows.max() >= len(done)):
                raise CacheError(f"Cache shard {path} holds out-of-range rows. {_delete_hint(self.folder)}")
            done[rows] = True
        return done

    # ------------------------------------------------------------------ writing
    def write_shard(self, buffer: ShardBuffer, dims: dict[str, int]) -> None:
        """Write ``buffer`` as the next shard, then list it in the manifest (each step an atomic rename)."""
        from safetensors.torch import save

        if buffer.n_rows == 0:
            return
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        tensors = buffer.tensors()
        data = save(tensors, metadata={"format": FORMAT, "key": str(self.manifest["key"])})
        _atomic_write_bytes(self.folder / name, data)
        self.manifest["dims"] = {**self.manifest["dims"], **{k: int(v) for k, v in dims.items()}}
        self.manifest["shards"].append({"file": name, "rows": buffer.n_rows})
        self.manifest["rows_done"] = int(self.manifest.get("rows_done", 0)) + buffer.n_rows
        self._write_manifest()

    def mark_complete(self) -> None:
        self.manifest["complete"] = True
        self._write_manifest()

    def _write_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2, sort_keys=True, default=str).encode()
        _atomic_write_bytes(self.folder / MANIFEST, data)
