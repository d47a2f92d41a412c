"""The model fingerprint sees every depth: a fine-tune of any block, the embeddings or the final norm, and a NaN
anywhere in the weights, are refused by a bundle; dtype changes of the same checkpoint are not."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHS, build_tiny_model

from probes.errors import FingerprintMismatchError
from probes.models import fingerprint_matches, model_fingerprint
from probes.models.fingerprint import differing_parts
from probes.models.sites import block_list, final_norm_module
from probes.package import ProbeBundle
from probes.train import LogisticProbe


def _bundle(model) -> ProbeBundle:
    X = torch.randn(40, 32, generator=torch.Generator().manual_seed(0))
    return ProbeBundle.from_probe(
        LogisticProbe().fit(X, (X[:, 0] > 0).long().numpy()), model=model, layer=1, name="p"
    )


def _nudge(param: torch.nn.Parameter, scale: float = 1e-2) -> None:
    """A fine-tune step: every element moves a little."""
    with torch.no_grad():
        param.add_(scale * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_finetune_of_any_block_is_caught_and_named(arch: str) -> None:
    model, _ = build_tiny_model(arch)
    bundle = _bundle(model)
    bundle.check_model(model)
    blocks = block_list(model)
    for i in range(len(blocks)):
        param = next(p for p in blocks[i].parameters() if p.ndim == 2)
        saved = param.detach().clone()
        _nudge(param)
        with pytest.raises(FingerprintMismatchError, match=rf"weights differ in block\.{i}\)"):
            bundle.check_model(model)
        with torch.no_grad():
            param.copy_(saved)
        bundle.check_model(model)  # restored: matches again


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_embeddings_and_final_norm_are_covered(arch: str) -> None:
    model, _ = build_tiny_model(arch)
    bundle = _bundle(model)
    _nudge(model.get_input_embeddings().weight)
    with pytest.raises(FingerprintMismatchError, match=r"weights differ in embeddings"):
        bundle.check_model(model)
    model, _ = build_tiny_model(arch)
    norm = final_norm_module(model)
    if norm is None:  # BERT has no final norm; the last block's LayerNorm is in block.3
        norm = block_list(model)[-1]
    _nudge(next(p for p in norm.parameters() if p.ndim == 1))
    with pytest.raises(FingerprintMismatchError, match=r"weights differ in (final_norm|block\.3)"):
        bundle.check_model(model)


@pytest.mark.parametrize("where", [1, 2, -1])
def test_a_nan_anywhere_after_block_0_is_caught(where: int) -> None:
    model, _ = build_tiny_model("llama")
    bundle = _bundle(model)
    name, param = [(n, p) for n, p in block_list(model)[where].named_parameters() if p.ndim == 2][-1]
    with torch.no_grad():
        param.view(-1)[param.numel() // 3 + 7] = float("nan")  # one element no sample position hits
    with pytest.raises(
        FingerprintMismatchError, match=rf"weights_finite: bundle True vs model False \(NaN/inf in .*{name}"
    ):
        bundle.check_model(model)


def test_same_checkpoint_in_other_dtypes_matches() -> None:
    # A checkpoint stored in fp16 or bf16 and loaded in its own dtype or in fp32 holds the same values.
    for stored in (torch.float16, torch.bfloat16):
        checkpoint, _ = build_tiny_model("llama")
        checkpoint.to(stored)
        as_fp32, _ = build_tiny_model("llama")
        as_fp32.load_state_dict({k: v.float() for k, v in checkpoint.state_dict().items()})
        assert fingerprint_matches(model_fingerprint(checkpoint), model_fingerprint(as_fp32)) == [], stored
    fp32, _ = build_tiny_model("llama")
    seed1, _ = build_tiny_model("llama", seed=1)
    a, b = model_fingerprint(fp32), model_fingerprint(seed1)
    assert "weight_hash" in fingerprint_matches(a, b)
    assert set(differing_parts(a, b)) == {"embeddings", "block.0", "block.1", "block.2", "block.3"}


def test_fingerprints_of_another_version_never_match() -> None:
    model, _ = build_tiny_model("llama")
    old = {k: v for k, v in model_fingerprint(model).items() if k != "fingerprint_version"}
    assert fingerprint_matches(old, model_fingerprint(model)) == ["fingerprint_version"]
