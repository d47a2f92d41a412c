"""ContrastDataset behaviour: grouped + stratified + seeded splits, holdout by condition, fingerprint, summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from probes.data import ContrastDataset, DatasetCard, Example, Message, Target
from probes.errors import DatasetError

CARD = DatasetCard(name="synthetic", label_names=("neg", "pos"))
FRAMES = ("quote", "story", "chat", "essay")


def make(n_groups: int = 120, seed: int = 0, with_split: bool = False) -> ContrastDataset:
    """Contrast pairs (one pos, one neg per group), some singleton groups, a few big mixed groups."""
    rng = np.random.default_rng(seed)
    rows: list[Example] = []
    for g in range(n_groups):
        frame = FRAMES[g % len(FRAMES)]
        size = int(rng.integers(1, 5))
        for k in range(size):
            label = k % 2 if size > 1 else int(rng.integers(0, 2))
            rows.append(
                Example(
                    id=f"g{g}-{k}",
                    label=label,
                    text=f"row {g} {k} " + "x" * int(rng.integers(1, 40)),
                    group=f"g{g}",
                    conditions={"frame": frame},
                    split=("train" if g % 5 else "test") if with_split else None,
                )
            )
    for i in range(30):  # rows with no group are their own group
        rows.append(
            Example(
                id=f"solo{i}",
                label=i % 2,
                text=f"solo {i}",
                conditions={"frame": "essay"},
                split="train" if with_split else None,
            )
        )
    return ContrastDataset(rows, CARD, "memory")


def test_sequence_api_and_columns() -> None:
    ds = make(10)
    assert len(ds) == len(list(ds)) == len(ds.ids)
    assert ds[0].id == ds.ids[0] and isinstance(ds[1:3], ContrastDataset) and len(ds[1:3]) == 2
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == {0, 1}
    assert ds.groups[-1] == "solo29"
    sub = ds.subset([3, 1])
    assert sub.ids == [ds.ids[3], ds.ids[1]] and sub.card is ds.card
    assert ds.subset(ds.labels == 1).ids == [ex.id for ex in ds if ex.label == 1]
    assert all(ex.label == 1 for ex in ds.filter(lambda ex: ex.label == 1))
    assert set(ds.conditions("frame")) <= set(FRAMES)


def test_duplicate_ids_rejected() -> None:
    ex = Example(id="a", label=1, text="t")
    with pytest.raises(DatasetError, match="duplicate id 'a'"):
        ContrastDataset([ex, replace(ex, label=0)], CARD)


def assert_grouped(parts: dict[str, ContrastDataset]) -> None:
    owner: dict[str, str] = {}
    for name, part in parts.items():
        for g in part.groups:
            assert owner.setdefault(g, name) == name, f"group {g} straddles {owner[g]} and {name}"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_grouped_stratified_complete(seed: int) -> None:
    ds = make()
    fr = {"train": 0.6, "val": 0.2, "test": 0.2}
    parts = ds.split(fr, seed=seed)
    assert list(parts) == ["train", "val", "test"]
    assert sorted(i for p in parts.values() for i in p.ids) == sorted(ds.ids)
    assert_grouped(parts)
    overall = ds.labels.mean()
    for name, part in parts.items():
        assert abs(len(part) / len(ds) - fr[name]) < 0.03, (name, len(part))
        assert abs(part.labels.mean() - overall) < 0.05, (name, part.labels.mean(), overall)
    # row order inside a split follows the dataset's order
    pos = {i: k for k, i in enumerate(ds.ids)}
    assert all(np.all(np.diff([pos[i] for i in p.ids]) > 0) for p in parts.values())


def test_split_deterministic_per_seed() -> None:
    ds = make()
    a, b, c = ds.split(seed=3), ds.split(seed=3), ds.split(seed=4)
    assert all(a[k].ids == b[k].ids for k in a)
    assert any(a[k].ids != c[k].ids for k in a)
    # independent of row order: the same groups land in the same split after shuffling the rows
    perm = np.random.default_rng(0).permutation(len(ds))
    shuffled = ds.subset(perm).split(seed=3)
    assert all(set(a[k].ids) == set(shuffled[k].ids) for k in a)


def test_split_holdout_by_condition() -> None:
    ds = make()
    parts = ds.split({"train": 0.7, "val": 0.1, "test": 0.2}, seed=0, holdout={"frame": ["quote"]})
    assert_grouped(parts)
    for name in ("train", "val"):
        assert "quote" not in parts[name].conditions("frame")
        assert len(parts[name]) > 0
    held = {ex.group or ex.id for ex in ds if ex.conditions.get("frame") == "quote"}
    assert set(parts["test"].groups) == held
    # a group with one held-out member goes to test whole
    mixed = [
        Example(id="a", label=1, text="a", group="G", conditions={"frame": "quote"}),
        Example(id="b", label=0, text="b", group="G", conditions={"frame": "story"}),
        *make(8).examples,
    ]
    parts = ContrastDataset(mixed, CARD).split(holdout={"frame": ["quote"]})
    assert {"a", "b"} <= set(parts["test"].ids)
    with pytest.raises(DatasetError, match="matches no row"):
        ds.split(holdout={"frame": ["poem"]})
    with pytest.raises(ValueError, match="'test'"):
        ds.split({"train": 0.5, "val": 0.5}, holdout={"frame": ["quote"]})


def test_split_honours_column() -> None:
    ds = make(with_split=True)
    parts = ds.split()
    assert set(parts) == {"train", "test"}
    assert all(ex.split == name for name, part in parts.items() for ex in part)
    assert_grouped(parts)
    ignored = ds.split({"a": 0.5, "b": 0.5}, use_column=False)
    assert set(ignored) == {"a", "b"}
    with pytest.raises(DatasetError, match="use_column=False"):
        ds.split(holdout={"frame": ["quote"]})
    straddle = ContrastDataset(
        [
            Example(id="a", label=1, text="a", group="G", split="train"),
            Example(id="b", label=0, text="b", group="G", split="test"),
        ],
        CARD,
    )
    with pytest.raises(DatasetError, match="straddles"):
        straddle.split()
    partial = ContrastDataset(
        [Example(id="a", label=1, text="a", split="train"), Example(id="b", label=0, text="b")], CARD
    )
    with pytest.raises(DatasetError, match="no 'split' value"):
        partial.split()


def test_split_fractions_validated() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        make(5).split({"train": 0.5, "test": 0.2})


def test_fingerprint_changes_only_with_content() -> None:
    ds = make(20)
    fp = ds.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert make(20).fingerprint() == fp  # same content, new objects
    rows = list(ds.examples)
    for change in (
        {"text": rows[5].text + "!"},
        {"label": 1 - rows[5].label},
        {"group": "other"},
        {"conditions": {"frame": "poem"}},
        {"target": Target(span=(0, 3))},
        {"id": "renamed"},
    ):
        changed = rows[:5] + [replace(rows[5], **change)] + rows[6:]
        assert ContrastDataset(changed, CARD).fingerprint() != fp, change
    assert ContrastDataset(rows[::-1], CARD).fingerprint() != fp  # order-sensitive
    renamed = DatasetCard(name="synthetic", label_names=("negative", "pos"))
    assert ContrastDataset(rows, renamed).fingerprint() != fp
    described = CARD.model_copy(update={"description": "new words"})
    assert ContrastDataset(rows, described).fingerprint() == fp  # card prose is not content


def test_texts_and_targets_of_chat_rows() -> None:
    chat = Example(
        id="c",
        label=1,
        messages=(Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello you")),
        target=Target(role="assistant", span=(6, 9)),
    )
    whole = replace(chat, id="w", label=0, target=None)
    ds = ContrastDataset([chat, whole], CARD)
    assert ds.texts[0] == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello you"
    assert ds.target_texts == ["you", "Be brief.\n\nHi\n\nHello you"]


def test_summary() -> None:
    ds = make(40)
    s = ds.summary()
    assert s["n"] == len(ds)
    assert s["labels"] == {"neg": int((ds.labels == 0).sum()), "pos": int((ds.labels == 1).sum())}
    assert s["groups"]["n"] == len(set(ds.groups))
    assert s["text_chars"]["min"] == min(len(t) for t in ds.texts)
    assert s["text_chars"]["max"] == max(len(t) for t in ds.texts)
    assert s["conditions"]["frame"] == dict(sorted(Counter(ds.conditions("frame")).items()))
    assert s["fingerprint"] == ds.fingerprint()
    assert "splits" not in s and make(5, with_split=True).summary()["splits"].keys() <= {"train", "test"}
