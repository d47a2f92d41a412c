"""An LM asked a yes/no question about a text, scored by the log-probability it gives the answer "yes".

The costlier second stage of a cascade (:mod:`probes.train.cascade`): a chat model reads the row and a
question (``"... Answer Yes or No."``) through its chat template, with the generation prompt, and the score
is ``log P(yes)`` -- the log of the total probability of the ``yes`` spellings as the assistant's reply --
or, with ``score="logodds"``, ``log P(yes) - log P(no)`` (robust to probability mass on other replies).

Exactness, not approximation:

- an answer's tokens are found by tokenizing ``prompt + answer`` and taking what follows the prompt's own
  tokens (refused with :class:`~probes.errors.TokenizerError` when the prompt's tokens are not a prefix, so
  a merge across the boundary never goes unnoticed); a multi-token answer is scored by teacher forcing
  (the sum of its tokens' log-probabilities), a one-token answer from the prompt's last logits -- all
  spellings of one row that are one token long share one forward pass;
- rows are batched with left padding and explicit position ids, so a row scores the same alone or in a
  batch (tested); nothing is ever truncated (a row longer than ``max_length`` is an error).

A tokenizer without a chat template uses the project's plain fallback (``User: <question>`` then a blank
line and ``Assistant:``), with each answer preceded by a space. Cost per decision is recorded by every
:meth:`LMJudge.score` call: tokens forwarded, an estimate of FLOPs (``2 x non-embedding parameters x
tokens`` plus the output head at the scored positions) and measured wall and process seconds.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probes.errors import TokenizerError

DEFAULT_QUESTION = (
    "Here is a text:\n\n{text}\n\nDoes the text above show {state}? Answer with Yes or No only."
)
SCORES = ("logprob_yes", "logodds")


class LMJudge:
    """Score rows by ``log P("yes")`` of a chat model asked ``question`` about them.

    ``question`` is a format string with ``{text}`` (the row: its text, or its chat transcript in the plain
    ``User: ... / Assistant: ...`` format) and optionally ``{state}`` (filled from ``state=``). ``yes`` and
    ``no`` are the spellings whose probabilities are summed. ``system`` adds a system message.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        question: str = DEFAULT_QUESTION,
        state: str = "the state in question",
        yes: Sequence[str] = ("Yes", "yes"),
        no: Sequence[str] = ("No", "no"),
        score: str = "logprob_yes",
        system: str | None = None,
        use_chat_template: bool | str = "auto",
        batch_size: int = 8,
        max_length: int | None = None,
    ) -> None:
        if "{text}" not in question:
            raise ValueError("LMJudge: question must contain '{text}' where the row goes.")
        if score not in SCORES:
            raise ValueError(f"LMJudge: score must be one of {SCORES}; got {score!r}.")
        if not yes or (score == "logodds" and not no):
            raise ValueError("LMJudge: give at least one 'yes' spelling (and one 'no' for score='logodds').")
        if int(batch_size) < 1:
            raise ValueError(f"LMJudge: batch_size must be >= 1; got {batch_size}.")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template is True and not has_template:
            raise TokenizerError(
                "LMJudge(use_chat_template=True): the tokenizer has no chat template; load a chat model or use "
                "use_chat_template='auto' for the plain 'User: ... Assistant:' fallback."
            )
        if use_chat_template not in (True, False, "auto"):
            raise ValueError(
                f"LMJudge: use_chat_template must be True, False or 'auto'; got {use_chat_template!r}."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.question = question
        self.state = state
        self.yes = tuple(yes)
        self.no = tuple(no)
        self.score_kind = score
        self.system = system
        self.use_template = has_template and use_chat_template is not False
        self.batch_size = int(batch_size)
        limit = getattr(tokenizer, "model_max_length", None)
        self.max_length = (
            max_length if max_length is not None else (limit if limit and limit < 10**6 else None)
        )
        forward = getattr(model, "forward", None)
        params = inspect.signature(forward).parameters if forward is not None else {}
        # Only the answer positions' logits are needed: ask the model for the last few (saves the
        # (batch, length, vocab) tensor); older models without the keyword get full logits.
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        n_emb = int(emb.weight.numel()) if emb is not None else 0
        self.n_params = int(sum(p.numel() for p in model.parameters()))
        self._n_body = self.n_params - n_emb
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._head = int(out.weight.numel()) if out is not None else n_emb
        self.seconds_per_decision_: float = float("nan")
        self.cpu_seconds_per_decision_: float = float("nan")
        self.tokens_per_decision_: float = float("nan")
        self.flops_per_decision_: float = float("nan")

    # --- prompts --------------------------------------------------------------------------------
    def row_text(self, item: Any) -> str:
        """The text a row contributes to the question (plain transcript for chats)."""
        from probes.data.render import render_plain
        from probes.data.types import Example, Message

        if isinstance(item, str):
            return item
        if isinstance(item, Example):
            if item.text is not None:
                return item.text
            return render_plain(list(item.messages or ()))[0]
        if isinstance(item, Sequence) and all(isinstance(m, Message | dict) for m in item):
            msgs = [m if isinstance(m, Message) else Message(str(m["role"]), str(m["content"])) for m in item]
            return render_plain(msgs)[0]
        raise TypeError(
            f"LMJudge scores strings, dataset rows (Example) or chats (lists of messages); got {type(item).__name__}."
        )

    def prompt(self, item: Any) -> str:
        """The full prompt string the model reads before its answer (chat template or plain fallback)."""
        content = self.question.format(text=self.row_text(item), state=self.state)
        if not self.use_template:
            parts = ([f"System: {self.system}"] if self.system else []) + [f"User: {content}", "Assistant:"]
            return "\n\n".join(parts)
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": content}
        ]
        out = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(out, str):
            raise TokenizerError(f"apply_chat_template returned {type(out).__name__}, expected a string.")
        return out

    def _encode(self, text: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        special = not (bos and text.startswith(bos))  # a template that writes its own BOS: never double it
        return [int(t) for t in self.tokenizer(text, add_special_tokens=special)["input_ids"]]

    def _answer_tokens(self, prompt: str, prompt_ids: list[int], answer: str) -> list[int]:
        spelled = answer if self.use_template else " " + answer
        full = self._encode(prompt + spelled)
        if full[: len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
            raise TokenizerError(
                f"LMJudge: the tokens of the prompt followed by {spelled!r} do not start with the prompt's own "
                "tokens (the tokenizer merges across the boundary), so the answer's tokens are ambiguous. "
                "Use another spelling in yes=/no= or end the question differently."
            )
        return full[len(prompt_ids) :]

    # --- scoring --------------------------------------------------------------------------------
    def score(self, items: Sequence[Any]) -> np.ndarray:
        """Scores ``(n,)`` (higher = the model says yes more): ``log P(yes)`` or ``log P(yes) - log P(no)``."""
        items = list(items)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        # Each row: for every spelling, (sequence to forward, positions whose next token is scored, tokens).
        sequences: dict[tuple[int, ...], int] = {}
        plans: list[dict[str, list[tuple[int, list[int], list[int]]]]] = []
        for i, item in enumerate(items):
            prompt = self.prompt(item)
            p_ids = self._encode(prompt)
            plan: dict[str, list[tuple[int, list[int], list[int]]]] = {"yes": [], "no": []}
            spellings = {"yes": self.yes, "no": self.no if self.score_kind == "logodds" else ()}
            for side, words in spellings.items():
                for word in words:
                    ans = self._answer_tokens(prompt, p_ids, word)
                    seq = tuple(p_ids + ans[:-1])
                    if self.max_length is not None and len(seq) > self.max_length:
                        raise ValueError(
                            f"LMJudge: row {i} needs {len(seq)} tokens, more than max_length={self.max_length}; "
                            "shorten the row or raise max_length (nothing is truncated)."
                        )
                    key = sequences.setdefault(seq, len(sequences))
                    positions = list(range(len(p_ids) - 1, len(p_ids) - 1 + len(ans)))
                    plan[side].append((key, positions, ans))
            plans.append(plan)
        logps = self._forward_all(list(sequences), plans)
        out = np.empty(len(items), dtype=np.float64)
        for i, plan in enumerate(plans):
            yes = _logsumexp([logps[(key, tuple(ans))] for key, _, ans in plan["yes"]])
            if self.score_kind == "logodds":
                out[i] = yes - _logsumexp([logps[(key, tuple(ans))] for key, _, ans in plan["no"]])
            else:
                out[i] = yes
        n = max(len(items), 1)
        self.seconds_per_decision_ = (time.perf_counter() - start_wall) / n
        self.cpu_seconds_per_decision_ = (time.process_time() - start_cpu) / n
        tokens = sum(len(s) for s in sequences)
        scored = sum(len(ans) for plan in plans for side in plan.values() for _, _, ans in side)
        self.tokens_per_decision_ = tokens / n
        self.flops_per_decision_ = (2.0 * self._n_body * tokens + 2.0 * self._head * scored) / n
        return out

    def _forward_all(
        self, sequences: list[tuple[int, ...]], plans: list[dict[str, list[tuple[int, list[int], list[int]]]]]
    ) -> dict[tuple[int, tuple[int, ...]], float]:
        """``log P(answer tokens | sequence prefix)`` for every (sequence, answer) the plans ask for."""
        wanted: dict[int, list[tuple[list[int], list[int]]]] = {}
        for plan in plans:
            for side in plan.values():
                for key, positions, ans in side:
                    wanted.setdefault(key, []).append((positions, ans))
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
        result: dict[tuple[int, tuple[int, ...]], float] = {}
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                keys = order[b : b + self.batch_size]
                width = max(len(sequences[k]) for k in keys)
                # Left padding puts every row's last positions at the end, so logits_to_keep covers them.
                keep = max(len(sequences[k]) - min(p for ps, _ in wanted[k] for p in ps) for k in keys)
                ids = torch.full((len(keys), width), int(pad), dtype=torch.long)
                mask = torch.zeros((len(keys), width), dtype=torch.long)
                for r, k in enumerate(keys):
                    seq = sequences[k]
                    ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[r, width - len(seq) :] = 1
                position_ids = (mask.cumsum(1) - 1).clamp_min(0)
                kwargs: dict[str, Any] = {
                    "input_ids": ids.to(device),
                    "attention_mask": mask.to(device),
                    "position_ids": position_ids.to(device),
                    "use_cache": False,
                }
                if self._keep_kw is not None:
                    kwargs[self._keep_kw] = int(keep)
                logits = self.model(**kwargs).logits
                if logits.shape[1] not in (keep, width):
                    raise RuntimeError(
                        f"LMJudge: the model returned logits for {logits.shape[1]} positions, expected {keep} or "
                        f"{width}; its forward does not follow transformers' logits_to_keep contract."
                    )
                offset = width - logits.shape[1]
                for r, k in enumerate(keys):
                    pad_left = width - len(sequences[k])
                    for positions, ans in wanted[k]:
                        cols = torch.tensor([pad_left + p - offset for p in positions], device=logits.device)
                        lp = torch.log_softmax(logits[r, cols].float(), dim=-1)
                        tok = torch.tensor(ans, device=logits.device)
                        result[(k, tuple(ans))] = float(lp.gather(1, tok[:, None]).sum())
        return result


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if math.isinf(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))
