"""Save and load one probe as a single ``.safetensors`` file (tensors + JSON metadata, never pickle).

The header metadata holds ``kind``, ``params`` (JSON of ``get_params()``), ``format_version``,
``probes_version`` and ``sha256``, a digest of the kind, the params and every tensor's name, dtype, shape
and bytes: a file edited by hand or damaged in transit fails to load with :class:`BundleError` instead of
scoring with silently different weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from probes.errors import BundleError
from probes.train.base import Probe, probe_from_state

FORMAT_VERSION = 1


def _digest(kind: str, params_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(b"\0")
    h.update(params_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_probe(probe: Probe, path: str | os.PathLike[str]) -> Path:
    """Write a fitted probe to ``path`` atomically (a temp file in the same folder, then ``os.replace``)."""
    from safetensors.torch import save_file

    from probes._version import __version__

    probe.check_saveable()
    tensors = {k: v.detach().cpu().contiguous() for k, v in probe.state_tensors().items()}
    params_json = json.dumps(probe.get_params(), sort_keys=True)
    metadata = {
        "kind": probe.kind,
        "params": params_json,
        "format_version": str(FORMAT_VERSION),
        "probes_version": __version__,
        "sha256": _digest(probe.kind, params_json, tensors),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_probe_file(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The verified ``(metadata, tensors)`` of a probe file; raises :class:`BundleError` when unusable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"No probe file at {path}; save one with probes.save_probe(probe, path).")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise BundleError(
            f"{path} is not a readable safetensors probe file (corrupted or truncated): {e}"
        ) from e
    missing = [k for k in ("kind", "params", "format_version", "sha256") if k not in metadata]
    if missing:
        raise BundleError(f"{path} lacks probe metadata {missing}; it was not written by probes.save_probe.")
    try:
        version = int(metadata["format_version"])
    except ValueError as e:
        raise BundleError(f"{path}: format_version {metadata['format_version']!r} is not an integer.") from e
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path} uses probe file format {version}, newer than this library's {FORMAT_VERSION}; "
            "upgrade probes to load it."
        )
    if _digest(metadata["kind"], metadata["params"], tensors) != metadata["sha256"]:
        raise BundleError(
            f"{path} does not match its checksum: the file was modified or corrupted after saving. "
            "Re-download it or save the probe again."
        )
    return metadata, tensors


def load_probe(path: str | os.PathLike[str]) -> Probe:
    """Rebuild a probe saved with :func:`save_probe` (no code is executed from the file)."""
    metadata, tensors = read_probe_file(path)
    try:
        params: dict[str, Any] = json.loads(metadata["params"])
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: params metadata is not valid JSON ({e}).") from e
    if not isinstance(params, dict):
        raise BundleError(f"{path}: params metadata must be a JSON object.")
    try:
        return probe_from_state(metadata["kind"], params, tensors)
    except KeyError as e:
        raise BundleError(f"{path}: {e.args[0] if e.args else e}") from e
    except TypeError as e:
        raise BundleError(f"{path}: params do not fit probe kind {metadata['kind']!r} ({e}).") from e
