"""End to end on the real stories260K: a sad-vs-happy probe, bundled, stops a sad story and lets a happy one run.

The contrast: the same story openings (neutral setups) continue with a sad or a happy turn; the probe reads
every token of the turn (``pooling="tokens"``), so its per-token score is what a streaming monitor sees.
stories260K is a 260K-parameter toy, so the probe is weak (~0.75 token accuracy) but clearly separates the
continuations of a sad and a happy prompt; the prompts and the threshold below leave a wide margin.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from conftest import STORIES

from probes.collection import collect
from probes.data.card import DatasetCard
from probes.data.dataset import ContrastDataset
from probes.data.types import Example, Target
from probes.models import load_model
from probes.monitor import Monitor
from probes.package import ProbeBundle
from probes.train import LogisticProbe

SETUPS = [
    "Lily played with her red ball in the park.",
    "Tom had a little dog named Spot.",
    "Mia baked a big cake for her mom.",
    "Ben saw a little bird in the tree.",
    "Sue built a tall tower with her blocks.",
    "Max went to the beach with his dad.",
    "Anna had a pretty doll with a pink dress.",
    "Tim rode his new bike down the street.",
    "Lucy planted a flower in the garden.",
    "Jack made a kite and went outside.",
    "Amy got a new toy car for her birthday.",
    "Sam wanted to play with his friend.",
]
SAD = [
    "Then the ball was lost and she cried.",
    "One day Spot ran away and Tom was very sad.",
    "The cake fell and broke and she started to cry.",
    "The bird was hurt and could not fly. Ben was sad.",
    "The tower fell down and Sue cried and cried.",
    "A big wave took his toy and Max was sad.",
    "The doll broke and Anna felt very sad.",
    "He fell off and hurt his knee. He cried.",
    "The flower died and Lucy was sad.",
    "The kite got stuck in a tree and Jack cried.",
    "The car broke and Amy was very sad.",
    "His friend said no and Sam felt sad and alone.",
]
HAPPY = [
    "Then she found a new friend and they laughed.",
    "One day Spot learned a trick and Tom was very happy.",
    "The cake was yummy and she smiled a big smile.",
    "The bird sang a song and Ben was happy.",
    "The tower was so tall and Sue laughed and clapped.",
    "They played in the sun and Max was happy.",
    "The doll looked so nice and Anna felt very happy.",
    "He went very fast and laughed. He was happy.",
    "The flower grew big and Lucy was happy.",
    "The kite flew high in the sky and Jack smiled.",
    "The car was fast and Amy was very happy.",
    "His friend said yes and Sam felt happy and glad.",
]
# A minimal pair of prompts that are not in the training data.
SAD_PROMPT = "The bird was hurt and Ben was sad. He cried."
HAPPY_PROMPT = "The bird sang and Ben was happy. He smiled."
LAYER, THRESHOLD, WINDOW, PATIENCE, NEW = 4, 0.75, 8, 3, 24


def story_moods() -> ContrastDataset:
    """48 pairs: each setup with 4 of the turns, sad (label 1) and happy (label 0); the turn is the target."""
    rows = []
    for i, setup in enumerate(SETUPS):
        for j in range(len(SAD)):
            if (j - i) % 12 not in (0, 3, 6, 9):
                continue
            for label, turn in ((1, SAD[j]), (0, HAPPY[j])):
                text = f"{setup} {turn}"
                rows.append(
                    Example(
                        id=f"{label}-{i}-{j}",
                        label=label,
                        text=text,
                        group=f"{i}-{j}",
                        target=Target(span=(len(setup) + 1, len(text))),
                    )
                )
    card = DatasetCard(
        name="story_moods",
        description="Story openings that turn sad (1) or happy (0); the turn is the detection target.",
        label_names=("happy", "sad"),
    )
    return ContrastDataset(rows, card)


@functools.cache
def stories_bundle() -> tuple[Path, object, object]:
    """(bundle folder, model, tokenizer): the probe is trained once per test session."""
    model, tokenizer = load_model(STORIES, device="cpu", dtype="float32")
    acts = collect(model, tokenizer, story_moods(), layers=[LAYER], pooling="tokens", progress=False)
    tokens = acts[f"layers.{LAYER}"]
    labels = np.repeat(acts.labels, tokens.lengths.numpy())  # every token of a turn carries its label
    probe = LogisticProbe(C=0.1).fit(tokens.values, labels)
    folder = Path(tempfile.mkdtemp(prefix="probes-stories-")) / "sad_bundle"
    ProbeBundle.from_probe(
        probe,
        model=model,
        layer=LAYER,
        name="sad",
        threshold=THRESHOLD,
        label_names=["happy", "sad"],
        pooling="tokens",
        dataset="story_moods",
    ).save(folder)
    return folder, model, tokenizer


def test_monitor_stops_the_sad_story_and_lets_the_happy_one_run() -> None:
    folder, model, tok = stories_bundle()
    bundle = ProbeBundle.load(folder)  # what ships is what runs
    tok.padding_side = "left"
    enc = tok([SAD_PROMPT, HAPPY_PROMPT], return_tensors="pt", padding=True)
    kw = {"max_new_tokens": NEW, "do_sample": False}
    with torch.no_grad():
        plain = model.generate(**enc, **kw)
        monitor = Monitor(bundle, smoothing="rolling", window=WINDOW, patience=PATIENCE)
        with monitor.attach(model, tokenizer=tok):
            out = model.generate(**enc, **monitor.generate_kwargs(), **kw)
    trace = monitor.trace
    sad, happy = trace.rows
    prompt_len = enc["input_ids"].shape[1]
    assert sad.stopped and sad.fired_at is not None
    assert sad.fired_at - prompt_len < NEW // 2, "the sad story should be stopped early"
    # Exact stop: the firing token is the last one generated, then EOS, then padding.
    assert torch.equal(out[0, : sad.fired_at + 1], plain[0, : sad.fired_at + 1])
    assert int(out[0, sad.fired_at + 1]) == model.generation_config.eos_token_id
    assert (out[0, sad.fired_at + 2 :] == tok.pad_token_id).all()
    assert sad.token_ids[-1] == model.generation_config.eos_token_id and sad.smoothed[-2, 0] > THRESHOLD
    assert happy.fired_at is None and torch.equal(out[1], plain[1])  # the happy story runs to the end
    # Margins, so that the outcome is not a coin flip on float rounding.
    assert np.nanmax(happy.smoothed[:, 0]) < THRESHOLD - 0.2
    df = trace.to_dataframe()
    assert df[df.row == 0].smoothed.mean() > df[df.row == 1].smoothed.mean() + 0.5


def test_stream_helper_on_stories_ends_at_the_firing_token(tmp_path: Path) -> None:
    folder, model, tok = stories_bundle()
    monitor = Monitor(ProbeBundle.load(folder), smoothing="rolling", window=WINDOW, patience=PATIENCE)
    events = list(monitor.stream(model, tok, SAD_PROMPT, max_new_tokens=NEW))
    assert events[-1].fired and len(events) < NEW
    assert all(e.smoothed["sad"] > THRESHOLD for e in events[-PATIENCE:])
    text = "".join(e.text for e in events)
    ids = tok(SAD_PROMPT)["input_ids"] + [e.token_id for e in events]
    assert tok.decode(ids, skip_special_tokens=True).endswith(text)
    html = monitor.trace.to_html(tmp_path / "trace.html", tokenizer=tok)
    assert (tmp_path / "trace.html").exists() and "&#9940; stopped" in html and "class='t p'" in html
    # Real text decodes cleanly token by token: the pieces join back into the decoded row.
    row = monitor.trace.rows[0]
    assert "".join(monitor.trace._token_strings(row.token_ids, tok)) == tok.decode(row.token_ids.tolist())
    assert os.path.getsize(tmp_path / "trace.html") < 200_000
