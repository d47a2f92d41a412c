"""A bundle's integrity record: one digest over the canonical manifest and the tensors, and an optional signature.

The manifest's ``integrity`` section holds

``digest``
    sha256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of ``{"manifest": <every manifest key but
    integrity>, "parts": <parts>}``. The manifest includes ``tensors_sha256``, the sha256 of the tensors file,
    so the one digest covers thresholds, sites, calibration, the model fingerprint, metadata *and* the weights.
``parts``
    A short hash of every part a reader may want named when something changed: each top-level manifest key,
    each field of each probe entry (``probes[sad].thresholds``) and each tensor (``tensor sad/state/coef``).
    They let a refused load say *what* was edited, not only that something was.
``signature``
    ``null``, or ``{"scheme", "key_id", "value"}``: an HMAC-SHA256 or ed25519 signature of the digest
    (:mod:`probes.package.signing`).

A digest without a signature stops corruption and edits by hand or by other tools; someone who edits the
manifest and reruns the digest computation gets past it, which only a signature verified with a key the
editor does not hold prevents.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from probes.errors import BundleError
from probes.package.signing import BundleKey

INTEGRITY = "integrity"
ALGORITHM = "sha256"
_PART_HEX = 16


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of a JSON value (sorted keys, no whitespace, UTF-8, floats as repr)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _short(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()[:_PART_HEX]


def tensor_digest(tensor: torch.Tensor) -> str:
    """Short sha256 of a tensor's dtype, shape and raw bytes."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:_PART_HEX]


def part_digests(manifest: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> dict[str, str]:
    """Short hashes of every nameable part of a manifest (and of each tensor, when ``tensors`` is given)."""
    parts: dict[str, str] = {}
    for key, value in manifest.items():
        if key == INTEGRITY:
            continue
        entries = value if key == "probes" and isinstance(value, list) else None
        if entries is None:
            parts[key] = _short(value)
            continue
        parts["probes"] = _short([e.get("name") if isinstance(e, dict) else None for e in entries])
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                parts[f"probes[{i}]"] = _short(entry)
                continue
            label = entry.get("name", i)
            for field, v in entry.items():
                parts[f"probes[{label}].{field}"] = _short(v)
    for name in sorted(tensors or {}):
        parts[f"tensor {name}"] = tensor_digest(tensors[name])  # type: ignore[index]
    return parts


def compute_digest(manifest: dict[str, Any], parts: dict[str, str]) -> str:
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    return hashlib.sha256(canonical({"manifest": body, "parts": parts})).hexdigest()


def seal(
    manifest: dict[str, Any], tensors: dict[str, torch.Tensor], signing_key: BundleKey | None
) -> dict[str, Any]:
    """``manifest`` with its ``integrity`` section: digest, parts and (with a key) the signature.

    ``manifest`` must already be plain JSON (as read back), so the digest is over exactly what is written.
    """
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    parts = part_digests(body, tensors)
    digest = compute_digest(body, parts)
    signature = signing_key.record(digest) if signing_key is not None else None
    return {
        **body,
        INTEGRITY: {"algorithm": ALGORITHM, "digest": digest, "parts": parts, "signature": signature},
    }


def _changed(recorded: dict[str, str], actual: dict[str, str], tensors: bool) -> list[str]:
    keys = [k for k in {*recorded, *actual} if k.startswith("tensor ") == tensors]
    out = []
    for key in sorted(keys):
        if key not in recorded:
            out.append(f"{key} (added)")
        elif key not in actual:
            out.append(f"{key} (removed)")
        elif recorded[key] != actual[key]:
            out.append(key)
    return out


def record_of(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    """The manifest's integrity section, checked for shape."""
    record = manifest.get(INTEGRITY)
    if (
        not isinstance(record, dict)
        or record.get("algorithm") != ALGORITHM
        or not isinstance(record.get("digest"), str)
        or not isinstance(record.get("parts"), dict)
    ):
        raise BundleError(
            f"{where} has no valid integrity record (digest); the manifest was damaged or written by another "
            "tool. Do not use it: re-download or re-export the bundle."
        )
    return record


def check_manifest(manifest: dict[str, Any], where: str) -> None:
    """Refuse a manifest whose content no longer matches its digest, naming the parts that changed."""
    record = record_of(manifest, where)
    recorded_parts: dict[str, str] = record["parts"]
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    actual = part_digests(body, None)
    changed = _changed(recorded_parts, actual, tensors=False)
    if changed:
        raise BundleError(
            f"{where} was edited after the bundle was saved: {', '.join(changed)} changed (the digest "
            "recorded at save time no longer matches). Do not use it: re-download or re-export the bundle."
        )
    if compute_digest(body, recorded_parts) != record["digest"]:
        raise BundleError(
            f"{where}: the integrity record itself was edited (its digest does not match the manifest and "
            "parts it covers). Do not use it: re-download or re-export the bundle."
        )


def check_tensors(manifest: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> list[str]:
    """The tensors whose bytes differ from the ones sealed in ``manifest`` (empty when all match)."""
    recorded = record_of(manifest, where)["parts"]
    return _changed(recorded, part_digests({}, tensors), tensors=True)


def check_signature(
    manifest: dict[str, Any], verify_key: BundleKey | None, where: str
) -> dict[str, Any] | None:
    """Verify the signature with ``verify_key`` (when one is configured); returns the signature record."""
    record = record_of(manifest, where)
    signature = record.get("signature")
    if verify_key is None:
        return signature if isinstance(signature, dict) else None
    if not isinstance(signature, dict):
        raise BundleError(
            f"{where} is not signed, but bundle verification is configured ({verify_key.scheme} key "
            f"{verify_key.key_id}). Only load bundles signed by your key: re-export it with the signing key "
            "set (see probes.package.signing), or unset the verification key to accept unsigned bundles."
        )
    scheme, key_id = signature.get("scheme"), signature.get("key_id")
    if scheme != verify_key.scheme or key_id != verify_key.key_id:
        raise BundleError(
            f"{where} is signed with {scheme} key {key_id}, not with the configured {verify_key.scheme} key "
            f"{verify_key.key_id}. Do not use it unless you trust that key; re-sign it with yours."
        )
    if not verify_key.verify(record["digest"], str(signature.get("value", ""))):
        raise BundleError(
            f"{where}: the {scheme} signature does not verify with key {key_id} - the bundle was edited "
            "or re-signed. Do not use it: re-download or re-export the bundle."
        )
    return signature
