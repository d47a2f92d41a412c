"""Signing keys for probe bundles: an HMAC secret (standard library) or an ed25519 key pair (``cryptography``).

A bundle's digest (:mod:`probes.package.integrity`) catches corruption and any edit made without rerunning
``probes``; it cannot stop someone who edits the manifest *and* recomputes the digest. A signature can: only a
holder of the key can produce it. Configure keys once, in the environment, and every save signs and every
load verifies (the CLI and the pipeline included); or pass ``signing_key=`` / ``verify_key=`` explicitly:

``PROBES_BUNDLE_HMAC_KEY``
    A shared secret (the variable's text). Signs every save and is required (and checked) on every load.
``PROBES_BUNDLE_SIGNING_KEY``
    Path to an ed25519 private key (PEM, PKCS#8). Signs every save; loads are verified with its public half.
``PROBES_BUNDLE_PUBLIC_KEY``
    Path to an ed25519 public key (PEM). Every load must carry a valid signature by its private half — the
    setting for a serving machine that should never hold the private key.

Make an ed25519 pair with ``openssl genpkey -algorithm ed25519 -out bundle-key.pem`` and
``openssl pkey -in bundle-key.pem -pubout -out bundle-key.pub.pem``, or :meth:`Ed25519Key.generate`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from probes.errors import BundleError

ENV_HMAC = "PROBES_BUNDLE_HMAC_KEY"
ENV_SIGNING_KEY = "PROBES_BUNDLE_SIGNING_KEY"
ENV_PUBLIC_KEY = "PROBES_BUNDLE_PUBLIC_KEY"

# Domain separation: a signature over a bundle digest is never valid for anything else signed by the key.
_CONTEXT = b"probes.bundle.v2\x00"


class BundleKey:
    """Base class of the keys a bundle can be signed or verified with."""

    scheme: str = ""

    @property
    def key_id(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def can_sign(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def sign(self, digest: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def verify(self, digest: str, signature: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def record(self, digest: str) -> dict[str, str]:
        """The manifest's ``signature`` record for ``digest``."""
        return {"scheme": self.scheme, "key_id": self.key_id, "value": self.sign(digest)}


class HmacKey(BundleKey):
    """HMAC-SHA256 with a shared secret: whoever can verify can also sign (keep the secret on trusted hosts)."""

    scheme = "hmac-sha256"

    def __init__(self, secret: bytes | str) -> None:
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(raw) < 16:
            raise ValueError(
                f"an HMAC bundle key needs at least 16 bytes of secret (got {len(raw)}); use e.g. "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`."
            )
        self._secret = raw

    @property
    def key_id(self) -> str:
        # Names the key in error messages without revealing it (an HMAC of a constant, not the secret's hash).
        return hmac.new(self._secret, b"probes key id", hashlib.sha256).hexdigest()[:16]

    @property
    def can_sign(self) -> bool:
        return True

    def sign(self, digest: str) -> str:
        return hmac.new(self._secret, _CONTEXT + digest.encode("ascii"), hashlib.sha256).hexdigest()

    def verify(self, digest: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(digest), str(signature))

    def __repr__(self) -> str:
        return f"HmacKey(key_id={self.key_id!r})"


class Ed25519Key(BundleKey):
    """An ed25519 private key (signs and verifies) or public key (verifies only), via ``cryptography``."""

    scheme = "ed25519"

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

        if isinstance(key, Ed25519PrivateKey):
            self._private: Any = key
            self._public = key.public_key()
        elif isinstance(key, Ed25519PublicKey):
            self._private, self._public = None, key
        else:
            raise TypeError(f"expected an ed25519 private or public key, got {type(key).__name__}.")

    @classmethod
    def generate(cls) -> Ed25519Key:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, path: str | os.PathLike[str]) -> Ed25519Key:
        """Read a PEM file holding an ed25519 private key (PKCS#8, unencrypted) or public key."""
        from cryptography.hazmat.primitives import serialization

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read the bundle key {path}: {exc}") from exc
        try:
            if b"PRIVATE KEY" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_pem_public_key(data)
            return cls(key)
        except (ValueError, TypeError) as exc:
            raise BundleError(
                f"{path} is not an unencrypted ed25519 PEM key ({exc}); make one with "
                "`openssl genpkey -algorithm ed25519 -out key.pem` (public half: "
                "`openssl pkey -in key.pem -pubout -out key.pub.pem`)."
            ) from exc

    def public(self) -> Ed25519Key:
        """The verify-only half (what a serving machine holds)."""
        return Ed25519Key(self._public)

    def write_pem(self, path: str | os.PathLike[str], *, private: bool = True) -> Path:
        """Write the private key (mode 0600) or, with ``private=False``, the public key (0644) as PEM."""
        from cryptography.hazmat.primitives import serialization

        path = Path(path)
        if private:
            if self._private is None:
                raise ValueError("this is a public key; it has no private half to write.")
            data = self._private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            mode = 0o600
        else:
            data = self._public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            mode = 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, mode)
        return path

    @property
    def key_id(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self._public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    def sign(self, digest: str) -> str:
        if self._private is None:
            raise BundleError(
                "an ed25519 public key cannot sign; give the private key (PROBES_BUNDLE_SIGNING_KEY)."
            )
        return self._private.sign(_CONTEXT + digest.encode("ascii")).hex()

    def verify(self, digest: str, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(bytes.fromhex(str(signature)), _CONTEXT + digest.encode("ascii"))
        except (InvalidSignature, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"Ed25519Key(key_id={self.key_id!r}, private={self.can_sign})"


def _configured() -> list[tuple[str, BundleKey]]:
    found: list[tuple[str, BundleKey]] = []
    secret = os.environ.get(ENV_HMAC)
    if secret:
        try:
            found.append((ENV_HMAC, HmacKey(secret)))
        except ValueError as exc:
            raise BundleError(f"${ENV_HMAC}: {exc}") from exc
    for var in (ENV_SIGNING_KEY, ENV_PUBLIC_KEY):
        path = os.environ.get(var)
        if path:
            key = Ed25519Key.from_pem(path)
            if var == ENV_SIGNING_KEY and not key.can_sign:
                raise BundleError(f"${ENV_SIGNING_KEY}={path} is a public key; it must name the private key.")
            found.append((var, key))
    schemes = {key.scheme for _, key in found}
    if len(schemes) > 1:
        raise BundleError(
            f"both an HMAC secret and an ed25519 key are configured ({', '.join(v for v, _ in found)}); "
            "set only one kind of bundle key."
        )
    return found


def signing_key_from_env() -> BundleKey | None:
    """The key that signs every save: ``$PROBES_BUNDLE_HMAC_KEY`` or ``$PROBES_BUNDLE_SIGNING_KEY``."""
    for var, key in _configured():
        if var in (ENV_HMAC, ENV_SIGNING_KEY):
            return key
    return None


def verify_key_from_env() -> BundleKey | None:
    """The key every load must verify against (public key first, else the signing key), or ``None``."""
    keys = dict(_configured())
    for var in (ENV_PUBLIC_KEY, ENV_HMAC, ENV_SIGNING_KEY):
        if var in keys:
            return keys[var]
    return None
