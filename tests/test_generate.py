"""``probes generate``: on-policy datasets, on the real stories260K (plain chat fallback) - fast enough to run
the whole command, kill it with SIGKILL, and resume it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import STORIES

from probes.data import load_dataset
from probes.data.types import Example, Message, Target
from probes.errors import ConfigError, DatasetError
from probes.generate import SamplingSettings, generate_dataset, prompt_messages

ROOT = Path(__file__).resolve().parents[1]


def _chat(rid: str, *turns: tuple[str, str], target: Target | None = None) -> Example:
    return Example(id=rid, label=0, messages=tuple(Message(r, c) for r, c in turns), target=target)


def test_the_prompt_is_the_chat_up_to_the_answered_turn() -> None:
    u, a = ("user", "hi"), ("assistant", "hello")
    assert prompt_messages(_chat("a", u, a, target=Target(role="assistant"))) == (Message(*u),)
    assert prompt_messages(_chat("b", ("system", "be kind"), u)) == (
        Message("system", "be kind"),
        Message(*u),
    )
    assert prompt_messages(
        _chat("c", u, a, ("user", "more"), ("assistant", "ok"), target=Target(message=1))
    ) == (Message(*u),)
    assert prompt_messages(_chat("d", u, a)) == (Message(*u),)  # no target, ends with a reply: answer it anew
    with pytest.raises(DatasetError, match="row 't' is plain text: there is no chat turn to answer"):
        prompt_messages(Example(id="t", label=0, text="The sky is blue."))
    with pytest.raises(DatasetError, match="row 'e': its target is a 'user' message"):
        prompt_messages(_chat("e", u, a, target=Target(role="user")))


def _config(tmp_path: Path, data: str | dict, output: Path, **extra) -> Path:
    raw = {
        "model": {"name_or_path": str(STORIES), "dtype": "float32", "device": "cpu"},
        "data": data,
        "output": str(output),
        "sampling": {"n": 1, "temperature": 0.9, "max_new_tokens": 12, "seed": 3},
        "batch_size": 4,
        **extra,
    }
    path = tmp_path / f"gen-{output.name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _probes(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from probes.cli import app; app()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def stories():
    from probes.models import load_model

    return load_model(STORIES, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def honesty():
    ds = load_dataset(ROOT / "datasets" / "honesty_instructed_pairs")
    return ds.subset(list(range(12)))


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_generated_rows_keep_ids_labels_groups_conditions_and_target_the_reply(
    tmp_path, stories, honesty
) -> None:
    model, tok = stories
    sampling = SamplingSettings(n=2, temperature=0.8, max_new_tokens=10, seed=5)
    out = generate_dataset(
        model, tok, honesty, tmp_path / "gen", sampling=sampling, batch_size=5, progress=False
    )
    assert len(out) == 2 * len(honesty)
    by_id = {ex.id: ex for ex in out}
    for src in honesty:
        for k in range(2):
            row = by_id[f"{src.id}-s{k}"]
            assert (row.label, row.group, row.conditions) == (src.label, src.group, src.conditions)
            assert row.messages[:-1] == src.messages[:-1] and row.messages[-1].role == "assistant"
            assert row.target == Target(message=-1) and row.messages[-1].content.strip()
            assert row.meta["generated"]["original_reply"] == src.messages[-1].content
    # What probes run reads: the same folder through load_dataset, with the sampling settings in its card.
    again = load_dataset(tmp_path / "gen")
    assert [ex.id for ex in again] == [ex.id for ex in out]
    gen = again.card.generation
    assert gen["sampling"] == {
        "n": 2,
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 10,
        "seed": 5,
    }
    assert gen["batch_size"] == 5 and gen["prompts"] == 12 and gen["model"]["num_layers"] == 5
    assert gen["source_dataset"]["fingerprint"] == honesty.fingerprint()
    assert "seed 5" in again.card.how_made and again.card.label_names == honesty.label_names
    assert not (tmp_path / ".gen.partial").exists()
    # The seed fixes every sampled token: a second run writes the same bytes; another seed does not.
    generate_dataset(model, tok, honesty, tmp_path / "gen2", sampling=sampling, batch_size=5, progress=False)
    assert (tmp_path / "gen2" / "data.jsonl").read_bytes() == (tmp_path / "gen" / "data.jsonl").read_bytes()
    other = SamplingSettings(n=2, temperature=0.8, max_new_tokens=10, seed=6)
    generate_dataset(model, tok, honesty, tmp_path / "gen3", sampling=other, batch_size=5, progress=False)
    assert (tmp_path / "gen3" / "data.jsonl").read_bytes() != (tmp_path / "gen" / "data.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_dataset(model, tok, honesty, tmp_path / "gen", sampling=sampling, progress=False)


def test_greedy_replies_are_what_plain_generate_gives_each_prompt_alone(tmp_path, stories, honesty) -> None:
    """Batching with left padding must not change the replies (greedy, so tokens are comparable)."""
    import torch

    from probes.generate import render_prompt

    model, tok = stories
    greedy = SamplingSettings(do_sample=False, max_new_tokens=8)
    out = generate_dataset(model, tok, honesty, tmp_path / "g", sampling=greedy, batch_size=6, progress=False)
    for src, row in list(zip(honesty, out, strict=True))[:4]:
        text, special = render_prompt(prompt_messages(src), tok)
        ids = tok(text, add_special_tokens=special, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = model.generate(
                input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
            )
        new = alone[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert row.messages[-1].content == tok.decode(new, skip_special_tokens=True).strip()


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_rows_without_a_turn_to_answer_exit_2_naming_them(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "datasets/true_false_statements", tmp_path / "never")
    proc = _probes("generate", str(cfg))
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert (
        "row(s) have no turn to generate" in message
        and "is plain text: there is no chat turn to answer" in message
    )
    assert "tf-arithmetic-001-f" in message and not (tmp_path / "never").exists()


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_kill_9_then_resume_writes_what_an_uninterrupted_run_writes(tmp_path: Path) -> None:
    data = {"path": "datasets/honesty_instructed_pairs", "limit": 48}
    whole = _config(tmp_path, data, tmp_path / "whole")
    assert _probes("generate", str(whole)).returncode == 0
    expected = (tmp_path / "whole" / "data.jsonl").read_text(encoding="utf-8")

    cut = _config(tmp_path, data, tmp_path / "cut")
    replies = tmp_path / ".cut.partial" / "replies.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from probes.cli import app; app()", "generate", str(cut)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if replies.is_file() and replies.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "generation finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "cut").exists(), "a killed run must not leave an output folder"
    done_before = replies.read_bytes().count(b"\n")
    assert 2 <= done_before < 12  # 48 prompts in batches of 4: interrupted part-way
    with replies.open("ab") as fh:  # as if the kill had landed in the middle of a write
        fh.write(b'{"rows": [{"source_id": "hon-')

    resumed = _probes("generate", str(cut))
    assert resumed.returncode == 0, resumed.stderr
    got = (tmp_path / "cut" / "data.jsonl").read_text(encoding="utf-8")
    assert got == expected
    ids = [json.loads(line)["id"] for line in got.splitlines()]
    assert len(ids) == len(set(ids)) == 48
    assert not (tmp_path / ".cut.partial").exists()


def test_a_partial_run_with_other_settings_is_refused(tmp_path, stories, honesty) -> None:
    model, tok = stories
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "manifest.json").write_text(
        json.dumps({"schema": 1, "sampling": {"seed": 99}}), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="interrupted generation with other settings"):
        generate_dataset(model, tok, honesty, tmp_path / "out", progress=False)


def test_generate_config_is_strict(tmp_path: Path) -> None:
    from probes.config.generate import load_generate_config

    cfg = _config(tmp_path, "datasets/honesty_instructed_pairs", tmp_path / "o", sampling={"temprature": 1.0})
    with pytest.raises(
        ConfigError, match=r"sampling\.temprature: unknown key 'temprature' \(did you mean 'temperature'\?\)"
    ):
        load_generate_config(cfg)
    cfg = _config(tmp_path, "datasets/honesty_instructed_pairs", tmp_path / "o")
    loaded = load_generate_config(cfg, ["data.limit=10", "sampling.n=3"])
    assert loaded.data.limit == 10 and loaded.sampling.n == 3
    with pytest.raises(ConfigError, match="greedy decoding"):
        load_generate_config(cfg, ["sampling.do_sample=false", "sampling.n=2"])


def test_the_shipped_on_policy_dataset_matches_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets/emotion_genuine_vs_roleplay_onpolicy_smollm2 (probes generate on SmolLM2): every row is its
    source row with the model's reply in place of the written one, and the card says how it was sampled."""
    out = load_dataset(ROOT / "datasets" / "emotion_genuine_vs_roleplay_onpolicy_smollm2")
    src = {ex.id: ex for ex in load_dataset(ROOT / "datasets" / "emotion_genuine_vs_roleplay")}
    assert len(out) == 240 and len({ex.group for ex in out}) == 120
    for ex in out:
        s = src[ex.id]
        assert (ex.label, ex.group, ex.conditions) == (s.label, s.group, s.conditions)
        assert ex.messages[:-1] == s.messages[:-1] and ex.target == Target(message=-1)
        assert ex.meta["generated"]["original_reply"] == s.messages[-1].content
    gen = out.card.generation
    assert gen["model"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and gen["model"]["num_layers"] == 30
    assert gen["sampling"]["seed"] == 0 and gen["sampling"]["temperature"] == 0.7
    # The shipped config still selects exactly the prompts these replies answer.
    from probes.config.generate import load_generate_config
    from probes.pipeline import load_spec

    monkeypatch.chdir(ROOT)  # config paths resolve against the current directory
    cfg = load_generate_config(ROOT / "training" / "generate_emotion_smollm2.yaml")
    assert Path(cfg.output) == Path("datasets/emotion_genuine_vs_roleplay_onpolicy_smollm2")
    prompts = load_spec(cfg.data, seed=cfg.sampling.seed, what="data")
    assert gen["source_dataset"]["fingerprint"] == prompts.fingerprint()
