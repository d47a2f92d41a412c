"""Rendering rows to strings with exact character spans, and encoding them to tokens with a detection mask.

Rendering
    - Text rows render as the text itself. The target is ``target.span`` or, without one, the whole text.
    - Chat rows render through the tokenizer's chat template (``tokenizer.apply_chat_template(messages,
      tokenize=False)``) when it has one or ``chat_template=`` is given; otherwise through the **plain
      fallback format**::

          User: <content of message 0>

          Assistant: <content of message 1>

      i.e. each message as ``"<Role>: <content>"`` (the role with its first letter upper-cased: ``system`` ->
      ``System``, ``user`` -> ``User``, ``assistant`` -> ``Assistant``), messages joined by one blank line
      (``"\\n\\n"``), no trailing newline and no generation prompt. ``ContrastDataset.texts`` uses the same
      format.
    - Character spans of message contents are never found by searching for the content. The chat is
      rendered once with a unique sentinel in place of each content; the sentinels are located, the real
      contents put back, and the result must equal the real rendering of the original messages. A template
      that trims contents (``| trim``) is handled by applying the same strip; any other mismatch raises a
      :class:`~probes.errors.DatasetError` naming the row.
    - The target of a chat row is the content of the targeted message (or the ``span`` inside it); a chat
      row without a target reads the whole content of every message -- never template markup.

Encoding
    - Special tokens are added when tokenizing (BOS/CLS/SEP) unless the rendered string already begins with
      the BOS token text (a template that writes its own BOS), so BOS is never doubled.
    - A token is in the target mask when its character offsets overlap a target span, it is not a special
      token and its offsets are not empty. *Special* means: added by the tokenizer (``special_tokens_mask``:
      BOS/CLS/SEP), or one of the tokenizer's control tokens (``all_special_ids``: BOS, EOS, CLS, SEP, PAD,
      MASK, added special tokens such as ``<|im_start|>``) even where its text appears inside the content.
      The unknown-character token (``[UNK]``, ``<unk>``) is **not** special here: it stands for content the
      vocabulary cannot spell (an emoji under a WordPiece vocabulary) and is read like any other token,
      unless it is also a control token (GPT-2's ``<|endoftext|>`` is its unk, BOS and EOS at once). Leading whitespace inside a token (SentencePiece ``"▁word"``,
      byte-level ``"Ġword"``) does not count: a token joins a span by the characters it actually spells, so a
      span ending in a space does not pull in the next word, and a span starting at a word covers the
      ``"▁word"`` token. A token that straddles content and template markup (possible only where the markup
      is not a special token of the tokenizer) is included: it carries content.
    - **Truncation policy**: with ``max_length`` the left part is kept (the tokenizer's right truncation,
      special tokens included in the count). If a row's target loses all its tokens, a
      :class:`~probes.errors.DatasetError` names the row id and suggests a larger ``max_length``; a target
      that loses only some tokens keeps the surviving ones (and ``encode_dataset`` warns once with the count).
    - **Character limit**: rows are cut to ``max_chars`` characters (left part kept) *before* tokenizing, so
      memory is bounded by ``max_length`` and not by the longest row (a fast tokenizer computes offsets for
      the whole string before it truncates). The default is ``CHARS_PER_TOKEN * max_length`` characters, far
      more than ``max_length`` tokens ever spell, so a cut never changes the tokens a row keeps; a cut row
      that then tokenizes to fewer than ``max_length`` tokens is counted in a second warning (raise
      ``max_chars``). Chat contents are cut before the template is applied and the rendered text after, which
      equals cutting the rendered text. ``encode_dataset`` warns once with the number of rows cut.
    - Offsets need a fast (Rust ``tokenizers``) tokenizer; a slow one raises :class:`TokenizerError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, overload

from probes.data.types import Encoded, EncodedRows, Example, Message, Target, _RowsBuilder
from probes.errors import DatasetError, TokenizerError

if TYPE_CHECKING:  # pragma: no cover
    from probes.data.dataset import ContrastDataset

Span = tuple[int, int]
UseChatTemplate = Literal["auto"] | bool

PLAIN_SEPARATOR = "\n\n"
#: Default character limit per token of ``max_length`` (``max_chars = CHARS_PER_TOKEN * max_length``). Real
#: tokens average 3-5 characters; 64 leaves room for long runs of whitespace, code or repeated symbols.
CHARS_PER_TOKEN = 64
# tokenizers' default BPE cache capacity (DEFAULT_CACHE_CAPACITY in tokenizers/src/models/bpe/model.rs).
BPE_CACHE_CAPACITY = 10_000


@dataclass(frozen=True)
class Rendered:
    """A row rendered to one string, the character spans the probe reads, and how to tokenize it."""

    text: str
    target_spans: list[Span]
    add_special_tokens: bool


# -- targets -----------------------------------------------------------------------------------------------
def _role_title(role: str) -> str:
    return role[:1].upper() + role[1:]


def render_plain(messages: Sequence[Message]) -> tuple[str, list[Span]]:
    """The plain fallback format and the character span of each message's content."""
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    for i, m in enumerate(messages):
        if i:
            parts.append(PLAIN_SEPARATOR)
            pos += len(PLAIN_SEPARATOR)
        prefix = f"{_role_title(m.role)}: "
        parts.append(prefix + m.content)
        spans.append((pos + len(prefix), pos + len(prefix) + len(m.content)))
        pos += len(prefix) + len(m.content)
    return "".join(parts), spans


def target_message_index(example: Example) -> int | None:
    """Index of the targeted message of a chat row (``None`` = every message)."""
    messages = example.messages or ()
    t = example.target
    if t is None or (t.message is None and t.role is None):
        if t is not None and t.span is not None:
            raise DatasetError(
                f"row {example.id!r}: a chat row's target 'span' needs a 'message' index or a 'role' to say "
                'which message it is inside, e.g. {"message": -1, "span": [0, 5]}.'
            )
        return None
    if t.message is not None:
        n = len(messages)
        if not -n <= t.message < n:
            raise DatasetError(
                f"row {example.id!r}: target message index {t.message} is out of range for {n} messages."
            )
        return t.message % n
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == t.role:
            return i
    raise DatasetError(
        f"row {example.id!r}: target role {t.role!r} is not the role of any message "
        f"(roles: {sorted({m.role for m in messages})})."
    )


def _sub_span(example: Example, length: int) -> Span:
    """The target's span inside a text or message content of ``length`` chars (whole when no span)."""
    t = example.target
    if t is None or t.span is None:
        return (0, length)
    s, e = t.span
    if not 0 <= s < e <= length:
        raise DatasetError(
            f"row {example.id!r}: target span [{s}, {e}] is outside the {length} characters it points into; "
            "spans are [start, end) character offsets with 0 <= start < end <= length."
        )
    return (s, e)


def plain_target_text(example: Example) -> str:
    """The text of the detection target alone (all contents joined by a blank line for chats w/o target)."""
    if example.text is not None:
        s, e = _sub_span(example, len(example.text))
        return example.text[s:e]
    messages = example.messages or ()
    idx = target_message_index(example)
    if idx is None:
        return PLAIN_SEPARATOR.join(m.content for m in messages)
    content = messages[idx].content
    s, e = _sub_span(example, len(content))
    return content[s:e]


def _chat_target_spans(
    example: Example, content_spans: Sequence[Span | None], trimmed: bool = False
) -> list[Span]:
    """Map a chat row's target onto rendered-text spans, given each message content's span (``None`` where
    the template dropped a message). ``trimmed``: the template stripped contents, so a sub-span is shifted by
    the stripped leading whitespace and clipped to the kept text."""
    idx = target_message_index(example)
    if idx is None:
        return [s for s in content_spans if s is not None and s[0] < s[1]]
    span = content_spans[idx]
    if span is None:
        raise DatasetError(
            f"row {example.id!r}: the chat template does not render message {idx} (the target), so the "
            "probe has nothing to read; target another message or use another template."
        )
    content = (example.messages or ())[idx].content
    lead = len(content) - len(content.lstrip()) if trimmed else 0
    s, e = _sub_span(example, len(content))
    start, end = span
    s2, e2 = max(s - lead, 0), min(e - lead, end - start)
    if s2 >= e2:
        raise DatasetError(
            f"row {example.id!r}: the target span [{s}, {e}] covers only whitespace that the chat template "
            "trims away; point the span at visible text."
        )
    return [(start + s2, start + e2)]


# -- chat templates ----------------------------------------------------------------------------------------
def _sentinel(i: int) -> str:
    # Private-use code points: never in real text, no whitespace (survive ``| trim``), one per message.
    return f"\ue000{i}\ue001"


def _exact_chat_spans(
    example: Example, apply: Callable[[list[dict[str, str]]], str]
) -> tuple[str, list[Span | None], bool]:
    """Render a chat through ``apply``; return the text, each message content's exact span (``None`` where
    the template drops a message) and whether the template trimmed the contents."""
    messages = example.messages or ()
    real = apply([{"role": m.role, "content": m.content} for m in messages])
    marked = apply([{"role": m.role, "content": _sentinel(i)} for i, m in enumerate(messages)])
    found: list[tuple[int, int]] = []  # (position in marked, message index)
    for i in range(len(messages)):
        s = _sentinel(i)
        count = marked.count(s)
        if count > 1:
            raise DatasetError(
                f"row {example.id!r}: the chat template writes message {i}'s content {count} times; a "
                "single detection span cannot be defined. Use another template or the plain fallback "
                "(use_chat_template=False)."
            )
        if count == 1:
            found.append((marked.index(s), i))
    found.sort()

    # Contents substituted as-is, then as a template that trims them would write them.
    for transform in (_identity, _strip):
        pieces: list[str] = []
        spans: list[Span | None] = [None] * len(messages)
        pos_marked = 0
        length = 0
        for at, i in found:
            chunk = marked[pos_marked:at]
            content, _ = transform(messages[i].content)
            pieces.append(chunk)
            length += len(chunk)
            spans[i] = (length, length + len(content))
            pieces.append(content)
            length += len(content)
            pos_marked = at + len(_sentinel(i))
        pieces.append(marked[pos_marked:])
        if "".join(pieces) == real:
            return real, spans, transform is _strip
    raise DatasetError(
        f"row {example.id!r}: the chat template changes message contents in a way that cannot be undone "
        "(beyond trimming whitespace), so exact target spans cannot be found. Use another template or the "
        "plain fallback (use_chat_template=False)."
    )


def _identity(s: str) -> tuple[str, int]:
    return s, 0


def _strip(s: str) -> tuple[str, int]:
    stripped = s.strip()
    return stripped, (len(s) - len(s.lstrip()))


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(
    example: Example,
    tokenizer: Any = None,
    *,
    chat_template: str | None = None,
    use_chat_template: UseChatTemplate = "auto",
) -> Rendered:
    """Render one row to a string with exact target character spans (see the module docstring).

    ``use_chat_template``: ``"auto"`` uses a template when ``chat_template`` is given or the tokenizer has
    one; ``True`` requires one; ``False`` always uses the plain fallback. ``tokenizer`` may be ``None`` for
    text rows and the plain fallback.
    """
    bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else None

    def finish(text: str, spans: list[Span]) -> Rendered:
        return Rendered(text, spans, add_special_tokens=not (bos and text.startswith(bos)))

    if example.text is not None:
        return finish(example.text, [_sub_span(example, len(example.text))])
    if example.messages is None:
        raise DatasetError(f"row {example.id!r}: has neither 'text' nor 'messages'.")

    template = chat_template
    if use_chat_template is False:
        use_template = False
    else:
        use_template = template is not None or (tokenizer is not None and _has_chat_template(tokenizer))
        if use_chat_template is True and not use_template:
            raise TokenizerError(
                "use_chat_template=True but the tokenizer has no chat template; pass chat_template='...' "
                "(a Jinja string) or use_chat_template='auto' for the plain fallback."
            )
    if not use_template:
        text, content_spans = render_plain(example.messages)
        return finish(text, _chat_target_spans(example, content_spans))
    if tokenizer is None:
        raise TokenizerError("rendering with a chat template needs the tokenizer; pass tokenizer=...")

    def apply(msgs: list[dict[str, str]]) -> str:
        try:
            out = tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=template)
        except Exception as exc:  # a template's own raise_exception(), e.g. roles must alternate
            raise DatasetError(f"row {example.id!r}: the chat template failed: {exc}") from exc
        if not isinstance(out, str):
            raise TokenizerError(f"apply_chat_template returned {type(out).__name__}, expected a string.")
        return out

    text, content_spans, trimmed = _exact_chat_spans(example, apply)
    return finish(text, _chat_target_spans(example, content_spans, trimmed))


# -- the character limit ----------------------------------------------------------------------------------
def resolve_max_chars(max_chars: int | None, max_length: int | None) -> int | None:
    """The character limit in force: ``max_chars``, else ``CHARS_PER_TOKEN * max_length``, else none."""
    if max_chars is not None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be a positive number of characters, got {max_chars}.")
        return int(max_chars)
    return CHARS_PER_TOKEN * max_length if max_length is not None else None


def _clip_target(example: Example, length: int, max_chars: int) -> Target | None:
    """The target with its span clipped to the first ``max_chars`` characters of a ``length``-char part."""
    t = example.target
    if t is None or t.span is None or length <= max_chars:
        return t
    s, e = t.span
    if s >= max_chars:
        raise DatasetError(
            f"row {example.id!r}: its detection target starts at character {s}, after the first {max_chars} "
            "characters every row is cut to before tokenizing; raise max_chars (data.max_chars) or shorten "
            "the row."
        )
    return replace(t, span=(s, min(e, max_chars)))


def cut_example(example: Example, max_chars: int) -> Example:
    """``example`` with its text (or each message content) cut to ``max_chars`` characters, target clipped."""
    if example.text is not None:
        if len(example.text) <= max_chars:
            return example
        target = _clip_target(example, len(example.text), max_chars)
        return replace(example, text=example.text[:max_chars], target=target)
    messages = example.messages or ()
    if all(len(m.content) <= max_chars for m in messages):
        return example
    idx = target_message_index(example)
    target = example.target
    if idx is not None:
        target = _clip_target(example, len(messages[idx].content), max_chars)
    cut = tuple(Message(m.role, m.content[:max_chars]) for m in messages)
    return replace(example, messages=cut, target=target)


def _cut_rendered(r: Rendered, max_chars: int, example: Example) -> Rendered:
    if len(r.text) <= max_chars:
        return r
    spans = [(s, min(e, max_chars)) for s, e in r.target_spans if s < max_chars]
    if not spans:
        raise DatasetError(
            f"row {example.id!r}: its detection target lies after the first {max_chars} characters every row "
            "is cut to before tokenizing; raise max_chars (data.max_chars) or shorten the row."
        )
    return Rendered(r.text[:max_chars], spans, r.add_special_tokens)


def _render_cut(
    example: Example,
    tokenizer: Any,
    max_chars: int | None,
    chat_template: str | None,
    use_chat_template: UseChatTemplate,
) -> tuple[Rendered, bool]:
    """Render a row within the character limit; returns the rendering and whether the row was cut."""
    if max_chars is None:
        return render(
            example, tokenizer, chat_template=chat_template, use_chat_template=use_chat_template
        ), False
    cut = cut_example(example, max_chars)
    r = render(cut, tokenizer, chat_template=chat_template, use_chat_template=use_chat_template)
    final = _cut_rendered(r, max_chars, example)
    return final, cut is not example or final is not r


# -- encoding ----------------------------------------------------------------------------------------------
def _check_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer: detection masks need character offsets "
            "from a fast tokenizer. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )


def excluded_token_ids(tokenizer: Any) -> frozenset[int]:
    """The token ids a detection mask never includes: the tokenizer's special/control tokens, except the
    unknown-character token when it is nothing else (see the module docstring)."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    unk_id, unk = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if unk_id is None:
        return frozenset(ids)
    # A padding token that shares the unk id (a common Llama setup) never appears inside an encoding, so it
    # does not make the unk a control token; BOS/EOS/CLS/SEP/MASK or another added special token does.
    control = {getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "cls", "sep", "mask")}
    control |= {
        tokenizer.convert_tokens_to_ids(t)
        for t in tokenizer.all_special_tokens
        if t != unk and t != getattr(tokenizer, "pad_token", None)
    }
    if int(unk_id) not in control:
        ids.discard(int(unk_id))
    return frozenset(ids)


def _mask(
    text: str,
    offsets: Sequence[tuple[int, int]],
    special: Sequence[int],
    ids: Sequence[int],
    special_ids: frozenset[int],
    spans: Sequence[Span],
) -> list[bool]:
    """Which tokens belong to the target spans. A plain loop: measured faster than numpy here, whose
    per-row overhead dominates on rows of a few hundred tokens."""
    mask: list[bool] = []
    for (start, end), sp, tok in zip(offsets, special, ids, strict=True):
        if sp or tok in special_ids or start >= end:
            mask.append(False)
            continue
        # Judge a token by the characters it spells: skip its leading whitespace (SentencePiece "▁",
        # byte-level "Ġ") unless it is all whitespace.
        s = start
        while s < end and text[s].isspace():
            s += 1
        if s == end:
            s = start
        mask.append(any(s < e and a < end for a, e in spans))
    return mask


def _encode_rendered(
    rendered: Sequence[Rendered],
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int | None,
    was_cut: Sequence[bool] | None = None,
) -> tuple[list[Encoded], int, int]:
    """Tokenize rendered rows in one batch per ``add_special_tokens`` value; returns the encodings, the
    number of rows whose target was partly truncated, and the number of character-cut rows that came out
    shorter than ``max_length`` tokens (the cut, not the token limit, ended them)."""
    special_ids = excluded_token_ids(tokenizer)
    out: list[Encoded | None] = [None] * len(rendered)
    partly = short = 0
    for flag in (True, False):
        idx = [i for i, r in enumerate(rendered) if r.add_special_tokens is flag]
        if not idx:
            continue
        kwargs: dict[str, Any] = {}
        if max_length is not None:
            kwargs = {"truncation": True, "max_length": max_length}
        batch = tokenizer(
            [rendered[i].text for i in idx],
            add_special_tokens=flag,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            **kwargs,
        )
        for j, i in enumerate(idx):
            r = rendered[i]
            ids = [int(t) for t in batch["input_ids"][j]]
            mask = _mask(
                r.text,
                batch["offset_mapping"][j],
                batch["special_tokens_mask"][j],
                ids,
                special_ids,
                r.target_spans,
            )
            if not any(mask):
                ex = examples[i]
                if max_length is not None and len(ids) >= max_length:
                    raise DatasetError(
                        f"row {ex.id!r}: its detection target lies beyond max_length={max_length} tokens and "
                        "was truncated away; raise max_length or shorten the row."
                    )
                raise DatasetError(
                    f"row {ex.id!r}: no token covers the detection target {r.target_spans}; the target may be "
                    "only whitespace the tokenizer drops. Point it at visible text."
                )
            if max_length is not None and len(ids) >= max_length:
                last_char = max(e for _, e in r.target_spans)
                covered = max(
                    (e for (s, e), m in zip(batch["offset_mapping"][j], mask, strict=True) if m), default=0
                )
                if covered < last_char and r.text[covered:last_char].strip():
                    partly += 1
            if was_cut is not None and was_cut[i] and (max_length is None or len(ids) < max_length):
                short += 1
            out[i] = Encoded(input_ids=tuple(ids), target_mask=tuple(mask))
    return [e for e in out if e is not None], partly, short


def encode(
    example: Example,
    tokenizer: Any,
    *,
    max_length: int | None = None,
    max_chars: int | None = None,
    chat_template: str | None = None,
    use_chat_template: UseChatTemplate = "auto",
) -> Encoded:
    """Tokenize one row and mark the tokens of its detection target (see the module docstring)."""
    _check_fast(tokenizer)
    limit = resolve_max_chars(max_chars, max_length)
    r, cut = _render_cut(example, tokenizer, limit, chat_template, use_chat_template)
    encoded, _, _ = _encode_rendered([r], [example], tokenizer, max_length, [cut])
    return encoded[0]


@overload
def encode_dataset(
    dataset: ContrastDataset | Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int | None = ...,
    max_chars: int | None = ...,
    chat_template: str | None = ...,
    use_chat_template: UseChatTemplate = ...,
    progress: bool = ...,
    batch_size: int = ...,
    compact: Literal[False] = ...,
) -> list[Encoded]: ...
@overload
def encode_dataset(
    dataset: ContrastDataset | Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int | None = ...,
    max_chars: int | None = ...,
    chat_template: str | None = ...,
    use_chat_template: UseChatTemplate = ...,
    progress: bool = ...,
    batch_size: int = ...,
    compact: Literal[True],
) -> EncodedRows: ...
def encode_dataset(
    dataset: ContrastDataset | Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int | None = None,
    max_chars: int | None = None,
    chat_template: str | None = None,
    use_chat_template: UseChatTemplate = "auto",
    progress: bool = False,
    batch_size: int = 1024,
    compact: bool = False,
) -> list[Encoded] | EncodedRows:
    """Encode every row (same rules as :func:`encode`), tokenizing in batches of ``batch_size`` rows.

    ``compact``: return an :class:`~probes.data.types.EncodedRows` (flat arrays, each batch's tuples freed as
    it is added) instead of a list of :class:`Encoded`; collection uses it so memory follows the token count.

    Rows longer than ``max_chars`` characters (default ``CHARS_PER_TOKEN * max_length``) are cut before
    tokenizing, with one warning counting them.
    """
    _check_fast(tokenizer)
    with whole_text_cache_off(tokenizer):
        return _encode_dataset(
            dataset,
            tokenizer,
            max_length,
            max_chars,
            chat_template,
            use_chat_template,
            progress,
            batch_size,
            compact,
        )


def whole_texts_are_words(tokenizer: Any) -> bool:
    """Whether the fast tokenizer's BPE model sees each whole text as one "word" (no pre-tokenizer, or one that
    does not split on spaces: SentencePiece-style Llama 2, Mistral, Gemma, TinyStories tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(getattr(backend, "model", None)).__name__ != "BPE":
        return False
    pre = backend.pre_tokenizer
    return pre is None or len(pre.pre_tokenize_str("a b c")) == 1


@contextmanager
def whole_text_cache_off(tokenizer: Any) -> Iterator[None]:
    """Turn the BPE word cache off while a dataset is encoded, where its "words" are whole texts.

    The cache memoises each word's merges (up to :data:`BPE_CACHE_CAPACITY` words). Where every text is one
    word it never hits (rows differ) but keeps the last 10,000 rows' merges in native memory, which the
    allocator does not return: about 40 MiB for 12k rows of 30 tokens, a fixed cost that grew the Ray driver's
    peak RSS from 2k to 20k rows. Word-splitting tokenizers (GPT-2, Llama 3, Qwen) keep their cache, which
    hits on every common word. The tokens are the same either way; afterwards the cache is back at its
    default capacity. A tokenizers release without the (private) resize method is left as it is.
    """
    resize = getattr(
        getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None), "_resize_cache", None
    )
    if resize is None or not whole_texts_are_words(tokenizer):
        yield
        return
    resize(0)
    try:
        yield
    finally:
        resize(BPE_CACHE_CAPACITY)


def _encode_dataset(
    dataset: ContrastDataset | Sequence[Example],
    tokenizer: Any,
    max_length: int | None,
    max_chars: int | None,
    chat_template: str | None,
    use_chat_template: UseChatTemplate,
    progress: bool,
    batch_size: int,
    compact: bool,
) -> list[Encoded] | EncodedRows:
    limit = resolve_max_chars(max_chars, max_length)
    examples = list(dataset)
    out: list[Encoded] = []
    builder = _RowsBuilder() if compact else None
    partly = n_cut = n_short = 0
    starts = range(0, len(examples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="tokenizing", unit="batch")
    for start in starts:
        chunk = examples[start : start + batch_size]
        pairs = [_render_cut(ex, tokenizer, limit, chat_template, use_chat_template) for ex in chunk]
        rendered, cut = [r for r, _ in pairs], [c for _, c in pairs]
        encoded, n, short = _encode_rendered(rendered, chunk, tokenizer, max_length, cut)
        if builder is not None:
            builder.extend(encoded)
        else:
            out.extend(encoded)
        partly += n
        n_cut += sum(cut)
        n_short += short
    if n_cut:
        warnings.warn(
            f"{n_cut} row(s) longer than max_chars={limit} characters were cut to their first {limit} "
            "characters before tokenizing (memory stays bounded by max_length)"
            + (
                f"; {n_short} of them then had fewer than max_length={max_length} tokens, so the cut dropped "
                "text the model would have read: raise max_chars."
                if n_short
                else "; every cut row still filled max_length tokens."
            ),
            stacklevel=3,
        )
    if partly:
        warnings.warn(
            f"{partly} row(s) had their detection target cut by max_length={max_length}; only the surviving "
            "target tokens are read. Raise max_length to read whole targets.",
            stacklevel=3,
        )
    return builder.build() if builder is not None else out
