import pytest

from tune.data.sources import read_rows, resolve_sources
from tune.errors import DataError


def one(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return resolve_sources(str(path), None, "data.train")[0]


def refused(source) -> list[str]:
    """The problem lines reading `source` raises."""
    with pytest.raises(DataError) as caught:
        read_rows(source)
    return caught.value.problems


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


def test_parquet_txt_glob_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": "b"}]), folder / "p.parquet")
    (folder / "doc.txt").write_text("one whole document\nwith two lines\n")
    (folder / "notes.md").write_text("ignored: not a data file")
    by_folder = resolve_sources(str(folder), None, "data.train")
    assert [s.path.name for s in by_folder] == ["doc.txt", "p.parquet"]
    assert read_rows(by_folder[0]) == [{"text": "one whole document\nwith two lines\n"}]
    assert read_rows(by_folder[1]) == [{"text": "a"}, {"text": "b"}]
    by_glob = resolve_sources("data/*.parquet", tmp_path, "data.train")
    assert [s.path.name for s in by_glob] == ["p.parquet"]
    with pytest.raises(DataError) as caught:
        resolve_sources("data/*.csv", tmp_path, "data.train")
    assert caught.value.problems == ["data.train: no data files match data/*.csv"]


def test_saved_dataset_folder_with_split(tmp_path):
    import datasets

    rows = [{"prompt": "a", "completion": "b"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows * 2)}).save_to_disk(str(tmp_path / "saved"))
    source = resolve_sources(str(tmp_path / "saved"), None, "data.train")[0]
    assert source.saved == tmp_path / "saved"
    assert read_rows(source, split="test") == rows * 2
    with pytest.raises(DataError) as caught:
        read_rows(source, split="validation")
    assert caught.value.problems == [f"{tmp_path / 'saved'}: no split 'validation' (has train, test); set data.split"]


def test_weights_repeat_and_subsample(tmp_path):
    from tune.data.rows import load_rows
    from tune.recipe import DataSection

    (tmp_path / "a.jsonl").write_text("".join(f'{{"text": "a{i}"}}\n' for i in range(4)))
    (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "b{i}"}}\n' for i in range(4)))
    data = DataSection(train=["a.jsonl", {"path": "b.jsonl", "weight": 1.5}], format="completion")
    rows = load_rows(data, data.train, "data.train", tmp_path, seed=0)
    texts = [row["text"] for _, row in rows]
    assert texts[:8] == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    assert len(texts) == 10 and set(texts[8:]) <= {"b0", "b1", "b2", "b3"} and len(set(texts[8:])) == 2
    assert rows == load_rows(data, data.train, "data.train", tmp_path, seed=0)  # seeded


def test_held_out_rows_are_split_off_before_weights_repeat_the_rest(tmp_path):
    from tune.data.rows import train_eval_rows
    from tune.recipe import DataSection

    (tmp_path / "a.jsonl").write_text("".join(f'{{"text": "a{i}"}}\n' for i in range(20)))
    (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "b{i}"}}\n' for i in range(20)))
    data = DataSection(train=[{"path": "a.jsonl", "weight": 2}, {"path": "b.jsonl", "weight": 1.5}],
                       format="completion", eval_fraction=0.1)
    train, evaluation = train_eval_rows(data, tmp_path, seed=0)
    held = {row["text"] for _, row in evaluation}
    trained = [row["text"] for _, row in train]
    assert len(evaluation) == 4 and not held & set(trained)  # before: ~90% of the held-out rows were trained on
    kept_a = [t for t in trained if t.startswith("a")]
    assert len(kept_a) == 2 * len(set(kept_a)) and len(set(kept_a)) + len(held & {f"a{i}" for i in range(20)}) == 20
    kept_b = len({t for t in trained if t.startswith("b")})
    assert len([t for t in trained if t.startswith("b")]) == kept_b + round(0.5 * kept_b)
    assert (train, evaluation) == train_eval_rows(data, tmp_path, seed=0)  # seeded


def test_holding_out_the_only_row_is_one_line(tmp_path):
    from tune.data.rows import train_eval_rows
    from tune.recipe import DataSection

    (tmp_path / "notes.txt").write_text("one long document")
    data = DataSection(train="notes.txt", format="completion", eval_fraction=0.1)
    with pytest.raises(DataError) as caught:
        train_eval_rows(data, tmp_path, seed=0)
    assert caught.value.problems == ["data.eval_fraction: holding out 0.1 of 1 row leaves none to train on; give "
                                     "data.eval (a file of its own) or more rows"]


def test_a_json_object_with_a_repeated_key_is_refused(tmp_path):
    # json keeps the last value silently: {"output": "draft", "output": "final"} would train on "final" unseen
    source = one(tmp_path, "d.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "prompt": "c", "completion": "d"}\n')
    assert refused(source) == [f"{source.path}:2: key 'prompt' appears twice in one object (the last value "
                               "would silently win); remove one"]
    listed = one(tmp_path, "d.json", '[{"prompt": "a", "completion": "b", "completion": "c"}]')
    assert refused(listed) == [f"{listed.path}: key 'completion' appears twice in one object (the last value "
                               "would silently win); remove one"]


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "d"}\n')
    assert refused(resolve_sources(str(path), None, "data.train")[0]) == [
        f"{path}:2: not valid UTF-8 (byte 0xe9); save the file as UTF-8"]
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"prompt,completion\na,b\nc,\xff\n")
    assert refused(resolve_sources(str(csv_path), None, "data.train")[0]) == [
        f"{csv_path}:3: not valid UTF-8 (byte 0xff); save the file as UTF-8"]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    # Excel's "CSV UTF-8" writes one; read as text it made the first column '\ufeffprompt', "missing" yet present
    for name, text in (("d.csv", "prompt,completion\na,b\n"), ("d.jsonl", '{"prompt": "a", "completion": "b"}\n'),
                       ("d.json", '[{"prompt": "a", "completion": "b"}]')):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert read_rows(resolve_sources(str(path), None, "data.train")[0]) == [{"prompt": "a", "completion": "b"}]


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    source = one(tmp_path, "d.csv", "prompt,completion,prompt\na,b,c\n")
    assert refused(source) == [f"{source.path}:1: column 'prompt' appears twice in the header (the last would "
                               "silently win); rename one"]


def test_empty_trailing_header_columns_are_not_duplicates(tmp_path):
    source = one(tmp_path, "d.csv", "prompt,completion,,\na,b,,\n")  # what Excel leaves after the last column
    assert [{k: v for k, v in row.items() if k} for row in read_rows(source)] == [{"prompt": "a", "completion": "b"}]


def saved_splits(tmp_path):
    import datasets

    train = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    test = [{"prompt": f"t{i}", "completion": f"b{i}"} for i in range(2)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved", train, test


def test_a_source_names_its_own_split(tmp_path):
    from tune.data.rows import train_eval_rows
    from tune.recipe import DataSection

    saved, train, test = saved_splits(tmp_path)
    data = DataSection(train=str(saved), eval=[{"path": str(saved), "split": "test"}])
    got_train, got_eval = train_eval_rows(data, tmp_path, seed=0)
    assert got_train == [(f"{saved}:row {n}", row) for n, row in enumerate(train, start=1)]
    assert got_eval == [(f"{saved}[test]:row {n}", row) for n, row in enumerate(test, start=1)]
    with pytest.raises(DataError) as caught:
        train_eval_rows(DataSection(train=str(saved), eval=[{"path": str(saved), "split": "validation"}]), tmp_path, 0)
    assert caught.value.problems == [f"{saved}[validation]: no split 'validation' (has train, test); set this "
                                     "source's split"]


def test_an_eval_of_the_train_split_is_refused(tmp_path):
    # `train: org/ds` with `eval: org/ds` read data.split for both: the training rows were the eval
    from tune.data.rows import train_eval_rows
    from tune.recipe import DataSection

    saved, _, _ = saved_splits(tmp_path)
    with pytest.raises(DataError) as caught:
        train_eval_rows(DataSection(train=str(saved), eval=str(saved)), tmp_path, seed=0)
    assert caught.value.problems == [
        f"data.eval: 4 of 4 eval rows are also train rows (e.g. eval {saved}:row 1 is train {saved}:row 1), so eval "
        "loss would measure training data; give data.eval rows of its own: another file, or a split of its own "
        "({path: ..., split: test}); or set data.allow_eval_overlap: true"]
    allowed = DataSection(train=str(saved), eval=str(saved), allow_eval_overlap=True)
    assert len(train_eval_rows(allowed, tmp_path, seed=0)[1]) == 4


def test_rows_are_compared_by_the_fields_the_format_reads(tmp_path):
    from tune.data.overlap import shared_rows
    from tune.recipe import DataSection

    data = DataSection(train="t.jsonl", columns={"completion": "answer"})
    train = [("t:row 1", {"id": 1, "prompt": "q", "answer": "a"}), ("t:row 2", {"id": 2, "prompt": "q", "answer": "b"})]
    evaluation = [("e:row 1", {"id": 9, "prompt": "q", "answer": "b"}), ("e:row 2", {"id": 2, "prompt": "q", "answer": "c"})]
    assert shared_rows(data, train, evaluation) == [("e:row 1", "t:row 2")]  # another id, the same example
    chat = DataSection(train="t.jsonl", format="chat")
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert shared_rows(chat, [("t:row 1", sharegpt)], [("e:row 1", sharegpt), ("e:row 2", {"conversations": []})]) == [
        ("e:row 1", "t:row 1")]  # no field of the format: the whole row, never every row alike


def test_a_hub_source_passes_its_own_split_and_revision(tmp_path, monkeypatch):
    import datasets

    from tune.data.rows import train_eval_rows
    from tune.recipe import DataSection

    asked = []

    def load_dataset(name, split, revision):
        asked.append((name, split, revision))
        return datasets.Dataset.from_list([{"prompt": f"{split} {i}", "completion": "a"} for i in range(2)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = DataSection(train="org/ds", eval=[{"path": "org/ds", "split": "validation", "revision": "v2"}],
                       revision="v1")
    train, evaluation = train_eval_rows(data, tmp_path, seed=0)
    assert asked == [("org/ds", "train", "v1"), ("org/ds", "validation", "v2")]
    assert [where for where, _ in evaluation] == ["hub:org/ds[validation]:row 1", "hub:org/ds[validation]:row 2"]


def test_run_refuses_and_check_counts_the_same_overlap(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import write_recipe
    from tune.cli import app

    saved, _, _ = saved_splits(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(saved), "eval": str(saved)})
    refused = (f"data.eval: 4 of 4 eval rows are also train rows (e.g. eval {saved}:row 1 is train {saved}:row 1), "
               "so eval loss would measure training data; give data.eval rows of its own: another file, or a split "
               "of its own ({path: ..., split: test}); or set data.allow_eval_overlap: true\n")
    for command in (["run"], ["data", "check"]):
        result = CliRunner().invoke(app, [*command, str(recipe)])
        assert (result.exit_code, result.stderr) == (2, refused)
    partly = tmp_path / "eval.jsonl"  # one of three eval rows is a train row: check warns, run goes on
    partly.write_text('{"prompt": "q1", "completion": "a1"}\n{"prompt": "x", "completion": "y"}\n'
                      '{"prompt": "z", "completion": "w"}\n')
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(saved), "eval": str(partly)})
    result = CliRunner().invoke(app, ["data", "check", str(recipe)])
    assert result.exit_code == 0, result.stderr
    assert "train/eval overlap: 1 identical examples" in result.output
    assert (f"warning: 1 eval examples also appear in train (e.g. eval {partly}:row 1 is train {saved}:row 2): eval "
            "loss will look too good") in result.output
