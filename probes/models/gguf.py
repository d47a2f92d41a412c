"""GGUF model files: checked, dequantised once, and cached as an ordinary Hugging Face folder.

``load_model("model.gguf")`` (or a folder holding one ``.gguf`` file, or a ``package:`` reference that names
one) goes through :func:`converted_folder`:

1. The file's sha256 is looked up in a small record keyed by the file's absolute path, size and mtime, so a
   cached load does not re-hash a 100-250 MB file; a changed size or mtime re-hashes it.
2. If ``<cache>/models/gguf-<sha256>/`` exists, it is the converted model: an ordinary Hugging Face folder
   (``config.json``, ``model.safetensors``, ``tokenizer.json``, the chat template) plus ``probes_gguf.json``
   saying which file it came from. Loading it takes seconds.
3. Otherwise the file's header is parsed here (pure Python, well under a second, no tensor data read) to
   refuse a missing, truncated or foreign file, an architecture transformers cannot convert or a
   quantisation it cannot dequantise -- each with one line naming the file and what is supported. Then
   transformers dequantises it (``from_pretrained(..., gguf_file=..., GgufConfig(dequantize=True))``, needs
   the ``gguf`` and ``accelerate`` packages: ``pip install 'residual-probes[gguf]'``), the result is saved to
   a temporary folder beside the final one and renamed into place. Conversion holds a lock file, so two
   processes converting the same file at once convert it once; the rename makes a half-written folder
   impossible either way.

The cache root is ``$PROBES_CACHE`` if set, else ``$XDG_CACHE_HOME/probes``, else ``~/.cache/probes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from probes.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
MARKER = "probes_gguf.json"
MARKER_SCHEMA = 1

# Architectures (``general.architecture``) whose GGUF transformers converts to a decoder-only causal LM that
# probes can read. transformers' GGUF loader also knows t5/umt5 (encoder-decoder) and mamba (no attention
# blocks): probes reads neither.
_NOT_FOR_PROBES = {"general", "tokenizer", "t5", "umt5", "t5encoder", "mamba"}
# Quantisation types that are storage formats only (llama.cpp uses them for activations), never dequantised.
_FLOAT_TYPES = {"F32", "F16", "BF16"}


def cache_root() -> Path:
    """The probes cache: ``$PROBES_CACHE``, else ``$XDG_CACHE_HOME/probes``, else ``~/.cache/probes``."""
    if os.environ.get("PROBES_CACHE"):
        return Path(os.environ["PROBES_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "probes"


def supported_architectures() -> list[str]:
    """GGUF architectures this installation converts (transformers' GGUF loader, decoder-only)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    archs = set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_FOR_PROBES
    # llama.cpp writes some names with a hyphen or without the underscore transformers uses.
    return sorted(archs | {a.replace("_", "") for a in archs} | {a.replace("_", "-") for a in archs})


def supported_quantizations() -> list[str]:
    """Tensor types the ``gguf`` package dequantises (plus the plain float types)."""
    try:
        import gguf.quants as quants
    except ImportError:
        return sorted(_FLOAT_TYPES)
    traits = getattr(quants, "_type_traits", {})
    return sorted(_FLOAT_TYPES | {t.name for t in traits})


# -- header ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says, read without touching the tensor data."""

    path: Path
    version: int
    architecture: str
    name: str | None
    n_tensors: int
    tensor_types: dict[str, int]  # type name -> number of tensors
    data_end: int  # byte offset where the last tensor's data ends
    size: int
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)  # scalar fields only


# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array, 10 u64, 11 i64,
# 12 f64.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


class _Truncated(Exception):
    pass


class _Reader:
    """Sequential little-endian reads over a file with a clear end-of-file error."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise _Truncated
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > self.size:
            raise _Truncated
        return self.take(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if self.fh.tell() + n > self.size:
            raise _Truncated
        self.fh.seek(n, os.SEEK_CUR)

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:  # skip a numeric array in one seek (token scores, types, ...)
                self.skip(count * struct.calcsize(_SCALARS[etype]))
            else:
                for _ in range(count):  # strings (vocabulary, merges) or nested arrays: walk them
                    self.value(etype, keep=False)
            return None
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's header; refuse a missing, foreign or truncated file (:class:`ModelFileError`)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such GGUF file.")
    size = path.stat().st_size
    with path.open("rb") as fh:
        r = _Reader(fh, size)
        try:
            magic = fh.read(4)
            if magic != GGUF_MAGIC:
                raise ModelFileError(
                    f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF'); give a .gguf model "
                    "file, a folder holding one, or a Hugging Face folder."
                )
            version = r.unpack("<I")
            if version not in (2, 3):
                raise ModelFileError(
                    f"{path}: GGUF version {version} is not supported (versions 2 and 3 are)."
                )
            n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = r.string()
                vtype = r.unpack("<I")
                value = r.value(vtype, keep=True)
                if value is not None:
                    metadata[key] = value
            types: dict[str, int] = {}
            ends: list[int] = []
            for _ in range(n_tensors):
                r.string()  # tensor name
                n_dims = r.unpack("<I")
                n_elements = 1
                for _ in range(n_dims):
                    n_elements *= r.unpack("<Q")
                ttype, offset = r.unpack("<I"), r.unpack("<Q")
                try:
                    name = GGMLQuantizationType(ttype).name
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                except (ValueError, KeyError):
                    name, block, type_size = f"type {ttype}", 1, 0
                types[name] = types.get(name, 0) + 1
                ends.append(offset + n_elements // block * type_size)
            alignment = int(metadata.get("general.alignment", 32))
            data_start = -(-fh.tell() // alignment) * alignment
        except _Truncated:
            raise ModelFileError(
                f"{path}: truncated GGUF file ({size:,} bytes end inside the header); download or copy it again."
            ) from None
    data_end = data_start + max(ends, default=0)
    if data_end > size:
        raise ModelFileError(
            f"{path}: truncated GGUF file ({size:,} bytes, its tensors need {data_end:,}); download or copy "
            "it again."
        )
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(
            f"{path}: the GGUF header has no general.architecture; cannot tell what model it is."
        )
    return GGUFHeader(
        path=path,
        version=version,
        architecture=arch,
        name=metadata.get("general.name"),
        n_tensors=n_tensors,
        tensor_types=types,
        data_end=data_end,
        size=size,
        metadata=metadata,
    )


def check_supported(header: GGUFHeader) -> None:
    """Refuse an architecture or quantisation this installation cannot convert, in one line."""
    if header.architecture not in supported_architectures():
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_FOR_PROBES)
        raise ModelFileError(
            f"{header.path}: GGUF architecture {header.architecture!r} is not supported; supported: "
            f"{', '.join(names)}."
        )
    quants = set(supported_quantizations())
    bad = sorted(t for t in header.tensor_types if t not in quants)
    if bad:
        raise ModelFileError(
            f"{header.path}: GGUF tensor type(s) {', '.join(bad)} cannot be dequantised; supported: "
            f"{', '.join(sorted(quants))}."
        )


# -- hashing -----------------------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _hash_record_path(path: Path, root: Path) -> Path:
    key = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:32]
    return root / "gguf-hashes" / f"{key}.json"


def file_sha256(path: str | Path, *, root: Path | None = None) -> str:
    """sha256 of a file, remembered with its size and mtime so an unchanged file is hashed once."""
    path = Path(path).expanduser().resolve()
    root = cache_root() if root is None else root
    stat = path.stat()
    record = _hash_record_path(path, root)
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(record.read_text(encoding="utf-8"))
        if (
            saved["path"] == str(path)
            and saved["size"] == stat.st_size
            and saved["mtime_ns"] == stat.st_mtime_ns
            and len(saved["sha256"]) == 64
        ):
            return str(saved["sha256"])
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    remember_sha256(path, sha, root=root, stat=stat)
    return sha


def remember_sha256(
    path: Path, sha: str, *, root: Path | None = None, stat: os.stat_result | None = None
) -> None:
    """Record a file's known sha256 (e.g. checked by the package that assembled it) for :func:`file_sha256`."""
    path = Path(path).resolve()
    root = cache_root() if root is None else root
    stat = stat or path.stat()
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        _atomic_write_text(_hash_record_path(path, root), json.dumps(record))


# -- conversion --------------------------------------------------------------------------------------------
def find_gguf(source: str | Path) -> Path | None:
    """The GGUF file ``source`` names: a ``.gguf`` path, or a folder holding exactly one ``.gguf`` file and no
    ``config.json`` (a Hugging Face folder is loaded as such). ``None`` when ``source`` is neither."""
    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelFileError(f"{path}: no such GGUF file.")
        return path.resolve()
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(found) == 1:
            return found[0].resolve()
        if len(found) > 1:
            raise ModelFileError(
                f"{path}: holds {len(found)} GGUF files ({', '.join(p.name for p in found)}); name one of them."
            )
    return None


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == MARKER_SCHEMA else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``); elsewhere the atomic rename alone keeps things whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"probes: {message}", file=sys.stderr, flush=True)


def converted_folder(
    source: str | Path, *, root: Path | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """The Hugging Face folder of a GGUF file, converting it the first time; returns ``(folder, record)``.

    ``record`` is the folder's ``probes_gguf.json``: the GGUF file's name, path and sha256, its architecture
    and tensor types, and the transformers version that converted it.
    """
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such GGUF file.")
    root = cache_root() if root is None else root
    sha = file_sha256(path, root=root)
    folder = root / "models" / f"gguf-{sha}"
    record = _read_marker(folder)
    if record is not None:
        return folder, record
    header = read_header(path)
    check_supported(header)
    with _lock(root / "models" / f".gguf-{sha}.lock"):
        record = _read_marker(folder)  # another process may have converted it while we waited
        if record is not None:
            return folder, record
        if folder.exists():  # no marker: not ours or damaged; a rename cannot have left it half-written
            shutil.rmtree(folder)
        record = _convert(path, sha, header, folder, progress=progress)
    return folder, record


def _convert(path: Path, sha: str, header: GGUFHeader, folder: Path, *, progress: bool) -> dict[str, Any]:
    try:
        import accelerate  # noqa: F401  (transformers needs it to load a GGUF)
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelFileError(
            f"{path}: loading a GGUF model needs the 'gguf' and 'accelerate' packages ({exc}); "
            "pip install 'residual-probes[gguf]' (or: pip install gguf accelerate)."
        ) from exc
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    start = time.perf_counter()
    if progress:
        _say(
            f"converting {path.name} ({header.size / 1e6:.0f} MB, {header.architecture}, "
            f"{'/'.join(sorted(header.tensor_types))}) to a Hugging Face folder, once: {folder}"
        )
        hf_logging.enable_progress_bar()  # transformers' bar over the tensors being dequantised
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        # dequantize=True: a plain dense float32 model (exact activations, serializable), whatever kernels
        # transformers might otherwise keep the packed blocks for.
        kwargs: dict[str, Any] = {}
        try:  # transformers >= 5.2x can keep GGUF blocks packed; ask for the dense model explicitly
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older releases always dequantise (checked below either way)
            pass
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, **kwargs
        )
        packed = sorted(
            {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
            | {str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point}
        )
        if packed or getattr(model, "hf_quantizer", None) is not None:
            raise ModelFileError(
                f"{path}: transformers {transformers.__version__} did not dequantise this file to plain "
                f"float weights (found {packed or 'a quantizer'}); probes needs a dense model."
            )
        if progress:
            _say(f"weights dequantised ({time.perf_counter() - start:.0f}s); converting the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "schema": MARKER_SCHEMA,
            "gguf_file": path.name,
            "gguf_path": str(path),
            "gguf_sha256": sha,
            "architecture": header.architecture,
            "name": header.name,
            "tensor_types": header.tensor_types,
            "transformers": transformers.__version__,
            "dtype": "float32",
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        # save_pretrained writes some files 0600; the cache is shared like any Hugging Face cache.
        os.chmod(tmp, 0o755)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Without flock (Windows) another process may have renamed its copy first: use that one.
            if _read_marker(folder) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        _say(f"converted in {time.perf_counter() - start:.0f}s; later loads read {folder}")
    return record
