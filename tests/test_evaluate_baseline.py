"""Text-only baseline: a planted keyword is found, plain noise is not; the confound warning fires when due."""

from __future__ import annotations

import numpy as np
import pytest

from probes.evaluation import confound_check, text_baseline

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
