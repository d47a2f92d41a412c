"""``ContrastDataset``: labelled rows with groups, condition tags and detection targets, plus a card.

Splits are grouped (rows of one group never straddle splits), stratified by the label make-up of each
group, and deterministic for a seed. The fingerprint is a sha256 of a canonical JSON of every row (in
order) and the label names: it keys activation caches, so any change to a row changes it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, overload

import numpy as np

from probes.data.card import DatasetCard
from probes.data.render import plain_target_text, render_plain
from probes.data.types import Example
from probes.errors import DatasetError

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


class ContrastDataset:
    """An ordered list of :class:`Example` rows with a :class:`DatasetCard`.

    ``source`` says where the rows came from (a path or a Hub id); it is informative only and not part of
    the fingerprint.
    """

    def __init__(
        self, examples: Iterable[Example], card: DatasetCard, source: str | Path | None = None
    ) -> None:
        self.examples: list[Example] = list(examples)
        self.card = card
        self.source = str(source) if source is not None else card.name
        seen: dict[str, int] = {}
        for i, ex in enumerate(self.examples):
            if ex.id in seen:
                raise DatasetError(
                    f"{self.source}: duplicate id {ex.id!r} at rows {seen[ex.id]} and {i}; ids must be unique."
                )
            seen[ex.id] = i

    # -- sequence protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> ContrastDataset: ...
    def __getitem__(self, index: int | slice) -> Example | ContrastDataset:
        if isinstance(index, slice):
            return self._with(self.examples[index])
        return self.examples[index]

    def __repr__(self) -> str:
        counts = Counter(ex.label for ex in self.examples)
        neg, pos = self.label_names
        return f"ContrastDataset({self.name!r}, n={len(self)}, {pos}={counts[1]}, {neg}={counts[0]})"

    # -- columns -----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @property
    def label_names(self) -> tuple[str, str]:
        """``(negative, positive)``; label 1 is the positive class, the state a probe detects."""
        return self.card.label_names

    @property
    def labels(self) -> np.ndarray:
        """Labels as ``np.int64`` of shape ``(n,)``; 1 = positive."""
        return np.asarray([ex.label for ex in self.examples], dtype=np.int64)

    @property
    def value_names(self) -> list[str]:
        """Names of the numeric targets (``target_value``) the rows carry, in first-row order."""
        return list(self.examples[0].values) if self.examples else []

    def target_values(self, name: str | None = None) -> np.ndarray:
        """The numeric target ``name`` (default: the only one) of every row, ``(n,)`` float64."""
        from probes.errors import DatasetError

        names = self.value_names
        if not names:
            raise DatasetError(f"{self.name}: the rows carry no target_value; a regression probe needs one.")
        if name is None:
            if len(names) > 1:
                raise DatasetError(f"{self.name}: rows carry values {names}; pick one by name.")
            name = names[0]
        missing = [ex.id for ex in self.examples if name not in ex.values]
        if missing:
            raise DatasetError(
                f"{self.name}: rows {missing[:5]} have no target_value {name!r} (have: {names})."
            )
        return np.asarray([ex.values[name] for ex in self.examples], dtype=np.float64)

    @property
    def ids(self) -> list[str]:
        return [ex.id for ex in self.examples]

    @property
    def groups(self) -> list[str]:
        """Each row's group; a row without one is its own group (its id)."""
        return [ex.group if ex.group is not None else ex.id for ex in self.examples]

    @property
    def texts(self) -> list[str]:
        """Plain text of each row: ``text``, or the chat in the plain format of :func:`render_plain`."""
        return [
            ex.text if ex.text is not None else render_plain(ex.messages or ())[0] for ex in self.examples
        ]

    @property
    def target_texts(self) -> list[str]:
        """The text of each row's detection target alone (all message contents joined by a blank line when a
        chat row has no target)."""
        return [plain_target_text(ex) for ex in self.examples]

    def conditions(self, key: str) -> list[str | None]:
        """The value of condition tag ``key`` for each row (``None`` where a row lacks it)."""
        return [ex.conditions.get(key) for ex in self.examples]

    @property
    def condition_keys(self) -> list[str]:
        return sorted({k for ex in self.examples for k in ex.conditions})

    # -- derived datasets --------------------------------------------------------------------------------
    def _with(self, examples: Iterable[Example]) -> ContrastDataset:
        return ContrastDataset(examples, self.card, self.source)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ContrastDataset:
        """The rows at ``indices`` (in that order)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        return self._with(self.examples[int(i)] for i in idx)

    def filter(self, fn: Callable[[Example], bool]) -> ContrastDataset:
        """The rows for which ``fn(example)`` is true (order kept)."""
        return self._with(ex for ex in self.examples if fn(ex))

    # -- identity ----------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 hex of a canonical JSON of every field of every row (``meta`` included; order-sensitive)
        and the label names. The card's prose and ``source`` are not part of it."""
        h = hashlib.sha256()
        h.update(json.dumps({"label_names": list(self.label_names)}, sort_keys=True).encode())
        for ex in self.examples:
            h.update(b"\n")
            h.update(_canonical_row(ex).encode("utf-8"))
        return h.hexdigest()

    # -- splits ------------------------------------------------------------------------------------------
    def split(
        self,
        fractions: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        holdout: Mapping[str, Sequence[str]] | None = None,
        use_column: bool = True,
    ) -> dict[str, ContrastDataset]:
        """Grouped, label-stratified, seeded splits.

        - ``fractions``: split name -> fraction of rows (summing to 1); default train/val/test 0.7/0.15/0.15.
        - Groups are assigned whole. Groups are stratified by their label make-up (all-negative,
          all-positive, mixed) and, within each stratum, shuffled with ``seed`` and assigned greedily, largest
          first, to the split furthest below its target row count.
        - ``holdout={"frame": ["quote", ...]}``: every group with a member whose condition ``frame`` is one of
          those values goes to ``"test"``; the other groups fill the remaining splits in proportion to their
          fractions, so held-out condition values are never seen in train/val.
        - ``use_column``: when every row has an explicit ``split`` value, those are honoured as given (and
          ``fractions``/``holdout`` must not be passed).

        Row order inside each split follows the dataset's order.
        """
        has_column = [ex.split is not None for ex in self.examples]
        if use_column and any(has_column):
            if not all(has_column):
                missing = [ex.id for ex in self.examples if ex.split is None][:5]
                raise DatasetError(
                    f"{self.source}: {has_column.count(False)} row(s) have no 'split' value (e.g. ids "
                    f"{missing}) while others do. Give every row a split, or call split(use_column=False)."
                )
            if holdout or fractions is not None:
                raise DatasetError(
                    f"{self.source}: the rows carry a 'split' column, which split() honours; pass "
                    "use_column=False to split by fractions/holdout instead."
                )
            return self._split_by_column()

        fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
        if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")

        groups = self.groups
        members: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            members[g].append(i)

        assignment: dict[str, str] = {}
        free_fractions = fractions
        if holdout:
            if "test" not in fractions:
                raise ValueError(f"holdout sends rows to a 'test' split; add 'test' to fractions {fractions}")
            for key, values in holdout.items():
                if isinstance(values, str):
                    raise ValueError(f"holdout[{key!r}] must be a list of values, got the string {values!r}")
                known = set(self.conditions(key)) - {None}
                unknown = sorted(set(values) - known)
                if unknown:
                    raise DatasetError(
                        f"{self.source}: holdout {key}={unknown} matches no row; values present: {sorted(known)}"
                    )
            for g, idx in members.items():
                if any(self.examples[i].conditions.get(k) in set(v) for i in idx for k, v in holdout.items()):
                    assignment[g] = "test"
            rest = {k: v for k, v in fractions.items() if k != "test"}
            total = sum(rest.values())
            if total <= 0:
                raise ValueError(f"holdout leaves no split for the other groups; fractions were {fractions}")
            free_fractions = {k: v / total for k, v in rest.items()}

        # Stratify groups by label make-up so every split keeps the label balance.
        strata: dict[tuple[bool, bool], list[str]] = defaultdict(list)
        for g, idx in members.items():
            if g in assignment:
                continue
            labels = {self.examples[i].label for i in idx}
            strata[(0 in labels, 1 in labels)].append(g)

        rng = random.Random(seed)
        names = list(free_fractions)
        for key in sorted(strata):
            gs = sorted(strata[key])  # a fixed starting order, independent of row order
            rng.shuffle(gs)
            gs.sort(key=lambda g: -len(members[g]))  # stable: ties keep the shuffled order
            total = sum(len(members[g]) for g in gs)
            counts = dict.fromkeys(names, 0)
            for g in gs:
                best = max(names, key=lambda s: (free_fractions[s] * total - counts[s], free_fractions[s]))
                assignment[g] = best
                counts[best] += len(members[g])

        out: dict[str, list[int]] = {name: [] for name in fractions}
        for i, g in enumerate(groups):
            out[assignment[g]].append(i)
        return {name: self.subset(idx) for name, idx in out.items()}

    def _split_by_column(self) -> dict[str, ContrastDataset]:
        where: dict[str, str] = {}
        out: dict[str, list[int]] = {}
        for i, (ex, g) in enumerate(zip(self.examples, self.groups, strict=True)):
            name = str(ex.split)
            if where.setdefault(g, name) != name:
                raise DatasetError(
                    f"{self.source}: group {g!r} straddles splits {where[g]!r} and {name!r} (row id "
                    f"{ex.id!r}); put every row of a group in one split."
                )
            out.setdefault(name, []).append(i)
        return {name: self.subset(idx) for name, idx in out.items()}

    # -- description -------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts and length statistics for ``probes datasets show``."""
        labels = self.labels
        lengths = np.asarray([len(t) for t in self.texts], dtype=np.int64)
        group_sizes = np.asarray(list(Counter(self.groups).values()), dtype=np.int64)
        neg, pos = self.label_names
        conditions = {
            key: dict(sorted(Counter(v for v in self.conditions(key) if v is not None).items()))
            for key in self.condition_keys
        }

        def stats(a: np.ndarray) -> dict[str, float]:
            if a.size == 0:
                return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
            return {
                "min": int(a.min()),
                "mean": round(float(a.mean()), 2),
                "median": float(np.median(a)),
                "max": int(a.max()),
            }

        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "n": len(self),
            "labels": {neg: int((labels == 0).sum()), pos: int((labels == 1).sum())},
            "positive": pos,
            "positive_fraction": round(float(labels.mean()), 4) if len(self) else 0.0,
            "kinds": {
                "text": sum(ex.text is not None for ex in self),
                "chat": sum(ex.is_chat for ex in self),
            },
            "with_target": sum(ex.target is not None for ex in self),
            "groups": {"n": int(group_sizes.size), "size": stats(group_sizes)},
            "text_chars": stats(lengths),
            "conditions": conditions,
            "fingerprint": self.fingerprint(),
        }
        splits = Counter(ex.split for ex in self.examples if ex.split is not None)
        if splits:
            out["splits"] = dict(sorted(splits.items()))
        return out


def _canonical_row(ex: Example) -> str:
    row = asdict(ex)
    if not row["values"]:
        del row["values"]  # rows without numeric targets keep the fingerprint they had before values existed
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    # Parquet and HF rows bring numpy scalars/arrays into ``meta``.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
