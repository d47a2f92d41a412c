"""The tuned lens (Belrose et al. 2023): one affine translator per layer, fitted to match the final layer.

Layer ``l``'s residual ``h`` is mapped to ``h + h @ W_l + b_l`` (``W_l = 0, b_l = 0`` at the start: the logit
lens) before the model's shared final norm and unembedding; ``W_l, b_l`` minimise the KL divergence from the
model's own final distribution, averaged over tokens of the training texts. The last layer keeps the
identity (its lens *is* the model's output). Residuals are collected once with the collection engine; the
translators are then fitted with Adam on random token batches, every layer in one batched step.

A fitted lens saves as one ``.safetensors`` file (translators + JSON metadata holding the model fingerprint)
and refuses to load against another model (:class:`~probes.errors.FingerprintMismatchError`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from probes.errors import BundleError, FingerprintMismatchError, NotFittedError

FORMAT = "probes.tuned_lens"
FORMAT_VERSION = 1


class TunedLens:
    """Affine translators for layers ``layers.0 .. layers.{L-1}`` (``layers.L`` is the model's own output)."""

    def __init__(
        self,
        steps: int = 300,
        lr: float = 1e-3,
        batch_tokens: int = 1024,
        max_tokens: int = 200_000,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.steps = steps
        self.lr = lr
        self.batch_tokens = batch_tokens
        self.max_tokens = max_tokens
        self.weight_decay = weight_decay
        self.seed = seed

    # --- fitting ------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        *,
        batch_size: int = 8,
        max_length: int = 128,
        layers_attr: str | None = None,
    ) -> TunedLens:
        """Collect the residuals of ``texts`` (one pass each) and fit every layer's translator."""
        from probes.lens.logit import lm_head_of, residuals, unembed
        from probes.models.fingerprint import model_fingerprint

        lm_head_of(model)
        if not texts:
            raise ValueError("TunedLens.fit needs texts (a few thousand give a stable lens).")
        t0 = time.perf_counter()
        _, resid = residuals(
            model,
            tokenizer,
            list(texts),
            batch_size=batch_size,
            layers_attr=layers_attr,
            max_length=max_length,
        )
        H = torch.cat(resid, dim=1)  # (n_layers, N, d)
        gen = torch.Generator().manual_seed(int(self.seed))
        if H.shape[1] > int(self.max_tokens):
            H = H[:, torch.randperm(H.shape[1], generator=gen)[: int(self.max_tokens)]]
        collect_s = time.perf_counter() - t0
        n_layers, n_tokens, d = H.shape
        L = n_layers - 1
        device = next(lm_head_of(model).parameters()).device
        H = H.to(device)
        weight = torch.zeros(L, d, d, device=device, requires_grad=True)
        bias = torch.zeros(L, d, device=device, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=float(self.lr), weight_decay=float(self.weight_decay))
        frozen = [(p, p.requires_grad) for p in model.parameters()]
        losses: list[float] = []
        t1 = time.perf_counter()
        try:
            for p, _ in frozen:
                p.requires_grad_(False)
            for _ in range(int(self.steps)):
                idx = torch.randint(0, n_tokens, (min(int(self.batch_tokens), n_tokens),), generator=gen)
                idx = idx.to(device)
                x = H[:L, idx]  # (L, B, d)
                with torch.no_grad():
                    target = unembed(model, H[L, idx]).log_softmax(-1)  # (B, V)
                logp = unembed(model, x + x @ weight + bias[:, None]).log_softmax(-1)  # (L, B, V)
                loss = (target.exp() * (target - logp)).sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
        fit_s = time.perf_counter() - t1
        self.weight_ = weight.detach().cpu()
        self.bias_ = bias.detach().cpu()
        self.fingerprint_ = model_fingerprint(model, layers_attr)
        with torch.no_grad():  # per-layer KL to the final layer on the fitted tokens, before and after
            idx = torch.randperm(n_tokens, generator=gen)[: min(4096, n_tokens)].to(device)
            target = unembed(model, H[L, idx]).log_softmax(-1)
            x = H[:L, idx]
            plain = (target.exp() * (target - unembed(model, x).log_softmax(-1))).sum(-1).mean(-1)
            tuned = self._kl(model, x, target)
        self.training_ = {
            "n_texts": len(texts),
            "n_tokens": int(n_tokens),
            "steps": int(self.steps),
            "collect_s": round(collect_s, 3),
            "fit_s": round(fit_s, 3),
            "tokens_per_s": round(
                int(self.steps) * min(int(self.batch_tokens), n_tokens) / max(fit_s, 1e-9), 1
            ),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "kl_logit_lens": [round(float(v), 6) for v in plain],
            "kl_tuned_lens": [round(float(v), 6) for v in tuned],
        }
        self.losses_ = losses
        return self

    def _kl(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from probes.lens.logit import unembed

        w, b = self.weight_.to(x.device), self.bias_.to(x.device)
        logp = unembed(model, x + x @ w + b[:, None]).log_softmax(-1)
        return (target.exp() * (target - logp)).sum(-1).mean(-1)

    # --- use ----------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "weight_", None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("This TunedLens is not fitted yet. Call fit(model, tokenizer, texts) first.")

    def translate(self, h: torch.Tensor) -> torch.Tensor:
        """Map ``(n_layers, T, d)`` residuals ``layers.0 .. layers.L`` through the translators."""
        self._check_fitted()
        L = self.weight_.shape[0]
        if h.shape[0] != L + 1 or h.shape[-1] != self.weight_.shape[-1]:
            raise ValueError(
                f"TunedLens has translators for {L + 1} layers of width {self.weight_.shape[-1]}; got residuals "
                f"of shape {tuple(h.shape)}."
            )
        w, b = self.weight_.to(h.device, torch.float32), self.bias_.to(h.device, torch.float32)
        x = h[:L].float()
        return torch.cat([x + x @ w + b[:, None], h[L:].float()])

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`FingerprintMismatchError` unless ``model`` is the model the lens was fitted on."""
        from probes.models.fingerprint import fingerprint_matches, model_fingerprint

        self._check_fitted()
        actual = model_fingerprint(model)
        diff = fingerprint_matches(self.fingerprint_, actual)
        if diff:
            raise FingerprintMismatchError(
                f"This tuned lens was fitted on {self.fingerprint_.get('name')!r}, not on this model "
                f"({actual.get('name')!r}): they differ in {', '.join(diff)}. Fit a lens on this model."
            )

    def lens(self, model: nn.Module, tokenizer: Any, text: str | Sequence[str], **kwargs: Any) -> Any:
        """:func:`~probes.lens.logit_lens` through these translators."""
        from probes.lens.logit import logit_lens

        return logit_lens(model, tokenizer, text, translators=self, **kwargs)

    # --- persistence --------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "lr": self.lr,
            "batch_tokens": self.batch_tokens,
            "max_tokens": self.max_tokens,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }

    def save(self, path: str | Path) -> Path:
        """One ``.safetensors`` file: ``weight`` ``(L, d, d)``, ``bias`` ``(L, d)``, fingerprint in the header."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "params": json.dumps(self.get_params()),
            "fingerprint": json.dumps(self.fingerprint_, sort_keys=True),
            "training": json.dumps(self.training_),
        }
        save_file(
            {"weight": self.weight_.contiguous(), "bias": self.bias_.contiguous()},
            str(path),
            metadata=metadata,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> TunedLens:
        """Read a saved lens; with ``model``, check it is the model the lens was fitted on."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise BundleError(f"No tuned lens at {path}; fit one with TunedLens().fit(...).save(path).")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as e:
            raise BundleError(f"{path} is not a readable safetensors file: {e}") from e
        if meta.get("format") != FORMAT or "weight" not in tensors or "bias" not in tensors:
            raise BundleError(f"{path} is not a tuned lens saved by probes (format {meta.get('format')!r}).")
        if int(meta.get("format_version", "0")) > FORMAT_VERSION:
            raise BundleError(f"{path} was written by a newer probes; upgrade to load it.")
        lens = cls(**json.loads(meta["params"]))
        lens.weight_, lens.bias_ = tensors["weight"].float(), tensors["bias"].float()
        lens.fingerprint_ = json.loads(meta["fingerprint"])
        lens.training_ = json.loads(meta.get("training", "{}"))
        lens.losses_ = []
        if model is not None:
            lens.check_model(model)
        return lens

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"TunedLens({params})"


def kl_per_layer(result: Any) -> np.ndarray:
    """Mean KL to the final layer of each layer of a :class:`~probes.lens.logit.LensResult`."""
    return np.asarray(result.kl_to_final).mean(axis=1)
