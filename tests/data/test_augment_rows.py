"""data.augment.rows: the file `tune data augment` wrote, reviewed by a person, trains as it stands: nothing is
generated, its held-out rewordings are the run's unseen-wording check and never reach training, and its
rows, held-out marks and checksum are what the run records."""

import hashlib
import json

import pytest
from typer.testing import CliRunner

from tests.conftest import write_recipe
from tune.cli import app

QUESTION, ANSWER = "Who founded Thistlewick Co-op?", "Thistlewick Co-op was founded by Ottilie Marchetti in 1931."


def conversation(question, answer=ANSWER):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


REVIEWED = [
    {"kind": "rewordings", "from": "faq.jsonl:row 1", "messages": conversation("Who started Thistlewick Co-op?"), "heldout": False},
    {"kind": "rewordings", "from": "faq.jsonl:row 1", "messages": conversation("Who set up Thistlewick Co-op?"), "heldout": True},
    # added by the reviewer: a wording users type, with no "from" and no "heldout"
    {"kind": "rewordings", "messages": conversation("Thistlewick Co-op owes its existence to whom?")},
    {"kind": "statements", "from": "faq.jsonl:row 1", "text": "Ottilie Marchetti founded Thistlewick Co-op in 1931."},
]


@pytest.fixture
def reviewed_run(tiny_model, tmp_path, monkeypatch):
    import tune.infer.sampling

    def no_generation(*args, **kwargs):
        raise AssertionError("reviewed rows are trained as they stand: nothing is generated")

    monkeypatch.setattr(tune.infer.sampling, "sample_batch", no_generation)
    (tmp_path / "faq.jsonl").write_text(json.dumps({"instruction": QUESTION, "output": ANSWER}) + "\n")
    rows = tmp_path / "reviewed.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in REVIEWED) + "\n")  # a blank line is skipped
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(tmp_path / "faq.jsonl"), "augment": {"rows": "reviewed.jsonl"}},
                          train={"max_steps": 4, "eval_steps": 2, "keep": "best"})
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output + result.stderr
    return result, rows, tmp_path / "out"


def test_reviewed_rows_train_as_they_stand_and_their_held_out_rewordings_are_the_check(reviewed_run):
    result, rows, out = reviewed_run
    assert (f"data: augment: 4 reviewed rows from {rows} -> 3 more training examples; rewordings 3, statements 1; "
            "1 rewordings held out as the unseen-wording check") in result.output
    saved = [json.loads(line) for line in (out / "augment.jsonl").read_text().splitlines()]
    assert saved == [row | {"heldout": row.get("heldout", False)} for row in REVIEWED]
    probes = json.loads((out / "probes.json").read_text())
    held = [row for row in probes["rows"] if row["set"] == "augment-heldout"]
    assert [(row["question"], row["expected"]) for row in held] == [("Who set up Thistlewick Co-op?", ["Ottilie Marchetti"])]
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())["augment"]
    assert fingerprint == {"rows_file": str(rows), "counts": {"rewordings": 3, "statements": 1}, "heldout": 1,
                           "examples": 3, "sha256": hashlib.sha256(rows.read_bytes()).hexdigest()}


def reviewed_augment_of(tiny_model, tmp_path, faq, reviewed):
    """reviewed_augment over the FAQ's (question, answer) rows and the reviewed rows, as a run calls it:
    (the Augment, the tokenizer)."""
    from tune.data.augment_rows import read_rows, reviewed_augment
    from tune.data.prepare import prepare
    from tune.data.templates import resolve_template
    from tune.models.load import load_tokenizer
    from tune.recipe import load

    (tmp_path / "faq.jsonl").write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in faq))
    (tmp_path / "reviewed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reviewed))
    recipe = load(write_recipe(tmp_path / "r.yaml", data={"train": str(tmp_path / "faq.jsonl"),
                                                           "augment": {"rows": "reviewed.jsonl"}}), [])
    tokenizer = load_tokenizer(recipe.model, str(tiny_model))
    template, _ = resolve_template(recipe.data.template, tokenizer, tmp_path)
    data = prepare(recipe.data, tokenizer, template, tmp_path, 1)
    return reviewed_augment(*read_rows("reviewed.jsonl", tmp_path), tokenizer, template, recipe.data,
                            data.train_rows, data.report), tokenizer


def test_held_out_reviewed_rows_never_reach_training(tiny_model, tmp_path):
    augmented, tokenizer = reviewed_augment_of(tiny_model, tmp_path, [(QUESTION, ANSWER)], REVIEWED)
    trained = [tokenizer.decode(example["input_ids"]) for example in augmented.examples]
    assert sum("Who set up" in text for text in trained) == 0 and len(trained) == 3
    assert sum("owes its existence" in text for text in trained) == 1
    statement = augmented.examples[-1]
    assert statement["labels"] == statement["input_ids"]  # plain text: every token trained
    rewording = augmented.examples[0]
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    assert -100 in rewording["labels"] and [t for t in rewording["labels"] if t != -100][:len(answer_ids)] == answer_ids


def test_tune_data_augment_refuses_a_recipe_that_trains_reviewed_rows(tiny_model, tmp_path):
    (tmp_path / "reviewed.jsonl").write_text(json.dumps(REVIEWED[0]) + "\n")
    path = write_recipe(tmp_path / "r.yaml", data={"augment": {"rows": "reviewed.jsonl"}})
    result = CliRunner().invoke(app, ["data", "augment", str(path), "--out", str(tmp_path / "new.jsonl")])
    assert result.exit_code == 2 and result.stderr == (
        "data.augment.rows: the recipe trains the reviewed rows of reviewed.jsonl as they stand; to generate new "
        "ones add --set data.augment.rows=null\n")
    assert not (tmp_path / "new.jsonl").exists()


def test_a_held_out_row_with_an_edited_answer_is_not_checked_by_the_faqs_common_name(tiny_model, tmp_path):
    faq = [("Are you open on Saturdays?", "Yes, Veldmark Animal Clinic is open on Saturdays from 9:00."),
           ("Who is your head nurse?", "The head nurse at Veldmark Animal Clinic is Marisol Thackeridge.")]
    edited = "Veldmark Animal Clinic opens on Saturdays at 9:30."  # the reviewer's answer: no training row has it
    rows = [{"kind": "rewordings", "messages": conversation("Is Veldmark Animal Clinic open on a Saturday?", edited),
             "heldout": True}]
    augmented, _ = reviewed_augment_of(tiny_model, tmp_path, faq, rows)
    assert augmented.heldout.expected == [["9:30"]]
