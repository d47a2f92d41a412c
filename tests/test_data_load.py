"""Loading contrast datasets from every supported source, and validation errors that name file, line, field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from probes.data import ContrastDataset, DatasetCard, Message, Target, load_card, load_dataset
from probes.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
CITIES = ROOT.parent / "shared" / "data" / "geometry_of_truth" / "cities.csv"

CARD = {
    "name": "toy",
    "description": "Toy rows for tests.",
    "label_names": ["calm", "angry"],
    "source": "written for the tests",
    "license": "CC0-1.0",
    "how_made": "by hand",
    "confounds": ["angry rows are longer"],
}

ROWS = [
    {
        "id": "a",
        "text": "I am furious about this.",
        "label": "angry",
        "group": "g1",
        "conditions": {"frame": "quote"},
    },
    {
        "id": "b",
        "text": "What a pleasant morning.",
        "label": "calm",
        "group": "g1",
        "conditions": {"frame": "quote"},
    },
    {
        "id": "c",
        "messages": [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Livid!"}],
        "label": 1,
        "target": {"role": "assistant"},
        "conditions": {"frame": "chat"},
    },
    {
        "id": "d",
        "messages": [
            {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "Fine, thanks."},
        ],
        "label": 0,
        "target": {"message": -1, "span": [0, 4]},
    },
]


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def make_folder(tmp_path: Path, rows: list[dict | str] = ROWS, card: dict | None = CARD) -> Path:
    folder = tmp_path / "toy"
    folder.mkdir(parents=True)
    write_jsonl(folder / "data.jsonl", rows)
    if card is not None:
        (folder / "card.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return folder


def expect_error(path: Path, *needles: str, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kw)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in error:\n{msg}"
    return msg


# -- sources --------------------------------------------------------------------------------------------
def test_folder_with_card(tmp_path: Path) -> None:
    ds = load_dataset(make_folder(tmp_path))
    assert isinstance(ds, ContrastDataset)
    assert len(ds) == 4 and ds.ids == ["a", "b", "c", "d"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [1, 0, 1, 0]
    assert ds.card.label_names == ("calm", "angry") and ds.card.positive == "angry"
    assert ds.card.confounds == ("angry rows are longer",)
    assert ds.groups == ["g1", "g1", "c", "d"]  # rows without a group are their own group
    assert ds.conditions("frame") == ["quote", "quote", "chat", None]
    assert ds[2].messages == (Message("user", "How are you?"), Message("assistant", "Livid!"))
    assert ds[2].target == Target(role="assistant")
    assert ds[3].target == Target(message=-1, span=(0, 4))
    assert ds.target_texts == ["I am furious about this.", "What a pleasant morning.", "Livid!", "Fine"]
    assert ds.texts[2] == "User: How are you?\n\nAssistant: Livid!"


def test_readme_front_matter_card(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, card=None)
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(CARD) + "---\n\n# Toy\n", encoding="utf-8")
    assert load_dataset(folder).card.name == "toy"


def test_card_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, card={**CARD, "licence": "MIT"})
    expect_error(folder, "'licence'", "card.yaml")


def test_card_missing_required_key(tmp_path: Path) -> None:
    card = {k: v for k, v in CARD.items() if k != "how_made"}
    expect_error(make_folder(tmp_path, card=card), "'how_made'", "card.yaml")


def test_card_is_frozen_and_strict() -> None:
    card = DatasetCard(name="x", label_names=("no", "yes"))
    with pytest.raises(ValueError):
        card.name = "y"  # type: ignore[misc]
    with pytest.raises(DatasetError, match="label_names"):
        DatasetCard.from_dict({"name": "x", "label_names": ["yes", "yes"]})


def test_bare_jsonl_without_card_defaults_label_names(tmp_path: Path) -> None:
    rows = [{"id": "1", "text": "x", "label": True}, {"id": "2", "text": "y", "label": 0}]
    ds = load_dataset(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert ds.card.label_names == ("0", "1") and ds.name == "rows"
    assert ds.labels.tolist() == [1, 0]
    ds = load_dataset(tmp_path / "rows.jsonl", label_names=["no", "yes"], name="mine")
    assert ds.card.label_names == ("no", "yes") and ds.name == "mine"


def test_bare_file_picks_up_sibling_card(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    assert load_dataset(folder / "data.jsonl").card.name == "toy"


def test_csv_and_parquet_match_jsonl(tmp_path: Path) -> None:
    import pandas as pd

    ref = load_dataset(make_folder(tmp_path))
    frame = pd.DataFrame(
        [
            {
                **r,
                "messages": json.dumps(r["messages"]) if "messages" in r else "",
                "target": json.dumps(r["target"]) if "target" in r else "",
                "conditions": json.dumps(r.get("conditions", {})),
                "text": r.get("text", ""),
                "group": r.get("group", ""),
            }
            for r in ROWS
        ]
    )
    csv_path = tmp_path / "toy.csv"
    frame.to_csv(csv_path, index=False)
    from_csv = load_dataset(csv_path, card=make_folder(tmp_path / "x") / "card.yaml")
    assert from_csv.fingerprint() == ref.fingerprint()

    pq_rows = pd.DataFrame(
        [{**r, "label": str(r["label"]), "conditions": json.dumps(r.get("conditions", {}))} for r in ROWS]
    )
    pq_path = tmp_path / "toy.parquet"
    pq_rows.to_parquet(pq_path)
    from_pq = load_dataset(pq_path, label_names=["calm", "angry"], name="toy")
    assert from_pq.ids == ref.ids and from_pq.labels.tolist() == ref.labels.tolist()
    assert from_pq.texts == ref.texts and from_pq.target_texts == ref.target_texts
    assert [ex.target for ex in from_pq] == [ex.target for ex in ref]


def test_hf_dataset_object_and_save_to_disk(tmp_path: Path) -> None:
    import datasets

    hf = datasets.Dataset.from_dict(
        {
            "sentence": ["good film", "bad film", "great plot", "dull plot"],
            "label": [1, 0, 1, 0],
            "idx": [10, 11, 12, 13],
            "topic": ["film", "film", "plot", "plot"],
        },
        features=datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["negative", "positive"]),
                "idx": datasets.Value("int64"),
                "topic": datasets.Value("string"),
            }
        ),
    )
    ds = load_dataset(hf, text="sentence", id="idx", group="topic", conditions=["topic"], name="sst")
    assert ds.card.label_names == ("negative", "positive")  # from the ClassLabel feature
    assert ds.ids == ["10", "11", "12", "13"] and ds.groups == ["film", "film", "plot", "plot"]
    assert ds.conditions("topic") == ["film", "film", "plot", "plot"]
    hf.save_to_disk(str(tmp_path / "saved"))
    again = load_dataset(
        tmp_path / "saved", text="sentence", id="idx", group="topic", conditions=["topic"], name="sst"
    )
    assert again.fingerprint() == ds.fingerprint()
    dd = datasets.DatasetDict({"train": hf, "test": hf})
    assert len(load_dataset(dd, text="sentence", id="idx", hf_split="test")) == 4
    with pytest.raises(DatasetError, match="no split 'dev'"):
        load_dataset(dd, text="sentence", hf_split="dev")


def test_real_cities_csv_with_mapping() -> None:
    ds = load_dataset(CITIES, text="statement", label_names=["false", "true"], conditions=["country"])
    assert len(ds) == 1496
    assert (ds.labels == 1).sum() == 748 and (ds.labels == 0).sum() == 748
    assert ds[0].text == "The city of Krasnodar is in Russia." and ds[0].label == 1
    assert ds[0].meta == {"city": "Krasnodar", "correct_country": "Russia"}
    assert ds.conditions("country")[:2] == ["Russia", "South Africa"]
    # grouping by city keeps a city's true and false statements together in splits
    by_city = load_dataset(CITIES, text="statement", group="city")
    parts = by_city.split(seed=1)
    seen = [set(p.groups) for p in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_import_is_light() -> None:
    code = "import sys, probes.data; print(sorted(m for m in ('torch','transformers','datasets','pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- validation: each error names file, line, field ------------------------------------------------------
def base(**over) -> dict:
    return {"id": "x", "text": "hello", "label": 1, **over}


def rows_with(bad: dict | str, line: int = 3) -> list[dict | str]:
    """Two good rows (both classes), with ``bad`` at ``line`` (1-based)."""
    good: list[dict | str] = [base(id="p", label=1), base(id="n", label=0), base(id="q", label=0)]
    good.insert(line - 1, bad)
    return good


@pytest.mark.parametrize(
    ("bad", "needles"),
    [
        ({"id": "x", "label": 1}, ["missing field 'text' or 'messages'"]),
        ({"id": "x", "text": "hi"}, ["missing field 'label'"]),
        (base(label="furious"), ["field 'label'", "unknown label 'furious'", "'calm', 'angry'"]),
        (base(label=2), ["field 'label'", "unknown label 2"]),
        (base(text=""), ["field 'text' is empty"]),
        (base(text="   "), ["field 'text' is empty"]),
        (base(id="p"), ["field 'id'", "duplicate id 'p'", "line 1"]),
        (base(target={"span": [2, 99]}), ["field 'target'", "span [2, 99]", "outside"]),
        (base(target={"span": [3, 3]}), ["field 'target'", "span [3, 3]"]),
        (
            {
                "id": "x",
                "messages": [{"role": "user", "content": "hi"}],
                "label": 1,
                "target": {"message": 3},
            },
            ["field 'target'", "message index 3 is out of range"],
        ),
        (
            {
                "id": "x",
                "messages": [{"role": "user", "content": "hi"}],
                "label": 1,
                "target": {"role": "assistant"},
            },
            ["field 'target'", "role 'assistant'"],
        ),
        (
            {
                "id": "x",
                "messages": [{"role": "user", "content": "hi"}],
                "label": 1,
                "target": {"span": [0, 1]},
            },
            ["field 'target'", "needs a 'message' index or a 'role'"],
        ),
        (
            {
                "id": "x",
                "messages": [{"role": "user", "content": "hi"}],
                "label": 1,
                "target": {"message": 0, "span": [0, 5]},
            },
            ["field 'target'", "outside the 2 characters"],
        ),
        (
            {"id": "x", "messages": [{"role": "user", "content": ""}], "label": 1},
            ["field 'messages[0].content' is empty"],
        ),
        (
            {"id": "x", "text": "hi", "messages": [{"role": "user", "content": "hi"}], "label": 1},
            ["gives both 'text' and 'messages'"],
        ),
        (base(target={"role": "user"}), ["field 'target'", "text row can only have a 'span'"]),
        (base(target={"spam": 1}), ["field 'target'", "unknown key(s) ['spam']"]),
        ({"id": "x", "text": "hi", "lable": 1}, ["unknown field 'lable'", "did you mean 'label'"]),
        (base(condition={"frame": "quote"}), ["unknown field 'condition'", "did you mean 'conditions'"]),
        ('{"id": "x", "text": "hi", "label": 1', ["malformed JSON"]),
        ("[1, 2]", ["must be a JSON object"]),
    ],
)
def test_validation_error_names_file_line_field(tmp_path: Path, bad: dict | str, needles: list[str]) -> None:
    folder = make_folder(tmp_path, rows=rows_with(bad, line=3))
    expect_error(folder, str(folder / "data.jsonl"), "line 3", *needles)


def test_only_one_class(tmp_path: Path) -> None:
    rows = [base(id=str(i), label="angry") for i in range(3)]
    expect_error(
        make_folder(tmp_path, rows=rows), "data.jsonl", "field 'label'", "all 3 rows", "'angry'", "both"
    )


def test_all_errors_reported_together(tmp_path: Path) -> None:
    rows: list[dict | str] = [base(id="p", label=1), base(id="n", label=0)]
    rows += [base(id=f"bad{i}", label="nope") for i in range(30)]
    rows.insert(2, base(id="e", text=""))
    msg = expect_error(make_folder(tmp_path, rows=rows), "31 error(s)", "line 3", "line 4", "... and 11 more")
    assert msg.count("unknown label 'nope'") == 19


def test_csv_line_numbers_count_header_and_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        'id,text,label\n1,"a quoted\nmultiline text",1\n2,plain,0\n3,,1\n4,more,maybe\n', encoding="utf-8"
    )
    msg = expect_error(
        path, str(path), "line 5: field 'text' is empty", "line 6: field 'label'", "unknown label 'maybe'"
    )
    assert "line 4" not in msg
    ok = tmp_path / "ok.csv"
    ok.write_text('id,text,label\n1,"a quoted\nmultiline text",1\n2,plain,0\n', encoding="utf-8")
    assert load_dataset(ok)[0].text == "a quoted\nmultiline text"


def test_parquet_error_names_row_index(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "rows.parquet"
    pd.DataFrame({"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": [1, 0, 7]}).to_parquet(path)
    expect_error(path, str(path), "row index 2", "field 'label'", "unknown label 7")


def test_missing_column_suggests_mapping(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("statement,labels\nhi,1\nho,0\n", encoding="utf-8")
    expect_error(path, "line 2", "did you mean 'labels'? pass label='labels'")
    ds = load_dataset(path, text="statement", label="labels")
    assert ds.ids == ["0", "1"]  # no id column anywhere: ids are the row index


def test_partial_ids_are_an_error(tmp_path: Path) -> None:
    rows = [base(id="a", label=1), {"text": "t", "label": 0}]
    expect_error(make_folder(tmp_path, rows=rows), "line 2", "missing field 'id'")


def test_folder_with_several_data_files(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", ROWS)
    write_jsonl(folder / "b.jsonl", ROWS)
    expect_error(folder, "several data files", "a.jsonl", "b.jsonl")
    expect_error(tmp_path / "nope.jsonl", "no such file")


def test_card_file_loader(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    assert load_card(folder / "card.yaml").label_names == ("calm", "angry")


def test_single_class_control_set(tmp_path: Path) -> None:
    rows = [base(id=str(i), label="calm") for i in range(3)]
    folder = make_folder(tmp_path, rows=rows, card={**CARD, "kind": "control"})
    ds = load_dataset(folder)
    assert ds.card.kind == "control" and ds.labels.tolist() == [0, 0, 0]
    plain = make_folder(tmp_path / "p", rows=rows)
    expect_error(plain, "kind: control")
    assert load_dataset(plain, kind="control").card.kind == "control"
    with pytest.raises(DatasetError, match="kind"):
        load_dataset(plain, kind="other")


def test_unknown_hub_id_fails_offline_with_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DatasetError, match="no local file or folder, and loading it as a Hugging Face dataset"
    ):
        load_dataset("someone/no_such_dataset_xyz")


def test_a_column_mapped_to_one_field_is_not_read_as_its_namesake(tmp_path: Path) -> None:
    # The sae-probes CSVs name their label column "target", which is also the detection-target field.
    path = tmp_path / "sst.csv"
    path.write_text('"prompt","prompt_len","target"\n"a fine film","3","1"\n"a dull film","3","0"\n')
    ds = load_dataset(path, text="prompt", label="target")
    assert list(ds.labels) == [1, 0]
    assert all(ex.target is None for ex in ds)
    assert ds[0].meta == {"prompt_len": "3"}
