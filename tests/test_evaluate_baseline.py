"""Text-only and length baselines: a planted keyword or length signal is found, plain noise is not; the
confound warning fires when due and names what the probe could be reading."""

from __future__ import annotations

import numpy as np
import pytest

from probes.data.types import Encoded
from probes.evaluation import confound_check, length_baseline, length_features, text_baseline

WORDS = [f"w{i}" for i in range(3000)]


def _texts(n: int, seed: int, keyword: str | None) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    texts = []
    for label in y:
        words = list(rng.choice(WORDS, size=12))
        if keyword is not None and label == 1:
            words.insert(int(rng.integers(0, len(words))), keyword)
        texts.append(" ".join(words))
    return texts, y


def test_planted_keyword_gives_auroc_near_one() -> None:
    tr, ytr = _texts(400, 0, "zorblax")
    te, yte = _texts(300, 1, "zorblax")
    result = text_baseline(tr, ytr, te, yte, n_bootstrap=200)
    assert result.auroc > 0.98
    assert result.auroc_ci[0] > 0.95
    assert result.n_train == 400 and result.n_test == 300 and result.n_features > 300


def test_no_signal_gives_auroc_near_half() -> None:
    tr, ytr = _texts(400, 2, None)
    te, yte = _texts(600, 3, None)
    result = text_baseline(tr, ytr, te, yte, n_bootstrap=200)
    assert abs(result.auroc - 0.5) < 0.08


def test_group_leak_is_an_error() -> None:
    tr, ytr = _texts(20, 4, "k")
    te, yte = _texts(10, 5, "k")
    with pytest.raises(ValueError, match="both train and test"):
        text_baseline(tr, ytr, te, yte, train_groups=[f"g{i}" for i in range(20)], test_groups=["g3"] * 10)


def test_confound_check() -> None:
    msg = confound_check(0.98, 0.97)
    assert msg is not None and "confounded" in msg and "0.970" in msg
    assert confound_check(0.98, 0.70) is None
    assert confound_check(0.90, 0.86, margin=0.05) is not None
    assert confound_check(0.90, 0.84, margin=0.05) is None
    assert confound_check(0.9, None) is None
    assert "surface text" in msg
    length_msg = confound_check(0.88, 0.85, what="length/position")
    assert length_msg is not None and "position or length" in length_msg and "0.850" in length_msg


def _row(before: int, target: int, after: int) -> Encoded:
    n = before + target + after
    return Encoded(
        input_ids=tuple(range(n)),
        target_mask=tuple([False] * before + [True] * target + [False] * after),
    )


def test_length_features_on_hand_made_rows() -> None:
    rows = [
        _row(3, 4, 1),  # BOS + prompt, reply, end marker
        _row(0, 5, 0),  # the whole text is the target
        Encoded(input_ids=(1, 2, 3, 4), target_mask=(False, False, False, False)),  # target truncated away
        Encoded(input_ids=(7, 8, 9, 10, 11), target_mask=(False, True, False, True, False)),  # split target
    ]
    np.testing.assert_array_equal(length_features(rows), [[3, 4, 8], [0, 5, 5], [4, 0, 4], [1, 2, 5]])
    assert length_features([]).shape == (0, 3)


def _length_rows(n: int, seed: int, planted: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows whose prompt length depends on the label (planted) or not; paired groups of two rows."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    before = rng.integers(5, 40, n) + (40 * y if planted else 0)
    rows = [_row(int(b), int(t), 1) for b, t in zip(before, rng.integers(3, 20, n), strict=True)]
    groups = [f"s{seed}-{i // 2}" for i in range(n)]
    return length_features(rows), y, groups


def test_planted_length_signal_gives_auroc_near_one() -> None:
    Xtr, ytr, gtr = _length_rows(300, 0, planted=True)
    Xte, yte, gte = _length_rows(200, 1, planted=True)
    result = length_baseline(Xtr, ytr, Xte, yte, train_groups=gtr, test_groups=gte, n_bootstrap=200)
    assert result.auroc > 0.97
    assert result.auroc_ci[0] > 0.94
    assert result.n_train == 300 and result.n_test == 200 and result.n_features == 3


def test_no_length_signal_gives_auroc_near_half() -> None:
    Xtr, ytr, _ = _length_rows(300, 2, planted=False)
    Xte, yte, gte = _length_rows(600, 3, planted=False)
    result = length_baseline(Xtr, ytr, Xte, yte, test_groups=gte, n_bootstrap=200)
    assert abs(result.auroc - 0.5) < 0.08
    assert result.auroc_ci[0] < 0.5 < result.auroc_ci[1]


def test_length_baseline_checks_its_inputs() -> None:
    X, y, groups = _length_rows(20, 4, planted=True)
    with pytest.raises(ValueError, match="both train and test"):
        length_baseline(X, y, X, y, train_groups=groups, test_groups=groups)
    with pytest.raises(ValueError, match="same k"):
        length_baseline(X, y, X[:, :2], y)
    with pytest.raises(ValueError, match="both classes"):
        length_baseline(X, np.zeros(20), X, y)
