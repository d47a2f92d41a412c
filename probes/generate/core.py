"""On-policy data: a contrast dataset's prompts answered by the model itself.

For every row, the conversation *up to the turn to be answered* is the prompt:

- a chat row whose target is an assistant message: the messages before that message (anything after it is
  dropped);
- a chat row without a target that ends with a user message: all of its messages;
- a chat row without a target that ends with an assistant message: the messages before that last reply.

Anything else (a plain-text row, a target on a user or system turn) has no turn to generate and is an error
that names the rows. The model samples ``n`` replies per prompt; each becomes a row with the same id (``-s<k>``
appended when ``n > 1``), label, group and conditions, the prompt plus the generated assistant reply, and the
target on that reply (``{"message": -1}``). The original reply and how the new one ended are kept under
``meta.generated``.

How it runs
    Prompts are rendered as the model will see them (the tokenizer's chat template with the generation
    prompt, or the plain ``User: ...`` fallback followed by ``Assistant:``), sorted by token length and cut
    into fixed batches; each batch is one ``model.generate`` call on left-padded prompts, sampled from a
    seed derived from ``seed`` and the batch's index, so the output depends only on the settings, never on
    interruptions. Finished batches are appended (one ``write`` + ``fsync``) to
    ``.<output>.partial/replies.jsonl``; a run killed at any point resumes from there, dropping a torn last
    line, and writes the same rows an uninterrupted run would. The finished dataset (``data.jsonl`` and a
    ``card.yaml`` recording the model, the source dataset and every sampling setting) is written to a
    temporary folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.data.render import render_plain, target_message_index
from probes.data.types import Example, Message
from probes.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.dataset import ContrastDataset

PARTIAL_SCHEMA = 1
REPLIES = "replies.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SamplingSettings:
    """How replies are sampled; every field is recorded in the output card."""

    n: int = 1
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"invalid sampling settings {self}: need n >= 1, max_new_tokens >= 1, "
                "temperature > 0, 0 < top_p <= 1"
            )
        if not self.do_sample and self.n > 1:
            raise ValueError("greedy decoding (do_sample=False) gives one reply per prompt; use n=1")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
            kwargs["num_return_sequences"] = self.n
        else:
            # Greedy: say so explicitly, so a generation_config's sampling defaults cannot leak in.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


# -- prompts -----------------------------------------------------------------------------------------------
def prompt_messages(example: Example) -> tuple[Message, ...]:
    """The conversation up to the turn the model answers (see the module docstring); DatasetError if none."""
    messages = example.messages
    if messages is None:
        raise DatasetError(
            f"row {example.id!r} is plain text: there is no chat turn to answer. probes generate needs chat "
            "rows (messages) whose target is an assistant turn, or that end with a user turn."
        )
    idx = target_message_index(example)
    if idx is None:
        if messages[-1].role == "assistant":
            idx = len(messages) - 1
        elif messages[-1].role == "user":
            return tuple(messages)
        else:
            raise DatasetError(
                f"row {example.id!r}: ends with a {messages[-1].role!r} message and has no target, so there is "
                "no turn to answer; end it with a user message or target an assistant turn."
            )
    if messages[idx].role != "assistant":
        raise DatasetError(
            f"row {example.id!r}: its target is a {messages[idx].role!r} message; probes generate answers an "
            "assistant turn. Target the assistant reply ({'role': 'assistant'})."
        )
    if idx == 0:
        raise DatasetError(
            f"row {example.id!r}: the assistant turn is the first message; there is no prompt."
        )
    return tuple(messages[:idx])


def _check_prompts(dataset: Sequence[Example], source: str) -> list[tuple[Message, ...]]:
    prompts: list[tuple[Message, ...]] = []
    problems: list[str] = []
    for ex in dataset:
        try:
            prompts.append(prompt_messages(ex))
        except DatasetError as exc:
            problems.append(str(exc))
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DatasetError(f"{source}: {len(problems)} row(s) have no turn to generate:\n  {shown}{more}")
    return prompts


def render_prompt(
    messages: Sequence[Message],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    use_chat_template: bool | None = None,
) -> tuple[str, bool]:
    """The prompt text the model continues and whether the tokenizer should add its special tokens."""
    has_template = chat_template is not None or bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is True and not has_template:
        raise ConfigError(
            "use_chat_template: true, but the tokenizer has no chat template; give chat_template."
        )
    if has_template and use_chat_template is not False:
        text = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
            chat_template=chat_template,
        )
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected a string.")
    else:
        # The plain fallback of probes.data.render, continued by the assistant's role line.
        text = render_plain(messages)[0] + "\n\nAssistant:"
    bos = getattr(tokenizer, "bos_token", None)
    return text, not (bos and text.startswith(bos))


# -- the partial (resumable) state -------------------------------------------------------------------------
def _partial_dir(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def _read_done(replies: Path) -> dict[str, dict[str, Any]]:
    """Finished rows from ``replies.jsonl``; a torn last line (a kill mid-write) is cut off the file."""
    done: dict[str, dict[str, Any]] = {}
    if not replies.is_file():
        return done
    data = replies.read_bytes()
    good = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break
        try:
            record = json.loads(data[pos:end])
        except ValueError:
            break
        for row in record["rows"]:
            done[row["source_id"] + "\x00" + str(row["sample"])] = row
        pos = end + 1
        good = pos
    if good < len(data):
        with replies.open("r+b") as fh:
            fh.truncate(good)
    return done


def _append(replies: Path, rows: list[dict[str, Any]]) -> None:
    line = json.dumps({"rows": rows}, ensure_ascii=False) + "\n"
    with replies.open("ab") as fh:
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _batch_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"probes-generate:{seed}:{index}".encode()).hexdigest()[:15], 16)


# -- the job -----------------------------------------------------------------------------------------------
def generate_dataset(
    model: Any,
    tokenizer: Any,
    dataset: ContrastDataset,
    output: str | Path,
    *,
    sampling: SamplingSettings | None = None,
    batch_size: int = 16,
    max_prompt_tokens: int = 1024,
    chat_template: str | None = None,
    use_chat_template: bool | None = None,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    engine: Any = None,
) -> ContrastDataset:
    """Answer every row's prompt with the model's own replies; write and return the new dataset.

    Args:
        model, tokenizer: a causal LM and its tokenizer (``probes.load_model``).
        dataset: chat rows with a turn to answer (see the module docstring).
        output: folder for ``data.jsonl`` + ``card.yaml``; must not exist unless ``overwrite``.
        sampling: :class:`SamplingSettings` (n, temperature, top_p, top_k, max_new_tokens, seed, do_sample).
        batch_size: prompts per ``generate`` call; with the seed it fixes the sampled tokens.
        max_prompt_tokens: a longer prompt is an error naming the row (never silently cut).
        name: the new dataset's name (default: the output folder's name).
        engine: a connected :class:`probes.collection.ray_engine.RayEngine` to run the batches on its workers
            (same batches, same seeds, the same replies); ``None`` runs them here.

    An interrupted call resumes from ``.<output>.partial/`` when called again with the same model, data and
    settings (other settings are refused: delete that folder or use the same ones).
    """
    from probes.models.fingerprint import model_fingerprint

    sampling = sampling or SamplingSettings()
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} already exists; choose another output folder or set overwrite: true.")
    examples = list(dataset)
    if not examples:
        raise DatasetError(f"{dataset.source}: the dataset has no rows to generate from.")
    prompts = _check_prompts(examples, dataset.source)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with use_fast=True.")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad prompts with.")

    rendered = [
        render_prompt(p, tokenizer, chat_template=chat_template, use_chat_template=use_chat_template)
        for p in prompts
    ]
    ids_by_row: list[list[int] | None] = [None] * len(rendered)
    for flag in (True, False):
        idx = [i for i, (_, f) in enumerate(rendered) if f is flag]
        if idx:
            batch = tokenizer([rendered[i][0] for i in idx], add_special_tokens=flag)["input_ids"]
            for i, ids in zip(idx, batch, strict=True):
                ids_by_row[i] = [int(t) for t in ids]
    encoded = [ids if ids is not None else [] for ids in ids_by_row]
    too_long = [(examples[i].id, len(ids)) for i, ids in enumerate(encoded) if len(ids) > max_prompt_tokens]
    if too_long:
        listed = ", ".join(f"{rid!r} ({n} tokens)" for rid, n in too_long[:10])
        raise DatasetError(
            f"{dataset.source}: {len(too_long)} prompt(s) exceed max_prompt_tokens={max_prompt_tokens}: "
            f"{listed}. Raise max_prompt_tokens or shorten the rows."
        )

    # Fixed batches over the length-sorted prompts (ties by dataset order): the batch a row falls in, and so
    # its sampling seed, does not depend on how often the job was interrupted.
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

    fingerprint = model_fingerprint(model)
    settings = {
        "schema": PARTIAL_SCHEMA,
        "model": fingerprint,
        "dataset": dataset.fingerprint(),
        "sampling": asdict(sampling),
        "batch_size": batch_size,
        "max_prompt_tokens": max_prompt_tokens,
        "chat_template": chat_template,
        "use_chat_template": use_chat_template,
        "prompt_ids": hashlib.sha256(json.dumps(encoded).encode()).hexdigest(),
    }
    partial = _partial_dir(output)
    manifest = partial / MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            saved = None
        if saved != json.loads(json.dumps(settings)):
            raise ConfigError(
                f"{partial} holds an interrupted generation with other settings (model, data or sampling); "
                "delete that folder to start afresh, or rerun with the same settings to resume it."
            )
    else:
        partial.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_name(f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        os.replace(tmp, manifest)
    replies = partial / REPLIES
    done = _read_done(replies)

    n = sampling.n
    eos_ids = _eos_ids(model, tokenizer)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoded), desc="generating", unit="prompt")
        bar.update(sum(all(_key(ex.id, k) in done for k in range(n)) for ex in examples))
    todo = [
        (b_index, batch)
        for b_index, batch in enumerate(batches)
        if not all(_key(examples[i].id, k) in done for i in batch for k in range(n))
    ]

    def finished() -> Iterator[tuple[list[int], list[tuple[list[int], str]]]]:
        if engine is not None:  # a Ray pool: batches finish in any order, each exactly as it would here
            yield from engine.generate_batches(model, todo, encoded, sampling, pad_id, eos_ids)
            return
        for b_index, batch in todo:
            prompts_ids = [encoded[i] for i in batch]
            yield batch, generate_batch(model, prompts_ids, b_index, sampling, pad_id, eos_ids)

    try:
        for batch, outs in finished():
            rows = []
            for r, i in enumerate(batch):
                for k in range(n):
                    tokens, stopped = outs[r * n + k]
                    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    rows.append(
                        {
                            "source_id": examples[i].id,
                            "sample": k,
                            "reply": text,
                            "tokens": len(tokens),
                            "stopped": stopped,
                        }
                    )
            _append(replies, rows)
            for row in rows:
                done[_key(row["source_id"], row["sample"])] = row
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

    return _finish(
        examples, prompts, done, dataset, output, partial, settings, n=n, name=name, overwrite=overwrite
    )


def generate_batch(
    model: Any,
    prompts: list[list[int]],
    b_index: int,
    sampling: SamplingSettings,
    pad_id: int,
    eos_ids: list[int],
) -> list[tuple[list[int], str]]:
    """Sample ``sampling.n`` replies to each prompt of batch ``b_index`` (seeded by the batch): per reply, in
    order row by row, its new token ids (cut at the first EOS) and why it stopped (``eos``/``max_new_tokens``).

    What the local job and every Ray worker run, so a batch gives the same tokens wherever it runs.
    """
    import torch

    n = sampling.n
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, ids in enumerate(prompts):  # left padding: every prompt ends where generation starts
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        attention[r, width - len(ids) :] = 1
    device = next(model.parameters()).device
    torch.manual_seed(_batch_seed(sampling.seed, b_index))
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            **sampling.generate_kwargs(),
        )
    if out.shape[0] != len(prompts) * n or not torch.equal(
        out[:, :width].cpu(), input_ids.repeat_interleave(n, 0)
    ):
        raise RuntimeError(
            "model.generate returned sequences that do not start with the prompts it was given "
            f"(shape {tuple(out.shape)} for {len(prompts)} prompts x {n}); refusing to guess."
        )
    replies: list[tuple[list[int], str]] = []
    for tokens in out[:, width:].cpu().tolist():
        stopped = "max_new_tokens"
        for j, t in enumerate(tokens):
            if t in eos_ids:
                tokens, stopped = tokens[:j], "eos"
                break
        replies.append((tokens, stopped))
    return replies


def _key(row_id: str, sample: int) -> str:
    return f"{row_id}\x00{sample}"


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer names an EOS token.")
    return ids


def _finish(
    examples: list[Example],
    prompts: list[tuple[Message, ...]],
    done: dict[str, dict[str, Any]],
    dataset: ContrastDataset,
    output: Path,
    partial: Path,
    settings: dict[str, Any],
    *,
    n: int,
    name: str | None,
    overwrite: bool,
) -> ContrastDataset:
    from probes.data import load_dataset
    from probes.data.dataset import ContrastDataset

    lines: list[str] = []
    empty: list[str] = []
    at_limit = 0
    for ex, prompt in zip(examples, prompts, strict=True):
        original = _original_reply(ex, len(prompt))
        for k in range(n):
            got = done[_key(ex.id, k)]
            rid = ex.id if n == 1 else f"{ex.id}-s{k}"
            if not got["reply"]:
                empty.append(rid)
                continue
            at_limit += got["stopped"] == "max_new_tokens"
            row: dict[str, Any] = {
                "id": rid,
                "label": dataset.label_names[ex.label],
                "messages": [{"role": m.role, "content": m.content} for m in prompt]
                + [{"role": "assistant", "content": got["reply"]}],
                "target": {"message": -1},
            }
            if ex.group is not None:
                row["group"] = ex.group
            if ex.conditions:
                row["conditions"] = dict(ex.conditions)
            if ex.split is not None:
                row["split"] = ex.split
            meta = dict(ex.meta)
            meta["generated"] = {
                "source_id": ex.id,
                "sample": k,
                "tokens": got["tokens"],
                "stopped": got["stopped"],
                "original_reply": original,
            }
            row["meta"] = meta
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    if empty:
        warnings.warn(
            f"{len(empty)} generated repl(ies) were empty (the model stopped at once) and are left out: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}",
            stacklevel=3,
        )
    if not lines:
        raise DatasetError(f"{dataset.source}: every generated reply was empty; nothing to write.")

    from probes._version import __version__

    card = dataset.card
    ds_name = name or output.name
    s = settings["sampling"]
    how = (
        f"probes generate (probes {__version__}): {n} repl{'y' if n == 1 else 'ies'} per "
        f"prompt of {dataset.source} sampled from {settings['model'].get('name')} "
        + (
            f"(temperature {s['temperature']}, top_p {s['top_p']}, top_k {s['top_k'] or 'off'}, "
            if s["do_sample"]
            else "(greedy, "
        )
        + f"at most {s['max_new_tokens']} new tokens, seed {s['seed']}, batch_size {settings['batch_size']}). "
        "Each row keeps the source row's id, label, group and conditions; its prompt is the source conversation "
        "up to the answered turn and its target is the generated reply. The source reply is in "
        "meta.generated.original_reply."
    )
    generation = {
        "model": settings["model"],
        "source_dataset": {
            "path": str(dataset.source),
            "name": card.name,
            "fingerprint": settings["dataset"],
        },
        "sampling": s,
        "batch_size": settings["batch_size"],
        "max_prompt_tokens": settings["max_prompt_tokens"],
        "chat_template": "custom" if settings["chat_template"] else "tokenizer's",
        "prompts": len(examples),
        "rows": len(lines),
        "empty_replies_left_out": len(empty),
        "stopped_at_max_new_tokens": at_limit,
    }
    confounds = [
        "The replies are the model's own and differ between the members of a pair: unlike the source set, a "
        "text-only classifier of the reply is no longer at chance by construction. Compare the probe with the "
        "span-only baseline before reading it as a state of the model.",
        *card.confounds,
    ]
    card_dict = {
        "name": ds_name,
        "description": f"On-policy version of {card.name}: the same prompts answered by "
        f"{settings['model'].get('name')}. {card.description}".strip(),
        "label_names": list(card.label_names),
        "kind": card.kind,
        "source": f"Generated from {card.name} ({dataset.source}). Source: {card.source}".strip(),
        "license": card.license or "see the source dataset",
        "how_made": how,
        "confounds": confounds,
        "generation": generation,
    }
    if card.intended_use:
        card_dict["intended_use"] = card.intended_use
    import yaml

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        (tmp / "data.jsonl").write_text("".join(lines), encoding="utf-8")
        (tmp / "card.yaml").write_text(
            yaml.safe_dump(card_dict, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8"
        )
        result = load_dataset(tmp)  # what `probes run` will read: refuse to publish anything it cannot
        if output.exists():
            if not overwrite:
                raise ConfigError(f"{output} appeared while generating; not replacing it (set overwrite).")
            old = output.with_name(f".{output.name}.old.{uuid.uuid4().hex[:8]}")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(partial)
    return ContrastDataset(result.examples, result.card, source=output)


def _original_reply(example: Example, prompt_len: int) -> str | None:
    messages = example.messages or ()
    if prompt_len < len(messages) and messages[prompt_len].role == "assistant":
        return messages[prompt_len].content
    return None
