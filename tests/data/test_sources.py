import pytest

from tune.data.sources import read_rows, resolve_sources
from tune.errors import DataError


def one(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return resolve_sources(str(path), None, "data.train")[0]


def test_jsonl_json_and_csv_give_the_same_rows(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    assert read_rows(one(tmp_path, "d.jsonl", '{"prompt": "a", "completion": "b"}\n\n'
                                              '{"prompt": "c", "completion": "d"}\n')) == rows
    assert read_rows(one(tmp_path, "d.json", '[{"prompt": "a", "completion": "b"}, '
                                             '{"prompt": "c", "completion": "d"}]')) == rows
    assert read_rows(one(tmp_path, "d.csv", "prompt,completion\na,b\nc,d\n")) == rows


def test_bad_jsonl_line_is_named(tmp_path):
    source = one(tmp_path, "d.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n')
    with pytest.raises(DataError) as caught:
        read_rows(source)
    assert caught.value.problems == [
        f"{source.path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 16); "
        "each line must be one JSON object"]


def test_empty_file_is_an_error(tmp_path):
    source = one(tmp_path, "d.jsonl", "")
    with pytest.raises(DataError) as caught:
        read_rows(source)
    assert caught.value.problems == [f"{source.path}: no rows; the file is empty"]


def test_csv_row_with_extra_fields(tmp_path):
    source = one(tmp_path, "d.csv", "prompt,completion\na,b,c\n")
    with pytest.raises(DataError) as caught:
        read_rows(source)
    assert caught.value.problems == [f"{source.path}:2: more fields than the header has columns"]


def test_missing_file_and_hub_id(tmp_path):
    with pytest.raises(DataError) as caught:
        resolve_sources(["nope.jsonl"], tmp_path, "data.train")
    assert caught.value.problems[0].startswith("data.train: data file not found: nope.jsonl")
    assert resolve_sources("tatsu-lab/alpaca", tmp_path, "data.train")[0].hub_id == "tatsu-lab/alpaca"


def test_relative_path_found_beside_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    monkeypatch.chdir("/")
    assert resolve_sources("d.jsonl", tmp_path, "data.train")[0].path == tmp_path / "d.jsonl"
