"""The bundle folder on disk: atomic writes, and reads that refuse missing, corrupted or edited files.

Every file is checked before it is trusted: the manifest and the tensors file must be plain files inside the
bundle folder (no path in ``tensors_file``, no links, no devices), the manifest must match its digest, the
tensors file its sha256, and - when a verification key is configured - the digest its signature
(:mod:`probes.package.integrity`, :mod:`probes.package.signing`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from probes.errors import BundleError
from probes.package import integrity
from probes.package.signing import BundleKey

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
TENSORS = "probes.safetensors"
# A bundle is read by serving accounts other than the one that trained it.
DIR_MODE, FILE_MODE = 0o755, 0o644
# The manifest is JSON of a few probes; anything far larger is not a manifest (and must not fill memory).
MAX_MANIFEST_BYTES = 64 << 20
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def write_folder(
    target: Path,
    tensors: dict[str, torch.Tensor],
    manifest_for: Callable[[str], dict[str, Any]],
    signing_key: BundleKey | None = None,
) -> Path:
    """Write ``tensors`` and the sealed manifest ``manifest_for(sha256 of the tensors file)`` into ``target``.

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
        # Round-trip through JSON first: the digest must cover exactly the values a reader will see.
        manifest = json.loads(json.dumps(manifest_for(digest), default=_json_default))
        sealed = integrity.seal(manifest, tensors, signing_key)
        (tmp / MANIFEST).write_text(json.dumps(sealed, indent=2) + "\n", encoding="utf-8")
        for name in (TENSORS, MANIFEST):
            os.chmod(tmp / name, FILE_MODE)
        os.chmod(tmp, DIR_MODE)  # mkdtemp makes 0700
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


def _plain_file(path: Path, what: str) -> None:
    """Refuse anything but a regular file (a link, a device such as /dev/zero, a fifo would be followed)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise BundleError(f"{path} is missing; copy the whole bundle folder or re-export it.") from None
    if stat.S_ISLNK(info.st_mode):
        raise BundleError(
            f"{path} is a symbolic link; a bundle's {what} must be a plain file inside the bundle folder. "
            "Copy the real file in (cp -L) or re-export the bundle."
        )
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path} is not a regular file; a bundle's {what} must be a plain file.")


def _tensors_path(root: Path, manifest: dict[str, Any], manifest_path: Path) -> Path:
    name = manifest.get("tensors_file", TENSORS)
    if (
        not isinstance(name, str)
        or not _PLAIN_NAME.match(name)
        or name in {".", ".."}
        or not name.endswith(".safetensors")
    ):
        raise BundleError(
            f"{manifest_path}: tensors_file={name!r} is not a plain file name inside the bundle (no folders, "
            f"'..' or absolute paths; it ends in .safetensors, e.g. {TENSORS!r}). The manifest was edited: "
            "do not use it."
        )
    return root / name


def read_folder(
    root: Path, verify_key: BundleKey | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, tensors)`` of a bundle folder, after checking files, schema, digest, sha256 and signature."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a folder; a probe bundle is a folder written by ProbeBundle.save.")
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise BundleError(f"{manifest_path} is missing; re-export the bundle with ProbeBundle.save(...).")
    _plain_file(manifest_path, "manifest")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is over {MAX_MANIFEST_BYTES >> 20} MiB: not a bundle manifest.")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{manifest_path} is not valid JSON ({exc}); the file is corrupted - re-export the bundle."
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "probes.bundle":
        raise BundleError(f"{manifest_path} is not a probes bundle manifest (format != 'probes.bundle').")
    version = manifest.get("schema_version")
    if version == 1:
        # Schema 1 had no digest (an edited threshold loaded silently) and fingerprinted block 0 only: such a
        # bundle cannot be told apart from an edited one, so it is refused rather than trusted.
        raise BundleError(
            f"{manifest_path} has schema_version=1: it was written before bundles carried an integrity digest "
            "and a whole-model fingerprint, so edits to it cannot be detected. Re-export it with this "
            "version (rerun `probes train CONFIG`, or ProbeBundle.save on the retrained probe)."
        )
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path} has schema_version={version!r}; this probes version reads schema "
            f"{SCHEMA_VERSION}. Upgrade probes (pip install -U residual-probes) or re-export the bundle."
        )
    integrity.check_manifest(manifest, str(manifest_path))
    integrity.check_signature(manifest, verify_key, str(manifest_path))
    tensors_path = _tensors_path(root, manifest, manifest_path)
    _plain_file(tensors_path, "tensors file")
    digest = _sha256(tensors_path)
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        if digest != manifest.get("tensors_sha256"):
            raise BundleError(
                f"{tensors_path} does not match the sha256 recorded in {manifest_path} and cannot be read as "
                f"safetensors ({exc}): it is corrupted. Do not use it: re-download or re-export the bundle."
            ) from exc
        raise BundleError(
            f"{tensors_path} cannot be read as safetensors ({exc}); re-export the bundle."
        ) from exc
    if digest != manifest.get("tensors_sha256"):
        changed = integrity.check_tensors(manifest, tensors, str(manifest_path))
        what = f"tensors changed: {', '.join(changed)}" if changed else "its bytes changed"
        raise BundleError(
            f"{tensors_path} does not match the sha256 recorded in {manifest_path} ({what}; corrupted or "
            "tampered with). Do not use it: re-download or re-export the bundle."
        )
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
