"""End to end on the real stories260K: a sad-vs-happy probe, bundled, stops a sad story and lets a happy one run.

The contrast: ``datasets/story_moods`` (``part: contrast``), the same story openings (neutral
setups) continued with a sad or a happy turn; the probe reads every token of the turn (``pooling="tokens"``),
so its per-token score is what a streaming monitor sees. stories260K is a 260K-parameter toy, so the probe
is weak (~0.75 token accuracy) but clearly separates the continuations of a sad and a happy prompt; the prompts and the threshold below leave a wide margin.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from conftest import STORIES

from probes import load_dataset
from probes.collection import collect
from probes.data.dataset import ContrastDataset
from probes.models import load_model
from probes.monitor import Monitor
from probes.package import ProbeBundle
from probes.train import LogisticProbe

DATASETS = Path(__file__).resolve().parents[1] / "datasets"

# A minimal pair of prompts that are not in the training data.
SAD_PROMPT = "The bird was hurt and Ben was sad. He cried."
HAPPY_PROMPT = "The bird sang and Ben was happy. He smiled."
LAYER, THRESHOLD, WINDOW, PATIENCE, NEW = 4, 0.75, 8, 3, 24


def story_moods() -> ContrastDataset:
    """The contrast pairs of the shipped dataset (sad = 1, happy = 0); the turn is the target."""
    ds = load_dataset(DATASETS / "story_moods")
    return ds.subset([i for i, part in enumerate(ds.conditions("part")) if part == "contrast"])


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
