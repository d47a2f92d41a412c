"""Model fingerprints: the identity a bundle or an activation cache records of the model it was made on.

A fingerprint holds the model's name, revision, architecture and sizes, and a hash of a small fixed sample of
**every** floating-point parameter, grouped by depth: ``embeddings`` (everything outside the blocks and the
final norm: token and position embeddings, the LM head), ``block.0`` ... ``block.{L-1}`` and ``final_norm``.
From each parameter ``SAMPLE`` evenly spaced elements (always the first and the last) are cast to bfloat16 and
hashed with the parameter's shape, so

- the same checkpoint loaded in fp32, fp16 or bf16 gives the same fingerprint;
- a fine-tune of any block, norm or embedding (which moves essentially every element of the matrices it
  trains, LoRA merges included) changes the hash of that part, and the mismatch names the part;
- a NaN or inf *anywhere* in the weights is caught by ``weights_finite``: every parameter is summed in
  float32 (one pass over the weights on their own device; an overflowing sum counts as non-finite too).

What it cannot see: an edit of a few single elements that the sample misses. It identifies a model; it is
not a cryptographic seal of the weights (a full hash would read every byte on the CPU on every attach).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from probes.models.sites import block_list, final_norm_module

FINGERPRINT_VERSION = 2
#: Elements sampled from every parameter.
SAMPLE = 64
EMBEDDINGS, FINAL_NORM_PART = "embeddings", "final_norm"
_COMPARED = (
    "fingerprint_version",
    "architecture",
    "hidden_size",
    "num_layers",
    "weight_hash",
    "weights_finite",
)


def _grouped_parameters(
    model: nn.Module, layers_attr: str | None
) -> tuple[dict[str, list[tuple[str, nn.Parameter]]], int]:
    """Floating-point parameters by part (tied weights once, in module order), and the block count."""
    blocks = block_list(model, layers_attr)
    part_of: dict[int, str] = {}
    for i, block in enumerate(blocks):
        for p in block.parameters():
            part_of.setdefault(id(p), f"block.{i}")
    norm = final_norm_module(model)
    if norm is not None:
        for p in norm.parameters():
            part_of.setdefault(id(p), FINAL_NORM_PART)
    parts: dict[str, list[tuple[str, nn.Parameter]]] = {EMBEDDINGS: []}
    parts.update({f"block.{i}": [] for i in range(len(blocks))})
    if norm is not None:
        parts[FINAL_NORM_PART] = []
    for name, p in model.named_parameters():  # remove_duplicate=True: a tied head is counted once
        if p.is_floating_point():
            parts[part_of.get(id(p), EMBEDDINGS)].append((name, p))
    return parts, len(blocks)


def _sample(p: torch.Tensor) -> torch.Tensor:
    flat = p.detach().reshape(-1)
    n = flat.numel()
    k = min(SAMPLE, n)
    if k == 0:
        return flat.to(torch.bfloat16)
    idx = torch.arange(k, device=flat.device, dtype=torch.int64) * (n - 1) // max(k - 1, 1)
    return flat.index_select(0, idx).to(torch.bfloat16)


def sampled_weight_hashes(model: nn.Module, layers_attr: str | None = None) -> dict[str, str]:
    """Per part (``embeddings``, ``block.i``, ``final_norm``), the hash of a fixed sample of its parameters."""
    parts, _ = _grouped_parameters(model, layers_attr)
    out: dict[str, str] = {}
    for part, params in parts.items():
        h = hashlib.sha256(part.encode())
        readable = [p for _, p in params if p.device.type != "meta"]
        if readable:
            samples = torch.cat([_sample(p) for p in readable]).cpu()  # one transfer per part
            h.update("".join(repr(tuple(p.shape)) for p in readable).encode())
            h.update(samples.view(torch.int16).numpy().tobytes())
        # An offloaded (meta) parameter has no values here: record that it exists, by shape.
        h.update("".join(f"meta{tuple(p.shape)}" for _, p in params if p.device.type == "meta").encode())
        out[part] = h.hexdigest()[:12]
    return out


def weights_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter is finite: each is summed in float32 on its own device (one
    pass over the weights, one transfer per device); a NaN, an inf or an overflowing sum gives ``False``."""
    sums: dict[torch.device, list[torch.Tensor]] = {}
    for p in model.parameters():
        if p.is_floating_point() and p.device.type != "meta":
            sums.setdefault(p.device, []).append(p.detach().sum(dtype=torch.float32))
    return all(bool(torch.isfinite(torch.stack(v)).all()) for v in sums.values())


def weight_fingerprint(model: nn.Module, layers_attr: str | None = None) -> dict[str, Any]:
    """``{"weight_hash", "weight_parts", "weights_finite"}`` of ``model`` (see the module docstring)."""
    parts = sampled_weight_hashes(model, layers_attr)
    total = hashlib.sha256("|".join(f"{k}={v}" for k, v in parts.items()).encode()).hexdigest()[:16]
    return {"weight_hash": total, "weight_parts": parts, "weights_finite": weights_finite(model)}


def nonfinite_parameters(model: nn.Module, limit: int = 5) -> list[str]:
    """Names of (up to ``limit``) parameters holding a NaN or inf."""
    out = []
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p.detach()).all()):
            out.append(name)
            if len(out) >= limit:
                break
    return out


def model_fingerprint(model: nn.Module, layers_attr: str | None = None) -> dict[str, Any]:
    """Identity of a model: name, revision, architecture, sizes and the sampled-weights hash (module docstring)."""
    config = getattr(model, "config", None)
    blocks = block_list(model, layers_attr)
    weights = weight_fingerprint(model, layers_attr)
    first = next((p for p in blocks[0].parameters() if p.ndim == 2), None)
    source = getattr(model, "_probes_source", {}) or {}
    fingerprint = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "name": source.get("name") or getattr(config, "_name_or_path", "") or type(model).__name__,
        "revision": source.get("revision"),
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "hidden_size": int(
            getattr(config, "hidden_size", 0) or (first.shape[-1] if first is not None else 0)
        ),
        "num_layers": len(blocks),
        **weights,
    }
    gguf = source.get("gguf")
    if gguf:  # converted from a GGUF file: say which file, by name and content
        fingerprint["gguf_file"] = gguf.get("file")
        fingerprint["gguf_sha256"] = gguf.get("sha256")
    return fingerprint


def fingerprint_matches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Fields on which two fingerprints disagree (name and revision are informative and not compared).

    A fingerprint of another version (an older probes) always disagrees on ``fingerprint_version``: its
    weight hash was computed differently, so it cannot vouch for the model.
    """
    out = []
    if expected.get("fingerprint_version") != actual.get("fingerprint_version"):
        out.append("fingerprint_version")
    out += [
        k
        for k in _COMPARED[1:]
        if k in expected and expected.get(k) is not None and expected.get(k) != actual.get(k)
    ]
    return out


def differing_parts(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """The weight parts (``block.3``, ``embeddings``, ...) whose sampled hashes differ."""
    a, b = expected.get("weight_parts") or {}, actual.get("weight_parts") or {}
    return [k for k in {**a, **b} if a.get(k) != b.get(k)]
