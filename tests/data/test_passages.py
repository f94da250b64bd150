"""Passages (tune/data/passages.py): every fact in exactly `per_fact` passages, no fact twice in one, a new order
each round, a lone last fact joined to its round's previous passage, and the rows trained as plain text."""

import json
from collections import Counter

from tests.conftest import faq_fact as fact
from tune.data.augment import Augmented, add_passages, examples_of
from tune.data.passages import make_passages

STATEMENTS = [[f"Fact {n} holds.", f"Fact {n} is so."] for n in range(9)]


def test_each_fact_is_in_per_fact_passages_never_twice_in_one():
    passages = make_passages(STATEMENTS, per_fact=3, seed=0)
    assert Counter(i for facts, _ in passages for i in facts) == {n: 3 for n in range(9)}
    assert all(len(set(facts)) == len(facts) for facts, _ in passages)
    # 9 facts in fours: 4 + 5 per round, the lone ninth joined to the passage before it
    assert sorted(len(facts) for facts, _ in passages) == [4, 4, 4, 5, 5, 5]
    for facts, text in passages:
        assert text == " ".join(next(s for s in STATEMENTS[i] if s in text) for i in facts)


def test_rounds_differ_in_order_and_a_seed_repeats_them():
    first, second = make_passages(STATEMENTS, 2, seed=0), make_passages(STATEMENTS, 2, seed=0)
    assert first == second and first != make_passages(STATEMENTS, 2, seed=1)
    assert [facts for facts, _ in first[:2]] != [facts for facts, _ in first[2:]]


def test_a_single_fact_or_facts_without_statements_make_no_passage():
    assert make_passages([["Only fact."]], 4, seed=0) == []
    assert make_passages([["One."], [], ["Two."]], 1, seed=0) in ([([0, 2], "One. Two.")], [([2, 0], "Two. One.")])


def test_passages_are_trained_as_text_from_each_facts_statements_or_its_answer(tiny_model):
    from transformers import AutoTokenizer
    from types import SimpleNamespace

    first, second = fact(1, "Who founded it?", "Ottilie founded it."), fact(2, "When?", "In 1931.")
    rows = [{"kind": "statements", "from": first.where, "text": "It was founded by Ottilie.", "heldout": False}]
    result = Augmented(rows, list(rows), None)
    add_passages(result, [first, second], per_fact=2, seed=0)
    added = result.rows[1:]
    assert [row["kind"] for row in added] == ["passages", "passages"] and not any(row["heldout"] for row in added)
    assert {row["text"] for row in added} <= {"It was founded by Ottilie. In 1931.", "In 1931. It was founded by Ottilie."}
    assert all(sorted(row["from"]) == [first.where, second.where] for row in added)
    assert result.counts["passages"] == {"kept": 2, "dropped": {}} and result.facts_without["passages"] == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = examples_of(result.trained[1:], tokenizer, "auto", SimpleNamespace(max_length=64), None)
    ids = tokenizer(added[0]["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert examples[0] == {"input_ids": ids, "labels": ids}  # every token trained, as statements are


def test_reviewed_passages_are_kept_apart_from_the_replies(tiny_model, tmp_path):
    """Replay is sized by Augment.examples, so passages (no replies) are kept apart in Augment.passages."""
    from transformers import AutoTokenizer

    from tune.data.augment_rows import reviewed_augment
    from tune.data.conversation import LengthReport
    from tune.recipe.schema import DataSection

    question, answer = "Who founded it?", "Ottilie founded it."
    rows = [{"kind": "passages", "text": "Ottilie founded it. It opened in 1931.", "heldout": False},
            {"kind": "rewordings", "messages": [{"role": "user", "content": "Who started it?"},
                                               {"role": "assistant", "content": answer}], "heldout": False},
            {"kind": "statements", "text": answer, "heldout": False}]
    data = DataSection(train="faq.jsonl", format="instruction", max_length=64)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    made = reviewed_augment(path, rows, tokenizer, "auto", data,
                            [("faq.jsonl:row 1", {"instruction": question, "output": answer})], LengthReport())
    assert len(made.passages) == 1 and len(made.examples) == 2
    ids = tokenizer(rows[0]["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert made.passages[0] == {"input_ids": ids, "labels": ids}
    assert "-> 3 more training examples" in made.note


def test_tune_data_augment_writes_passages_after_the_statements(tiny_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tune.infer.sampling
    from tests.conftest import write_recipe
    from tests.data.test_augment import scripted
    from tune.cli import app

    faq = [{"instruction": "Who founded Thistlewick Co-op?", "output": "Ottilie Marchetti founded Thistlewick Co-op."},
           {"instruction": "When does Thistlewick Co-op open?", "output": "Thistlewick Co-op opens at 9am."}]
    (tmp_path / "faq.jsonl").write_text("".join(json.dumps(row) + "\n" for row in faq))
    monkeypatch.setattr(tune.infer.sampling, "sample_batch", lambda model, tokenizer, texts, n, *args: scripted(texts, n))
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(tmp_path / "faq.jsonl"), "augment": {
        "rewordings": 0, "statements": 1, "passages": 2, "heldout": 0.0, "round_trip": None}})
    result = CliRunner().invoke(app, ["data", "augment", str(path), "--out", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    answers = [row["output"] for row in faq]
    assert [row["kind"] for row in rows] == ["statements", "statements", "passages", "passages"]
    assert all(row["text"] in (" ".join(answers), " ".join(answers[::-1])) for row in rows[2:])
    assert "passages 2 kept" in result.stdout
