"""The classification format: rows -> (text, pair, label), label sets and ids, class weights, the
metrics, and what `tune validate` says about a bad row."""

import json

import pytest

from tune.data import classification as cls
from tune.errors import DataError
from tune.infer.metrics import classification_report, report_lines, write_report
from tune.recipe import DataSection


def test_row_fields_read_text_pair_and_label_through_columns():
    row = {"premise": "A dog runs.", "hypothesis": "An animal moves.", "gold": 2}
    columns = {"text": "premise", "text_pair": "hypothesis", "label": "gold"}
    assert cls.row_fields(row, columns, "f.jsonl:row 1") == ("A dog runs.", "An animal moves.", "2")
    assert cls.row_fields({"text": "fine", "label": " positive "}, {}, "w") == ("fine", None, "positive")


@pytest.mark.parametrize("row, message", [
    ({"label": "a"}, "f.jsonl:row 3: column 'text' must be non-empty text, got missing"),
    ({"text": "  ", "label": "a"}, "f.jsonl:row 3: column 'text' must be non-empty text, got empty"),
    ({"text": "x"}, "f.jsonl:row 3: column 'label' must be a label name or integer, got missing"),
    ({"text": "x", "label": True}, "f.jsonl:row 3: column 'label' must be a label name or integer, got True"),
    ({"text": "x", "label": 1.5}, "f.jsonl:row 3: column 'label' must be a label name or integer, got 1.5"),
    ({"text": "x", "text_pair": 3, "label": "a"}, "f.jsonl:row 3: column 'text_pair' must be text when present, got int"),
])
def test_bad_rows_name_file_and_row(row, message):
    with pytest.raises(DataError) as caught:
        cls.row_fields(row, {}, "f.jsonl:row 3")
    assert caught.value.problems[0].startswith(message)


def test_label_set_declared_order_wins_else_sorted():
    assert cls.label_names(["pos", "neg", "neutral"], ["neg", "pos"]) == ["pos", "neg", "neutral"]
    assert cls.label_names(None, ["pos", "neg", "pos", "neutral"]) == ["neg", "neutral", "pos"]
    assert cls.label_names(None, ["10", "2", "1"]) == ["1", "2", "10"]  # numbers sort numerically
    assert cls.label_names([0, 1], []) == ["0", "1"]
    with pytest.raises(DataError, match="data.labels: 'a' is listed more than once"):
        cls.label_names(["a", "b", "a"], [])


def test_label_mapping_round_trips(tiny_tokenizer):
    rows = [("f:row 1", "good", None, "pos"), ("f:row 2", "bad", None, "neg"), ("f:row 3", "ok", "fine", "pos")]
    names = cls.label_names(None, [label for *_, label in rows])
    label2id = {name: i for i, name in enumerate(names)}
    id2label = dict(enumerate(names))
    encoded = cls.encode(rows, tiny_tokenizer, 32, label2id)
    assert [id2label[row["labels"]] for row in encoded] == ["pos", "neg", "pos"]
    assert {id2label[i]: i for i in id2label} == label2id
    assert encoded[0]["input_ids"] == tiny_tokenizer("good")["input_ids"]


def test_unknown_label_is_one_line_naming_the_first_row():
    rows = [("e.jsonl:row 1", "a", None, "pos"), ("e.jsonl:row 2", "b", None, "maybe"), ("e.jsonl:row 5", "c", None, "huh")]
    with pytest.raises(DataError) as caught:
        cls.label_ids(rows, {"neg": 0, "pos": 1})
    assert caught.value.problems == ["e.jsonl:row 2: label 'maybe' is not in the label set (neg, pos) (1 more rows like it)"]
    assert caught.value.exit_code == 2


def test_class_weights():
    assert cls.class_weights("none", ["a", "b"], [0, 0, 0, 1]) is None
    assert cls.class_weights("balanced", ["a", "b"], [0, 0, 0, 1]) == [4 / 6, 4 / 2]
    assert cls.class_weights({"b": 3.0}, ["a", "b"], [0, 1]) == [1.0, 3.0]
    with pytest.raises(DataError, match="'c' is not a label"):
        cls.class_weights({"c": 2.0}, ["a", "b"], [0, 1])
    with pytest.raises(DataError, match="'b' has no rows"):
        cls.class_weights("balanced", ["a", "b"], [0, 0])


def test_metrics_match_a_hand_count(tmp_path):
    # true:      a a a b b c ; predicted: a a b b c c
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    b = report["per_class"]["b"]
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == (0.5, 0.5, 0.5, 2)
    f1_a, f1_c = 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 1 / 1.5
    assert report["macro_f1"] == pytest.approx((f1_a + 0.5 + f1_c) / 3)
    # a class never predicted scores 0, not NaN
    assert classification_report([0, 1], [0, 0], ["a", "b"])["per_class"]["b"]["precision"] == 0.0
    write_report(report, tmp_path, step=7)
    assert json.loads((tmp_path / "confusion_matrix.json").read_text())["labels"] == ["a", "b", "c"]
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["step"] == 7
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert report_lines(report)[0] == "accuracy 0.6667, macro-F1 0.6556 on 6 examples"


def test_validate_checks_rows_against_declared_labels(tmp_path):
    from tune.data.prepare import check

    data_file = tmp_path / "d.jsonl"
    data_file.write_text('{"text": "nice", "label": "pos"}\n{"text": "meh", "label": "maybe"}\n')
    data = DataSection(train=str(data_file), format="classification", labels=["neg", "pos"])
    assert check(data, tmp_path) == [f"{data_file}:row 2: label 'maybe' is not in data.labels (neg, pos)"]
    assert check(DataSection(train=str(data_file), format="classification"), tmp_path) == []


def test_label_lists_in_messages_are_cut_to_twelve():
    names = [f"label-{i}" for i in range(20_000)]
    shown = "label-0, label-1, label-2, label-3, label-4, label-5, label-6, label-7, label-8, label-9, label-10, label-11"
    with pytest.raises(DataError) as caught:
        cls.label_ids([("e.jsonl:row 1", "a", None, "other")], {name: i for i, name in enumerate(names)})
    assert caught.value.problems == [f"e.jsonl:row 1: label 'other' is not in the label set ({shown}, ... (19,988 more))"]
    with pytest.raises(DataError) as caught:
        cls.check_row({"text": "a", "label": "other"}, {}, names, "e.jsonl:row 1")
    assert caught.value.problems == [f"e.jsonl:row 1: label 'other' is not in data.labels ({shown}, ... (19,988 more))"]
    with pytest.raises(DataError) as caught:
        cls.class_weights({"other": 2.0}, names, [0, 1])
    assert caught.value.problems == [f"train.class_weights: 'other' is not a label ({shown}, ... (19,988 more))"]


def test_label_warning_reads_labels_already_in_hand():
    assert cls.label_warning([f"id-{i}" for i in range(40)]) == (
        "data.train: 40 labels over 40 rows, 40 of them on a single row; a classifier cannot learn a label from one "
        "example (is data.columns.label the label column?)")
    assert cls.label_warning([f"id-{i % 20}" for i in range(40)]) is None  # two rows each
    assert cls.label_warning([str(i) for i in range(19)]) is None  # too few labels to judge


def test_a_report_on_many_labels_prints_the_largest_twelve_and_stores_no_matrix(tmp_path):
    from tune.infer.metrics import MATRIX_JSON, MATRIX_PNG

    names = [f"label-{i}" for i in range(20_000)]
    # label-i has i % 5 + 1 rows; every row of label-4 is predicted as label-3, the rest right
    true = [i for i in range(20_000) for _ in range(i % 5 + 1)]
    predicted = [3 if t == 4 else t for t in true]
    report = classification_report(true, predicted, names)
    assert report["confusion_matrix"]["matrix"] is None
    assert report["confusion_matrix"]["omitted"] == ("20,000 labels: the matrix is stored for at most 100; "
                                                     "most_confused holds its largest cells off the diagonal")
    assert report["most_confused"] == [{"true": "label-4", "predicted": "label-3", "count": 5}]
    lines = report_lines(report)
    assert lines[0] == "accuracy 0.9999, macro-F1 0.9999 on 60000 examples"
    assert lines[2:15] == [
        "label-4      0.0000  0.0000  0.0000        5",
        "label-9      1.0000  1.0000  1.0000        5",
        *[f"label-{i}     1.0000  1.0000  1.0000        5" for i in range(14, 60, 5)],
        "... 19,988 more labels with 59,940 examples, mean f1 1.0000 (every label in eval_metrics.json)"]
    assert lines[15:] == ["most confused (true -> predicted): label-4 -> label-3 5"]
    write_report(report, tmp_path)
    assert json.loads((tmp_path / MATRIX_JSON).read_text())["matrix"] is None
    assert not (tmp_path / MATRIX_PNG).exists()
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) < 4_000_000


def test_a_report_on_thirteen_labels_keeps_its_matrix_but_prints_the_confusions():
    names = [f"c{i}" for i in range(13)]
    report = classification_report(list(range(13)) + [0], list(range(13)) + [1], names)
    assert len(report["confusion_matrix"]["matrix"]) == 13
    lines = report_lines(report)
    assert lines[2:4] == ["c0        1.0000  0.5000  0.6667        2", "c1        0.5000  1.0000  0.6667        1"]
    assert lines[-2:] == ["... 1 more labels with 1 examples, mean f1 1.0000 (every label in eval_metrics.json)",
                          "most confused (true -> predicted): c0 -> c1 1"]
