"""The bundle folder on disk: atomic writes, and reads that refuse missing, corrupted or tampered files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from probes.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "probes.safetensors"


def write_folder(
    target: Path, tensors: dict[str, torch.Tensor], manifest_for: Callable[[str], dict[str, Any]]
) -> Path:
    """Write ``tensors`` and the manifest ``manifest_for(sha256 of the tensors file)`` into ``target``.

    Atomic: everything goes into a temp folder beside ``target``, which is then renamed into place.
    """
    from safetensors.torch import save_file

    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).exists())
    ):
        raise BundleError(
            f"{target} exists and is not a probe bundle; refusing to overwrite it. Choose another folder."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "probes.bundle"})
        digest = _sha256(tmp / TENSORS)
        (tmp / MANIFEST).write_text(json.dumps(manifest_for(digest), indent=2, default=_json_default) + "\n")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_folder(root: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, tensors)`` of a bundle folder, after checking its format, schema and sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a folder; a probe bundle is a folder written by ProbeBundle.save.")
    if not manifest_path.exists():
        raise BundleError(f"{manifest_path} is missing; re-export the bundle with ProbeBundle.save(...).")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{manifest_path} is not valid JSON ({exc}); the file is corrupted - re-export the bundle."
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "probes.bundle":
        raise BundleError(f"{manifest_path} is not a probes bundle manifest (format != 'probes.bundle').")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path} has schema_version={version!r}; this probes version reads schema "
            f"{SCHEMA_VERSION}. Upgrade probes (pip install -U residual-probes) or re-export the bundle."
        )
    tensors_path = root / str(manifest.get("tensors_file", TENSORS))
    if not tensors_path.exists():
        raise BundleError(f"{tensors_path} is missing; copy the whole bundle folder or re-export it.")
    digest = _sha256(tensors_path)
    if digest != manifest.get("tensors_sha256"):
        raise BundleError(
            f"{tensors_path} does not match the sha256 recorded in {manifest_path} (corrupted or tampered "
            "with). Do not use it: re-download or re-export the bundle."
        )
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(
            f"{tensors_path} cannot be read as safetensors ({exc}); re-export the bundle."
        ) from exc
    return manifest, tensors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and tensors sneak into metadata; store them as plain JSON values.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Bundle metadata value of type {type(value).__name__} is not JSON-serialisable.")
