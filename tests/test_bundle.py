"""ProbeBundle: safetensors + JSON round trips, several probes per bundle, refusal of damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

from probes.errors import BundleError, FingerprintMismatchError
from probes.package import ProbeBundle, Threshold, apply_calibration, integrity
from probes.train import DiffMeansProbe, LogisticProbe


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama")[0]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 32, generator=g)
    y = (X[:, :3].sum(1) + 0.3 * torch.randn(120, generator=g) > 0).long().numpy()
    return X, y


def _two_probe_bundle(model, data) -> ProbeBundle:
    X, y = data
    bundle = ProbeBundle.from_probe(
        LogisticProbe(C=0.5).fit(X, y),
        model=model,
        layer=-1,
        name="sad",
        threshold=[{"value": 1.5, "target_fpr": 0.01, "control_set": "benign", "n_control": 400}, 0.7],
        label_names=["happy", "sad"],
        pooling="last",
        calibration={"kind": "platt", "a": 1.3, "b": -0.2},
        run="abc123",
    )
    bundle.add(DiffMeansProbe().fit(X, y), layer=2, name="angry", threshold=0.0)
    return bundle


def test_round_trip_gives_identical_scores_and_metadata(tmp_path: Path, model, data) -> None:
    X, _ = data
    bundle = _two_probe_bundle(model, data)
    bundle.save(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "probes.safetensors"]
    loaded = ProbeBundle.load(tmp_path / "b")
    assert loaded.names == ["sad", "angry"]
    for name in loaded.names:
        before, after = bundle[name], loaded[name]
        assert torch.equal(before.probe.score_torch(X), after.probe.score_torch(X))
        assert type(after.probe) is type(before.probe)
        assert after.probe.get_params() == json.loads(json.dumps(before.probe.get_params()))
    sad = loaded["sad"]
    assert sad.site == "layers.4" and sad.layer == 4  # -1 resolved against the model's 4 blocks
    assert sad.label_names == ("happy", "sad") and sad.pooling == "last"
    assert sad.thresholds[0] == Threshold(1.5, 0.01, "benign", None, 400)
    assert sad.threshold_for(0.01).value == 1.5 and sad.threshold_for().value == 1.5
    assert sad.calibration == {"kind": "platt", "a": 1.3, "b": -0.2}
    assert sad.metadata == {"run": "abc123"}
    assert loaded.model_fingerprint == bundle.model_fingerprint
    with pytest.raises(ValueError, match="target_fpr=0.05"):
        sad.threshold_for(0.05)


def test_manifest_is_plain_json_with_fingerprint_and_checksum(tmp_path: Path, model, data) -> None:
    _two_probe_bundle(model, data).save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and manifest["format"] == "probes.bundle"
    assert len(manifest["tensors_sha256"]) == 64
    fp = manifest["model"]
    assert {"name", "revision", "architecture", "hidden_size", "num_layers", "weight_hash"} <= set(fp)
    assert fp["hidden_size"] == 32 and fp["num_layers"] == 4
    entry = manifest["probes"][0]
    assert entry["kind"] == "logistic" and entry["site"] == "layers.4"
    assert set(entry["state_tensors"].values()) <= _safetensors_keys(tmp_path / "b" / "probes.safetensors")
    # No pickle anywhere: the tensors file is a safetensors header + raw buffers.
    raw = (tmp_path / "b" / "probes.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and b"__reduce__" not in raw


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return set(fh.keys())


def test_tampered_tensors_are_refused(tmp_path: Path, model, data) -> None:
    _two_probe_bundle(model, data).save(tmp_path / "b")
    path = tmp_path / "b" / "probes.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # one flipped bit in a weight
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"probes\.safetensors.*sha256.*re-export"):
        ProbeBundle.load(tmp_path / "b")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").unlink(), r"manifest\.json is missing"),
        (lambda d: (d / "probes.safetensors").unlink(), r"probes\.safetensors is missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), r"manifest\.json is not valid JSON"),
        (lambda d: _edit_manifest(d, schema_version=99), r"schema_version=99.*Upgrade probes"),
        (lambda d: _edit_manifest(d, format="other"), r"not a probes bundle manifest"),
    ],
)
def test_damaged_bundles_fail_with_the_file_and_the_fix(tmp_path: Path, model, data, damage, message) -> None:
    _two_probe_bundle(model, data).save(tmp_path / "b")
    damage(tmp_path / "b")
    with pytest.raises(BundleError, match=message):
        ProbeBundle.load(tmp_path / "b")


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_unknown_probe_kind_is_a_bundle_error(tmp_path: Path, model, data) -> None:
    _two_probe_bundle(model, data).save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["probes"][0]["kind"] = "quantum"  # a kind from another probes version, properly sealed
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(integrity.seal(manifest, {}, None)))
    with pytest.raises(BundleError, match="quantum"):
        ProbeBundle.load(tmp_path / "b")


def test_save_is_atomic_and_overwrites_only_bundles(tmp_path: Path, model, data) -> None:
    X, y = data
    first = _two_probe_bundle(model, data)
    first.save(tmp_path / "b")
    second = ProbeBundle.from_probe(LogisticProbe(C=0.01).fit(X, y), model=model, layer=1, name="other")
    second.save(tmp_path / "b")  # replacing a bundle is allowed
    assert ProbeBundle.load(tmp_path / "b").names == ["other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or backup folder left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a probe bundle"):
        second.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_fingerprint_check_names_fields_and_opt_out(model, data) -> None:
    bundle = _two_probe_bundle(model, data)
    bundle.check_model(model)  # same model: fine
    other = build_tiny_model("llama", seed=1)[0]
    with pytest.raises(FingerprintMismatchError, match=r"weight_hash.*check_fingerprint=False"):
        bundle.check_model(other)


def test_invalid_additions_are_rejected(model, data) -> None:
    X, y = data
    bundle = _two_probe_bundle(model, data)
    with pytest.raises(ValueError, match="already has a probe named 'sad'"):
        bundle.add(LogisticProbe().fit(X, y), layer=1, name="sad")
    with pytest.raises(ValueError, match="must match"):
        bundle.add(LogisticProbe().fit(X, y), layer=1, name="a/b")
    from probes.errors import NotFittedError

    with pytest.raises(NotFittedError):
        bundle.add(LogisticProbe(), layer=1, name="unfitted")


def test_normalisation_is_folded_into_the_linear_form(model, data) -> None:
    X, y = data
    mean, scale = X.mean(0), X.std(0)
    probe = LogisticProbe().fit((X - mean) / scale, y)
    entry = ProbeBundle.from_probe(
        probe, model=model, layer=2, name="n", normalization={"mean": mean, "scale": scale}
    )["n"]
    w, b = entry.score_form()
    torch.testing.assert_close(X @ w + b, entry.score(X), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entry.score(X), probe.score_torch((X - mean) / scale))


def test_calibration_maps() -> None:
    s = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    platt = apply_calibration({"kind": "platt", "a": 2.0, "b": -1.0}, s)
    torch.testing.assert_close(platt, torch.sigmoid(2 * s - 1))
    iso = apply_calibration(
        {"kind": "isotonic", "x_thresholds": [-1.0, 0.0, 1.0], "y_thresholds": [0.1, 0.4, 0.9]}, s
    )
    np.testing.assert_allclose(iso.numpy(), [0.1, 0.4, 0.65, 0.9], atol=1e-6)
    torch.testing.assert_close(apply_calibration(None, s), torch.sigmoid(s))
    with pytest.raises(ValueError, match="platt"):
        apply_calibration({"kind": "magic"}, s)
    with pytest.raises(ValueError, match="to_dict"):
        apply_calibration({"kind": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0]}, s)


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_bundle_applies_evaluate_calibrators_as_fitted(tmp_path: Path, model, data, kind: str) -> None:
    # The bundle stores evaluate's own calibrator state and must reproduce its probabilities after a reload.
    from probes.evaluation.calibration import make_calibrator

    X, y = data
    probe = LogisticProbe(C=0.5).fit(X, y)
    scores = probe.decision_function(X)
    calibrator = make_calibrator(kind).fit(scores, y)
    ProbeBundle.from_probe(probe, model=model, layer=-1, calibration=calibrator).save(tmp_path / "b")
    entry = ProbeBundle.load(tmp_path / "b")["probe"]
    assert entry.calibration == calibrator.to_dict()
    got = entry.calibrate(entry.score(X)).numpy()
    np.testing.assert_allclose(got, calibrator.transform(scores), atol=1e-5)
    with pytest.raises(ValueError, match="Unknown calibrator kind"):
        ProbeBundle.from_probe(probe, model=model, layer=-1, calibration={"method": kind})
