"""The on-disk activation cache: a manifest plus checksummed safetensors shards, written with atomic renames.

Layout of one cache entry (``cache_dir/<key>/``)::

    manifest.json            what this entry holds (spec, sites, poolings, dims) and its shards with sha256
    verified.json            shards whose sha256 was checked, with the size and mtime they had then
    shard-00000.safetensors  a block of finished rows: ``row_index`` (k,) int64 dataset positions, and per
    shard-00001.safetensors  (site, pooling) ``"<site>/<pooling>"`` (k, d) pooled features, or (t, d) token
    ...                      features for ``tokens`` with one shared ``offsets`` (k + 1,) int64
    data.safetensors         after completion: every row in dataset order (the shards are compacted into it)

Every file is written to a temporary name in the same folder, fsynced and moved into place with
``os.replace``, so a reader never sees half a file. A shard counts only once the manifest lists it: a crash
between writing a shard and updating the manifest leaves an orphan that is never read (and is deleted when
the entry completes). Rows of a shard are in
the order they were computed (length-sorted); ``row_index`` maps them back. When the last row is in,
:meth:`ActivationCache.mark_complete` compacts the shards into one dataset-order file, which
:meth:`ActivationCache.load_mapped` memory-maps: a result larger than RAM is usable as ordinary tensors.

Integrity: the manifest records each shard's sha256 (format 2). A shard is hashed the first time it is read
and the result recorded in ``verified.json`` with the file's size and mtime; later reads of an unchanged file
skip the hash (the fast path), and any change on disk (a flipped byte rewrites the mtime) is hashed again
and refused with :class:`~probes.errors.CacheError` naming the shard and the fix. Format-1 entries (no
checksums) are refused; new collections never look for them, because the cache key changed with the format.

Writers: one process owns the manifest (:meth:`ActivationCache.add_shard`); shard files may come from any
process (:func:`write_shard_file` with a unique name from :func:`new_shard_name`), e.g. Ray workers; the
owner lists such a shard with :meth:`ActivationCache.adopt_shard`, which checks its hash and rows first.
There is no lock: run one collection per entry at a time. Concurrent runs duplicate work and may leave an
entry that fails validation; that raises :class:`~probes.errors.CacheError` (delete the folder, rerun) and
never returns wrong rows silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.errors import CacheError

FORMAT = "probes-activation-cache/2"
OLD_FORMATS = ("probes-activation-cache/1",)
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
DATA_FILE = "data.safetensors"
# Compaction dirties at most this many bytes of the data file's pages before dropping them from RSS.
COMPACT_CHUNK_BYTES = 4 * 2**20
OFFSETS = "offsets"
ROW_INDEX = "row_index"

_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "int64": "I64"}
_NP_VIEW = {"F32": np.float32, "BF16": np.int16, "F16": np.float16, "I64": np.int64}
_TORCH_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}


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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _is_token_key(key: str) -> bool:
    return key.endswith("/tokens")


class ShardBuffer:
    """Finished rows waiting to be written as one shard.

    ``keys`` name the feature tensors (``"<site>/<pooling>"``); ``token_keys`` are those holding one row per
    target token (``tokens`` pooling), which share one ``offsets`` tensor built from the rows' ``lengths``.
    """

    def __init__(self, keys: Sequence[str], token_keys: Collection[str] = ()) -> None:
        self.keys = list(keys)
        self.token_keys = set(token_keys)
        unknown = self.token_keys - set(self.keys)
        if unknown:
            raise ValueError(f"ShardBuffer: token_keys {sorted(unknown)} are not among keys.")
        self.rows: list[torch.Tensor] = []
        self.features: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        self.lengths: list[torch.Tensor] = []
        self.n_rows = 0
        self.n_bytes = 0
        self.started: float | None = None

    @classmethod
    def for_keys(cls, keys: Sequence[str]) -> ShardBuffer:
        """A buffer for ``keys``, the ``tokens`` ones among them holding one row per target token."""
        return cls(keys, [k for k in keys if _is_token_key(k)])

    @property
    def age_s(self) -> float:
        """Seconds since the first row was added (0 when empty): the time-based flush reads this."""
        return 0.0 if self.started is None else time.monotonic() - self.started

    def add(
        self, rows: torch.Tensor, features: dict[str, torch.Tensor], lengths: torch.Tensor | None
    ) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.rows.append(rows)
        for key in self.keys:
            value = features[key]
            self.features[key].append(value)
            self.n_bytes += value.numel() * value.element_size()
        if self.token_keys:
            if lengths is None:
                raise ValueError("ShardBuffer.add: token features need the rows' lengths.")
            self.lengths.append(lengths)
        self.n_rows += len(rows)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {ROW_INDEX: torch.cat(self.rows).to(torch.int64)}
        for key in self.keys:
            out[key] = torch.cat(self.features[key]).contiguous()
        if self.token_keys:
            lengths = torch.cat(self.lengths).to(torch.int64)
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)
            out[OFFSETS] = offsets
        return out


def new_shard_name() -> str:
    """A shard file name unique across processes (for writers that do not own the manifest)."""
    return f"shard-{uuid.uuid4().hex[:16]}.safetensors"


def write_shard_file(folder: str | Path, buffer: ShardBuffer, *, key: str, name: str) -> dict[str, Any]:
    """Write ``buffer`` as ``folder/name`` (atomic, fsynced); return its manifest record.

    The record ``{"file", "rows", "bytes", "sha256"}`` is JSON and is what :meth:`ActivationCache.add_shard`
    takes. Safe to call from any process; it never reads or writes the manifest.
    """
    from safetensors.torch import save

    if "/" in name or name.startswith(".") or not name.endswith(".safetensors") or name == DATA_FILE:
        raise ValueError(f"write_shard_file: bad shard name {name!r}; use new_shard_name().")
    folder = Path(folder)
    data = save(buffer.tensors(), metadata={"format": FORMAT, "key": key})
    _atomic_write_bytes(folder / name, data)
    return {
        "file": name,
        "rows": buffer.n_rows,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size < 100 * 2**20:
            raise ValueError(f"bad safetensors header length {size}")
        header = json.loads(fh.read(size))
    return header, 8 + size


class ActivationCache:
    """One cache entry ``cache_dir/<key>/``: validates an existing manifest, lists done rows, appends shards."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self._verified: dict[str, Any] | None = None

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
        poolings: Sequence[str],
        dtype: str,
    ) -> ActivationCache:
        """Open (or start) the entry for ``key``; raise :class:`CacheError` if it holds something else."""
        folder = Path(cache_dir).expanduser() / key
        path = folder / MANIFEST
        expected = {
            "format": FORMAT,
            "key": key,
            "n_rows": n_rows,
            "sites": list(sites),
            "poolings": list(poolings),
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
            if manifest.get("format") in OLD_FORMATS:
                raise CacheError(
                    f"The cache at {folder} was written by an older probes (format {manifest.get('format')!r}, "
                    f"without shard checksums), which this version does not read. {_delete_hint(folder)}"
                )
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
            for entry in manifest["shards"]:
                name = entry.get("file") if isinstance(entry, dict) else None
                if (
                    not isinstance(name, str)
                    or "/" in name
                    or name.startswith(".")
                    or not isinstance(entry.get("sha256"), str)
                ):
                    raise CacheError(
                        f"The cache manifest {path} has a malformed shard entry {entry!r}. "
                        f"{_delete_hint(folder)}"
                    )
            return cls(folder, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {**expected, "spec": spec, "dims": {}, "shards": [], "rows_done": 0, "complete": False}
        cache = cls(folder, manifest)
        cache._write_manifest()
        return cache

    # ------------------------------------------------------------------ integrity
    @property
    def keys(self) -> list[str]:
        return [f"{s}/{p}" for s in self.manifest["sites"] for p in self.manifest["poolings"]]

    @property
    def has_tokens(self) -> bool:
        return "tokens" in self.manifest["poolings"]

    def _verified_records(self) -> dict[str, Any]:
        if self._verified is None:
            try:
                data = json.loads((self.folder / VERIFIED).read_text())
                self._verified = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._verified = {}
        return self._verified

    def _record_verified(self, name: str, sha: str, path: Path) -> None:
        st = path.stat()
        records = self._verified_records()
        records[name] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        # A read-only cache: the check simply runs again next time.
        with contextlib.suppress(OSError):
            _atomic_write_bytes(self.folder / VERIFIED, json.dumps(records, sort_keys=True).encode())

    def verify_shard(self, entry: dict[str, Any]) -> Path:
        """The shard's path once its bytes match the manifest's sha256 (hashed once per change on disk)."""
        path = self.folder / str(entry["file"])
        hint = _delete_hint(self.folder)
        try:
            st = path.stat()
        except OSError:
            raise CacheError(f"Cache shard {path} listed in the manifest is missing. {hint}") from None
        seen = self._verified_records().get(str(entry["file"]))
        if (
            isinstance(seen, dict)
            and seen.get("sha256") == entry["sha256"]
            and seen.get("size") == st.st_size
            and seen.get("mtime_ns") == st.st_mtime_ns
        ):
            return path
        if "bytes" in entry and int(entry["bytes"]) != st.st_size:
            raise CacheError(
                f"Cache shard {path} is {st.st_size} bytes, but the manifest recorded {entry['bytes']}: "
                f"it was truncated or changed after it was written. {hint}"
            )
        sha = _sha256_file(path)
        if sha != entry["sha256"]:
            raise CacheError(
                f"Cache shard {path} fails its sha256 check (manifest {entry['sha256'][:16]}..., file "
                f"{sha[:16]}...): its bytes changed after it was written (disk error or an edit), so its "
                f"activations cannot be trusted. {hint}"
            )
        self._record_verified(str(entry["file"]), sha, path)
        return path

    # ------------------------------------------------------------------ reading
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.manifest["dims"].items()}

    def iter_shards(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]]:
        """Yield ``(row_index, {key: features}, offsets or None)`` per shard, checked against the manifest."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        n_rows = int(self.manifest["n_rows"])
        tokens = self.has_tokens
        seen = np.zeros(n_rows, dtype=bool)
        dims = self.dims
        for entry in self.manifest["shards"]:
            path = self.verify_shard(entry)
            hint = _delete_hint(self.folder)
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
            for key in self.keys:
                value = tensors.get(key)
                n_expected = int(offsets[-1]) if offsets is not None and _is_token_key(key) else len(rows)
                if (
                    value is None
                    or value.shape != (n_expected, dims.get(key, -1))
                    or str(value.dtype).removeprefix("torch.") != self.manifest["dtype"]
                ):
                    raise CacheError(
                        f"Cache shard {path} has a missing or mis-shaped tensor for {key!r}. {hint}"
                    )
                features[key] = value
            yield rows, features, offsets

    def done_rows(self) -> np.ndarray:
        """Boolean mask over dataset rows already in a listed, checksum-verified shard."""
        from safetensors import safe_open

        done = np.zeros(int(self.manifest["n_rows"]), dtype=bool)
        for entry in self.manifest["shards"]:
            path = self.verify_shard(entry)
            try:
                with safe_open(str(path), framework="pt") as fh:
                    rows = fh.get_tensor(ROW_INDEX).numpy()
            except Exception as exc:  # noqa: BLE001 - any failure to read a shard means the cache is unusable
                hint = _delete_hint(self.folder)
                raise CacheError(f"Cache shard {path} is missing or corrupt ({exc}). {hint}") from exc
            if len(rows) and (rows.min() < 0 or rows.max() >= len(done) or done[rows].any()):
                raise CacheError(
                    f"Cache shard {path} holds out-of-range or duplicate rows. {_delete_hint(self.folder)}"
                )
            done[rows] = True
        return done

    def load_mapped(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``({key: tensor}, offsets or None)`` of a complete entry, memory-mapped from its data file.

        The tensors are read-only views of the file (copy-on-write: writing to one changes only this
        process's copy, never the cache); pages load on first touch, so RAM holds what is read.
        """
        hint = _delete_hint(self.folder)
        shards = self.manifest["shards"]
        if not self.complete or len(shards) != 1 or shards[0].get("file") != DATA_FILE:
            raise CacheError(f"The cache at {self.folder} is not a complete, compacted entry. {hint}")
        path = self.verify_shard(shards[0])
        try:
            header, start = _read_header(path)
            mapped = np.memmap(path, dtype=np.uint8, mode="c")
            out: dict[str, torch.Tensor] = {}
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                lo, hi = (int(v) for v in info["data_offsets"])
                view = mapped[start + lo : start + hi].view(_NP_VIEW[info["dtype"]]).reshape(info["shape"])
                out[name] = torch.from_numpy(view).view(_TORCH_DTYPES[info["dtype"]])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"Cache data file {path} is corrupt ({exc}). {hint}") from exc
        n_rows = int(self.manifest["n_rows"])
        rows = out.get(ROW_INDEX)
        if rows is None or not torch.equal(rows, torch.arange(n_rows)):
            raise CacheError(f"Cache data file {path} is not in dataset order. {hint}")
        offsets = out.get(OFFSETS) if self.has_tokens else None
        if self.has_tokens and (offsets is None or offsets.shape != (n_rows + 1,)):
            raise CacheError(f"Cache data file {path} lacks valid token offsets. {hint}")
        dims = self.dims
        features: dict[str, torch.Tensor] = {}
        for key in self.keys:
            value = out.get(key)
            n_expected = int(offsets[-1]) if offsets is not None and _is_token_key(key) else n_rows
            if value is None or value.shape != (n_expected, dims.get(key, -1)):
                raise CacheError(f"Cache data file {path} has a missing or mis-shaped {key!r}. {hint}")
            features[key] = value
        return features, offsets

    # ------------------------------------------------------------------ writing
    def add_shard(self, record: dict[str, Any], dims: dict[str, int]) -> None:
        """List a shard written by :func:`write_shard_file` (by this or another process) in the manifest."""
        if not isinstance(record.get("sha256"), str) or not isinstance(record.get("file"), str):
            raise ValueError(f"add_shard: {record!r} is not a record from write_shard_file.")
        if any(e["file"] == record["file"] for e in self.manifest["shards"]):
            raise CacheError(f"Cache shard {record['file']} is already listed in {self.folder / MANIFEST}.")
        self.manifest["dims"] = {**self.manifest["dims"], **{k: int(v) for k, v in dims.items()}}
        self.manifest["shards"].append(dict(record))
        self.manifest["rows_done"] = int(self.manifest.get("rows_done", 0)) + int(record["rows"])
        self._write_manifest()
        path = self.folder / record["file"]
        if path.is_file() and path.stat().st_size == int(record.get("bytes", -1)):
            # Hashed when it was written: record it, so the first read takes the fast path.
            self._record_verified(record["file"], record["sha256"], path)

    def adopt_shard(self, record: dict[str, Any], dims: dict[str, int], rows: np.ndarray) -> None:
        """List a shard another process wrote into this folder (:func:`write_shard_file`), once it is checked.

        The file must hash to the record's sha256 (streamed: memory stays flat) and hold exactly ``rows``, the
        dataset positions the writer was given; otherwise it is deleted and :class:`CacheError` says why. The
        entry then holds each row once, whatever the writer did.
        """
        from safetensors import safe_open

        name = str(record.get("file", ""))
        if "/" in name or not name.startswith("shard-") or not name.endswith(".safetensors"):
            raise CacheError(f"adopt_shard: {name!r} is not a shard name from new_shard_name().")
        path = self.folder / name
        problem = None
        if not path.is_file():
            problem = "is missing: the writer does not see this folder (is it on a shared file system?)"
        elif (size := path.stat().st_size) != int(record.get("bytes", -1)):
            problem = f"is {size} bytes, but its writer reported {record.get('bytes')}"
        elif _sha256_file(path) != record.get("sha256"):
            problem = "does not hash to the sha256 its writer reported"
        else:
            try:
                with safe_open(str(path), framework="pt") as fh:
                    got = fh.get_tensor(ROW_INDEX).numpy()
            except Exception as exc:  # noqa: BLE001 - an unreadable shard is refused like a wrong one
                problem = f"cannot be read ({exc})"
            else:
                if not np.array_equal(np.sort(got), np.sort(np.asarray(rows, dtype=np.int64))):
                    problem = f"holds other rows than the {len(rows)} its writer was given"
        if problem is not None:
            path.unlink(missing_ok=True)
            raise CacheError(f"Cache shard {path} {problem}; it was not listed in {self.folder / MANIFEST}.")
        self.add_shard(record, dims)

    def write_shard(self, buffer: ShardBuffer, dims: dict[str, int]) -> dict[str, Any] | None:
        """Write ``buffer`` as the next shard, then list it in the manifest (each step an atomic rename)."""
        if buffer.n_rows == 0:
            return None
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        if (self.folder / name).exists() and any(e["file"] == name for e in self.manifest["shards"]):
            name = new_shard_name()
        record = write_shard_file(self.folder, buffer, key=str(self.manifest["key"]), name=name)
        self.add_shard(record, dims)
        return record

    def mark_complete(self) -> None:
        """Compact the shards into one dataset-order data file, list only it, and mark the entry complete."""
        if not self.complete:
            if not self.done_rows().all():
                raise CacheError(f"The cache at {self.folder} lacks rows; it cannot be marked complete.")
            old = [e["file"] for e in self.manifest["shards"]]
            if old != [DATA_FILE]:
                record = self._compact()
                self.manifest["shards"] = [record]
            self.manifest["complete"] = True
            self._write_manifest()
            for name in old:
                if name != DATA_FILE:
                    (self.folder / name).unlink(missing_ok=True)
                    self._verified_records().pop(name, None)
            self._remove_unlisted()

    def _remove_unlisted(self) -> None:
        """Delete shard files and temporaries no manifest lists: orphans of a writer killed between writing a
        shard and its listing (a Ray worker restarted mid-block), which a complete entry never reads."""
        listed = {str(e["file"]) for e in self.manifest["shards"]}
        stale = [*self.folder.glob("shard-*.safetensors"), *self.folder.glob(".shard-*.tmp")]
        for path in [*stale, *self.folder.glob(".probe-*")]:
            if path.name not in listed:
                path.unlink(missing_ok=True)

    def _compact(self) -> dict[str, Any]:
        """Stream every shard into ``data.safetensors`` in dataset order (RAM: one shard at a time)."""
        n_rows = int(self.manifest["n_rows"])
        dtype = self.manifest["dtype"]
        st_dtype = _ST_DTYPES[dtype]
        itemsize = torch.empty(0, dtype=_TORCH_DTYPES[st_dtype]).element_size()
        dims = self.dims
        lengths = np.zeros(n_rows, dtype=np.int64)
        if self.has_tokens:
            from safetensors import safe_open

            for entry in self.manifest["shards"]:
                with safe_open(str(self.verify_shard(entry)), framework="pt") as fh:
                    rows = fh.get_tensor(ROW_INDEX).numpy()
                    lengths[rows] = np.diff(fh.get_tensor(OFFSETS).numpy())
        offsets = np.zeros(n_rows + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        total_tokens = int(offsets[-1])
        # int64 tensors first: every tensor then starts aligned to its element size.
        layout: list[tuple[str, str, list[int]]] = [(ROW_INDEX, "I64", [n_rows])]
        if self.has_tokens:
            layout.append((OFFSETS, "I64", [n_rows + 1]))
        for key in self.keys:
            layout.append((key, st_dtype, [total_tokens if _is_token_key(key) else n_rows, dims[key]]))
        header: dict[str, Any] = {"__metadata__": {"format": FORMAT, "key": str(self.manifest["key"])}}
        at = 0
        for name, st, shape in layout:
            size = int(np.prod(shape)) * (8 if st == "I64" else itemsize)
            header[name] = {"dtype": st, "shape": shape, "data_offsets": [at, at + size]}
            at += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        start = 8 + len(blob)
        path = self.folder / DATA_FILE
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{DATA_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(len(blob).to_bytes(8, "little") + blob)
                fh.truncate(start + at)
            with open(tmp, "rb+") as fh:
                view = mmap.mmap(fh.fileno(), start + at)
            mapped = np.frombuffer(view, dtype=np.uint8)

            def region(name: str, row_bytes: int, mapped: np.ndarray = mapped) -> np.ndarray:
                lo, hi = header[name]["data_offsets"]
                return mapped[start + lo : start + hi].reshape(-1, row_bytes)

            def drop() -> None:
                # Linux: unmapping written pages of a shared file mapping keeps their data in the page
                # cache (dirty, written back later; the fsync below makes it durable), so no flush is needed.
                if sys.platform.startswith("linux") and hasattr(mmap, "MADV_DONTNEED"):
                    view.madvise(mmap.MADV_DONTNEED)

            def release() -> None:
                # Written pages go to the file, then out of this process's resident set (the page cache
                # keeps them): compacting a large entry does not grow RSS with its size.
                view.flush()
                if hasattr(mmap, "MADV_DONTNEED"):
                    view.madvise(mmap.MADV_DONTNEED)

            region(ROW_INDEX, 8)[:] = np.arange(n_rows, dtype=np.int64).view(np.uint8).reshape(-1, 8)
            if self.has_tokens:
                region(OFFSETS, 8)[:] = offsets.view(np.uint8).reshape(-1, 8)
            release()
            for rows, feats, shard_offsets in self.iter_shards():
                rows_np = rows.numpy()
                n_tok = np.diff(shard_offsets.numpy()) if shard_offsets is not None else None
                if self.has_tokens and n_tok is None:
                    raise CacheError(f"Cache shard of {self.folder} lacks token offsets.")
                first_tok = np.concatenate([[0], np.cumsum(n_tok)]) if n_tok is not None else None
                values = {k: feats[k].contiguous().view(torch.uint8).numpy() for k in self.keys}
                row_bytes = {k: dims[k] * itemsize for k in self.keys}
                # A shard's rows land all over the data file (they are length-sorted, the file is in dataset
                # order): written in chunks of rows that dirty at most COMPACT_CHUNK_BYTES of pages, each
                # dropped from the resident set before the next, RSS stays flat however large the entry.
                cost = np.zeros(len(rows_np), dtype=np.int64)
                for key in self.keys:
                    per_row = n_tok if _is_token_key(key) and n_tok is not None else 1
                    cost += per_row * row_bytes[key] + mmap.PAGESIZE
                cut = np.searchsorted(
                    np.cumsum(cost),
                    np.arange(1, 1 + int(cost.sum()) // COMPACT_CHUNK_BYTES) * COMPACT_CHUNK_BYTES,
                )
                bounds = np.unique(np.concatenate([[0], cut, [len(rows_np)]]))
                for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                    for key in self.keys:
                        dest = region(key, row_bytes[key])
                        if _is_token_key(key):  # has_tokens: n_tok and first_tok are set (checked above)
                            assert n_tok is not None and first_tok is not None
                            lo, hi = int(first_tok[a]), int(first_tok[b])
                            start_in_file = offsets[rows_np[a:b]] - first_tok[a:b]
                            index = np.repeat(start_in_file, n_tok[a:b]) + np.arange(lo, hi, dtype=np.int64)
                            dest[index] = values[key][lo:hi].reshape(hi - lo, -1)
                        else:
                            dest[rows_np[a:b]] = values[key][a:b].reshape(b - a, -1)
                        del dest
                    if b < len(rows_np):
                        drop()
                # The shard's tensors go before the next one loads; `values` hold exports of its map.
                del feats, values, rows, rows_np
                release()
            del mapped, region  # the buffer's exports, so the map can close
            view.close()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            sha = _sha256_file(Path(tmp))
            size = Path(tmp).stat().st_size
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._record_verified(DATA_FILE, sha, path)
        return {"file": DATA_FILE, "rows": n_rows, "bytes": size, "sha256": sha}

    def _write_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2, sort_keys=True, default=str).encode()
        _atomic_write_bytes(self.folder / MANIFEST, data)
