"""Bundle integrity: one digest over manifest and tensors, plain-file checks, signatures, modes, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch
from conftest import STORIES, build_tiny_model
from typer.testing import CliRunner

from probes.errors import BundleError
from probes.package import Ed25519Key, HmacKey, ProbeBundle, Threshold
from probes.package import integrity as integ
from probes.package.signing import ENV_HMAC, ENV_PUBLIC_KEY, ENV_SIGNING_KEY
from probes.train import DiffMeansProbe, LogisticProbe

SECRET = "correct horse battery staple 42"


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama")[0]


@pytest.fixture(autouse=True)
def _no_keys_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (ENV_HMAC, ENV_SIGNING_KEY, ENV_PUBLIC_KEY):
        monkeypatch.delenv(var, raising=False)


def _bundle(model) -> ProbeBundle:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 32, generator=g)
    y = (X[:, 0] > 0).long().numpy()
    bundle = ProbeBundle.from_probe(
        LogisticProbe(C=0.5).fit(X, y),
        model=model,
        layer=2,
        name="sad",
        threshold={"value": 1.5, "target_fpr": 0.01, "control_set": "benign", "n_control": 400},
        calibration={"kind": "platt", "a": 1.3, "b": -0.2},
        run="abc",
    )
    return bundle.add(DiffMeansProbe().fit(X, y), layer=3, name="angry", threshold=0.0)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _edit(folder: Path, change) -> None:
    manifest = _manifest(folder)
    change(manifest)
    _write(folder, manifest)


EDITS = {
    "threshold 1e9": (
        lambda m: m["probes"][0]["thresholds"][0].update(value=1e9),
        r"probes\[sad\]\.thresholds",
    ),
    "site": (
        lambda m: m["probes"][0].update(site="layers.1", layer=1),
        r"probes\[sad\]\.layer, probes\[sad\]\.site",
    ),
    "calibration": (lambda m: m["probes"][0]["calibration"].update(b=5.0), r"probes\[sad\]\.calibration"),
    "fingerprint": (lambda m: m["model"].update(weight_hash="0" * 16), r"\bmodel changed"),
    "metadata": (lambda m: m["probes"][1]["metadata"].update(note="x"), r"probes\[angry\]\.metadata"),
    "dropped probe": (lambda m: m["probes"].pop(1), r"probes\[angry\]\.kind \(removed\)"),
    "tensors_sha256": (lambda m: m.update(tensors_sha256="0" * 64), r"tensors_sha256 changed"),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_any_manifest_edit_is_refused_naming_what_changed(tmp_path: Path, model, edit: str) -> None:
    change, named = EDITS[edit]
    _bundle(model).save(tmp_path / "b")
    ProbeBundle.load(tmp_path / "b")  # intact: loads
    _edit(tmp_path / "b", change)
    with pytest.raises(BundleError, match=rf"edited after the bundle was saved: .*{named}.*re-export"):
        ProbeBundle.load(tmp_path / "b")


def test_reformatting_the_json_is_not_an_edit(tmp_path: Path, model) -> None:
    _bundle(model).save(tmp_path / "b")
    manifest = _manifest(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))  # same content
    assert ProbeBundle.load(tmp_path / "b").names == ["sad", "angry"]


def test_editing_the_part_hashes_too_is_still_caught(tmp_path: Path, model) -> None:
    _bundle(model).save(tmp_path / "b")
    manifest = _manifest(tmp_path / "b")
    manifest["probes"][0]["thresholds"][0]["value"] = 1e9
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    manifest["integrity"]["parts"].update(integ.part_digests(body, None))  # a careful editor
    _write(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match="integrity record itself was edited"):
        ProbeBundle.load(tmp_path / "b")
    del manifest["integrity"]
    _write(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match="no valid integrity record"):
        ProbeBundle.load(tmp_path / "b")


def test_a_changed_weight_is_named(tmp_path: Path, model) -> None:
    from safetensors.torch import load_file, save_file

    _bundle(model).save(tmp_path / "b")
    path = tmp_path / "b" / "probes.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("angry/"))
    tensors[key] = tensors[key] * 2  # a valid safetensors file with one edited tensor
    save_file(tensors, str(path), metadata={"format": "probes.bundle"})
    with pytest.raises(BundleError, match=rf"tensors changed: tensor {key}\b.*re-export"):
        ProbeBundle.load(tmp_path / "b")
    path.write_bytes(path.read_bytes()[:-7])  # truncated: unreadable
    with pytest.raises(BundleError, match="does not match the sha256.*corrupted"):
        ProbeBundle.load(tmp_path / "b")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "name", ["../probes.safetensors", "/etc/passwd", "/dev/zero", "sub/x.safetensors", ".."]
)
def test_tensors_file_must_be_a_plain_name_inside_the_bundle(tmp_path: Path, model, name: str) -> None:
    _bundle(model).save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "probes.safetensors", tmp_path / "probes.safetensors")
    _edit(tmp_path / "b", lambda m: m.update(tensors_file=name))
    with pytest.raises(BundleError, match="edited after the bundle was saved: tensors_file"):
        ProbeBundle.load(tmp_path / "b")
    # Even with the digest recomputed (an editor who reruns it), the path is refused before it is opened.
    manifest = _manifest(tmp_path / "b")
    _write(tmp_path / "b", integ.seal(manifest, {}, None))
    with pytest.raises(BundleError, match="not a plain file name inside the bundle"):
        ProbeBundle.load(tmp_path / "b")


@pytest.mark.timeout(60)
def test_links_and_devices_are_not_followed(tmp_path: Path, model) -> None:
    _bundle(model).save(tmp_path / "b")
    tensors = tmp_path / "b" / "probes.safetensors"
    tensors.unlink()
    tensors.symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(BundleError, match="symbolic link"):
        ProbeBundle.load(tmp_path / "b")
    tensors.unlink()
    os.mkfifo(tensors)  # opening a fifo blocks until a writer comes
    with pytest.raises(BundleError, match="not a regular file"):
        ProbeBundle.load(tmp_path / "b")
    manifest = tmp_path / "b" / "manifest.json"
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="symbolic link"):
        ProbeBundle.load(tmp_path / "b")


def test_bundles_are_readable_by_other_accounts(tmp_path: Path, model) -> None:
    old = os.umask(0o077)  # even under a strict umask
    try:
        folder = _bundle(model).save(tmp_path / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}


def test_resaving_after_adding_a_generation_threshold_is_valid(tmp_path: Path, model) -> None:
    _bundle(model).save(tmp_path / "b")
    loaded = ProbeBundle.load(tmp_path / "b")
    gen = Threshold(2.0, 0.05, "benign-gen", None, 200, kind="generation", record={"alpha": 0.3, "n": 200})
    updated = loaded.with_thresholds(sad=[*loaded["sad"].thresholds, gen])
    updated.save(tmp_path / "b")  # same folder, as `probes calibrate` does
    again = ProbeBundle.load(tmp_path / "b")
    assert again["sad"].thresholds[-1] == gen
    _edit(tmp_path / "b", lambda m: m["probes"][0]["thresholds"][1]["record"].update(alpha=0.9))
    with pytest.raises(BundleError, match=r"probes\[sad\]\.thresholds changed"):
        ProbeBundle.load(tmp_path / "b")
    _edit(tmp_path / "b", lambda m: m["probes"][0]["thresholds"][1].update(kind="text"))
    with pytest.raises(BundleError, match=r"probes\[sad\]\.thresholds changed"):
        ProbeBundle.load(tmp_path / "b")


def test_schema_1_bundles_are_refused_with_the_fix(tmp_path: Path, model) -> None:
    _bundle(model).save(tmp_path / "b")
    manifest = _manifest(tmp_path / "b")
    manifest["schema_version"] = 1
    del manifest["integrity"]
    _write(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match=r"schema_version=1.*cannot be detected.*probes train"):
        ProbeBundle.load(tmp_path / "b")


# --- signatures -----------------------------------------------------------------------------------------
def _forge(folder: Path, key=None) -> None:
    """Edit the threshold and reseal the manifest as probes would (signed with ``key``, or unsigned)."""
    from safetensors.torch import load_file

    manifest = _manifest(folder)
    manifest["probes"][0]["thresholds"][0]["value"] = 1e9
    _write(folder, integ.seal(manifest, load_file(str(folder / "probes.safetensors")), key))


def test_hmac_signed_bundles_verify_and_forgeries_do_not(tmp_path: Path, model) -> None:
    key = HmacKey(SECRET)
    _bundle(model).save(tmp_path / "b", signing_key=key)
    loaded = ProbeBundle.load(tmp_path / "b", verify_key=key)
    assert loaded.signature["scheme"] == "hmac-sha256" and loaded.signature["key_id"] == key.key_id
    assert SECRET not in (tmp_path / "b" / "manifest.json").read_text()
    with pytest.raises(BundleError, match="is signed with hmac-sha256 key .* not with the configured"):
        ProbeBundle.load(tmp_path / "b", verify_key=HmacKey("another secret of enough length"))

    _forge(tmp_path / "b")  # an editor without the key reseals the digest: the digest alone now passes ...
    assert ProbeBundle.load(tmp_path / "b")["sad"].thresholds[0].value == 1e9
    with pytest.raises(BundleError, match="is not signed, but bundle verification is configured"):
        ProbeBundle.load(tmp_path / "b", verify_key=key)  # ... the signature check does not
    manifest = _manifest(tmp_path / "b")
    manifest["integrity"]["signature"] = loaded.signature  # the old signature pasted onto the forgery
    _write(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match="signature does not verify"):
        ProbeBundle.load(tmp_path / "b", verify_key=key)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        HmacKey("short")


def test_keys_from_the_environment_sign_saves_and_verify_loads(
    tmp_path: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = Ed25519Key.generate()
    private.write_pem(tmp_path / "key.pem")
    private.write_pem(tmp_path / "key.pub.pem", private=False)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600

    monkeypatch.setenv(ENV_SIGNING_KEY, str(tmp_path / "key.pem"))
    _bundle(model).save(tmp_path / "b")  # signed by the environment's key
    monkeypatch.delenv(ENV_SIGNING_KEY)
    monkeypatch.setenv(ENV_PUBLIC_KEY, str(tmp_path / "key.pub.pem"))  # a serving host: public key only
    assert ProbeBundle.load(tmp_path / "b").signature["scheme"] == "ed25519"

    _forge(tmp_path / "b", Ed25519Key.generate())  # re-signed with the forger's own key
    with pytest.raises(BundleError, match="is signed with ed25519 key .* not with the configured"):
        ProbeBundle.load(tmp_path / "b")
    manifest = _manifest(tmp_path / "b")
    manifest["integrity"]["signature"]["key_id"] = private.key_id  # claims to be ours
    _write(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match="signature does not verify"):
        ProbeBundle.load(tmp_path / "b")
    _bundle(model).save(tmp_path / "unsigned", signing_key=None)
    with pytest.raises(BundleError, match="is not signed"):
        ProbeBundle.load(tmp_path / "unsigned")
    with pytest.raises(BundleError, match="cannot sign"):
        _bundle(model).save(tmp_path / "c", signing_key=Ed25519Key.from_pem(tmp_path / "key.pub.pem"))

    monkeypatch.setenv(ENV_HMAC, SECRET)
    with pytest.raises(BundleError, match="set only one kind of bundle key"):
        ProbeBundle.load(tmp_path / "b")


def test_an_openssl_key_pair_works(tmp_path: Path, model) -> None:
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", tmp_path / "k.pem"], check=True)
    subprocess.run(
        ["openssl", "pkey", "-in", tmp_path / "k.pem", "-pubout", "-out", tmp_path / "k.pub"], check=True
    )
    _bundle(model).save(tmp_path / "b", signing_key=Ed25519Key.from_pem(tmp_path / "k.pem"))
    ProbeBundle.load(tmp_path / "b", verify_key=Ed25519Key.from_pem(tmp_path / "k.pub"))
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BundleError, match="not an unencrypted ed25519 PEM key"):
        Ed25519Key.from_pem(tmp_path / "bad.pem")


# --- command line ---------------------------------------------------------------------------------------
def test_probes_monitor_exits_2_on_an_edited_bundle(tmp_path: Path) -> None:
    import typer
    from test_monitor_stories import SAD_PROMPT, stories_bundle

    from probes.monitor.cli import EXIT_FIRED, EXIT_USAGE, register

    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    folder, _, _ = stories_bundle()
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    _edit(edited, lambda m: m["probes"][0]["thresholds"][0].update(value=1e9))
    args = ["--model", str(STORIES), "--prompt", SAD_PROMPT, "--device", "cpu", "--max-new-tokens", "24"]
    args += ["--smoothing", "rolling", "--window", "8", "--patience", "3"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        original = CliRunner().invoke(app, ["monitor", str(folder), *args])
        result = CliRunner().invoke(app, ["monitor", str(edited), *args])
    assert original.exit_code == EXIT_FIRED, original.output  # the original stops this prompt ...
    assert result.exit_code == EXIT_USAGE, result.output  # ... the edited copy is refused, never exit 0
    assert "probes[sad].thresholds changed" in result.output


def test_probes_evaluate_exits_2_on_an_edited_bundle(tmp_path: Path, model) -> None:
    from probes.cli import EXIT_BAD_INPUT, app

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: gpt2\ndata: {train: x.jsonl}\n")
    _bundle(model).save(run_dir / "bundle")
    _edit(run_dir / "bundle", lambda m: m["probes"][0].update(site="layers.1"))
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--data", str(data)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "probes[sad].site" in result.output
