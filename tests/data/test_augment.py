"""data.augment's data side, with a scripted generator: the exact candidates kept and dropped (and why),
the rows trained on, and the held-out rewordings that never reach training."""

import json

from tune.data.augment import augment
from tune.data.augment_prompts import prompt_for, source_text
from tune.data.facts import Fact

FOUNDED = Fact("faq.jsonl:row 1", [{"role": "user", "content": "Who founded Thistlewick Co-op?"},
                                   {"role": "assistant", "content": "Thistlewick Co-op was founded by Ottilie Marchetti in 1931."}],
               "Who founded Thistlewick Co-op?", "Thistlewick Co-op was founded by Ottilie Marchetti in 1931.")

CANDIDATES = {
    "rewordings": [
        "Who was the founder of Thistlewick Co-op?",          # kept
        "Who founded Thistlewick Co-op?",                     # a copy of the question
        "who was the FOUNDER of Thistlewick Co-op ?",         # a copy of the first (case, spacing, punctuation)
        "Who started the co-op?",                             # lost a name ("Thistlewick Co-op")
        "Thistlewick Co-op was founded by whom",              # not one question
        "Who?",                                               # too short
        "Which person started Thistlewick Co-op?",            # kept
        "Rewritten: Who set up Thistlewick Co-op?\nQuestion: more",  # kept: the label and the rest are cut
    ],
    "statements": [
        "Ottilie Marchetti founded Thistlewick Co-op in 1931.",   # kept
        "Who founded Thistlewick Co-op in 1931?",                 # a question
        "Ottilie Marchetti founded it in 1931.",                  # lost a name (the subject)
        "Founded.",                                               # too short
        "thistlewick co-op was founded by Ottilie Marchetti in 1931",  # a copy of the answer, the first statement
    ],
    "reverse": [
        "Which co-op did Ottilie Marchetti found?",      # kept
        "Who founded Thistlewick Co-op?",                # a copy of the question
        "What did Thistlewick Co-op do in 1931?",        # names the answer
        "Which co-op was founded in a river town?",      # lost the fact's names or numbers
    ],
    "from_answer": [  # questions asked from the answer alone, as rewording candidates
        "By whom was Thistlewick Co-op founded in 1931?",        # adds a number the question never had
        "Who was Thistlewick Co-op founded by?",                 # kept
        "Was Thistlewick Co-op founded by Ottilie Marchetti?",   # adds a name: gives the answer away
        "Who was the founder of Thistlewick Co-op?",             # a copy of a rewording kept before it
    ],
}


def scripted(prompts, n):
    """The candidates of the kind each prompt asks for (its instruction line tells the kind)."""
    kinds = {prompt_for(kind, "").split("\n")[0]: kind for kind in CANDIDATES}
    return [CANDIDATES[kinds[p.split("\n")[0]]][:n] for p in prompts]


def test_a_scripted_generator_keeps_and_drops_exactly():
    result = augment(scripted, [FOUNDED], {"rewordings": 4, "statements": 2, "reverse": 1}, samples=8,
                     heldout_share=0.0, seed=0)
    kept = [(row["kind"], row.get("text") or row["messages"][-2]["content"]) for row in result.rows]
    assert kept == [("rewordings", "Who was the founder of Thistlewick Co-op?"),
                    ("rewordings", "Which person started Thistlewick Co-op?"),
                    ("rewordings", "Who set up Thistlewick Co-op?"),
                    ("statements", "Thistlewick Co-op was founded by Ottilie Marchetti in 1931."),  # the answer itself
                    ("statements", "Ottilie Marchetti founded Thistlewick Co-op in 1931."),
                    ("reverse", "Which co-op did Ottilie Marchetti found?")]
    assert result.counts == {
        "rewordings": {"kept": 3, "dropped": {"a copy": 2, "lost a name or number": 1, "not one question": 1,
                                              "too short or too long": 1}},
        "statements": {"kept": 2, "dropped": {"a question, not a statement": 1, "lost a name or number": 1,
                                              "too short or too long": 1, "a copy": 1}},
        "reverse": {"kept": 1, "dropped": {"a copy": 1, "names the answer": 1,
                                           "lost the fact's names or numbers": 1}}}
    # every generated conversation keeps the row's answer; reverse questions too
    answers = {row["messages"][-1]["content"] for row in result.rows if "messages" in row}
    assert answers == {FOUNDED.answer} and result.heldout is None


def test_questions_asked_from_the_answer_join_the_rewordings_through_the_same_filters():
    asked = []

    def generate(prompts, n):
        asked.append((prompts[0].split("\n")[0], n, prompts[0].split("\n")[-2]))
        return scripted(prompts, n)

    result = augment(generate, [FOUNDED], {"rewordings": 8}, samples=8, heldout_share=0.0, seed=0, from_answer=4)
    assert asked == [(prompt_for("rewordings", "").split("\n")[0], 8, "Question: Who founded Thistlewick Co-op?"),
                     (prompt_for("from_answer", "").split("\n")[0], 4, f"Fact: {FOUNDED.answer}")]
    assert [row["messages"][-2]["content"] for row in result.rows] == [
        "Who was the founder of Thistlewick Co-op?", "Which person started Thistlewick Co-op?",
        "Who set up Thistlewick Co-op?", "Who was Thistlewick Co-op founded by?"]
    assert result.counts["rewordings"]["dropped"] == {"a copy": 3, "lost a name or number": 1, "not one question": 1,
                                                      "too short or too long": 1, "adds a name or number": 2}
    listed = Fact("row 2", [], "What does the Basic plan include?", "The Basic plan includes:\n- 5 projects\n- email support")
    assert source_text("from_answer", listed) == "The Basic plan includes: - 5 projects - email support"


def test_held_out_rewordings_never_reach_training_and_become_the_unseen_check():
    result = augment(scripted, [FOUNDED], {"rewordings": 4}, samples=8, heldout_share=0.25, seed=0)
    held = [row["messages"][-2]["content"] for row in result.rows if row["heldout"]]
    trained = [row["messages"][-2]["content"] for row in result.trained]
    assert len(held) == 1 and len(trained) == 2 and not set(held) & set(trained)
    assert result.heldout.questions == held and result.heldout.expected == [["Ottilie Marchetti"]]
    again = augment(scripted, [FOUNDED], {"rewordings": 4}, samples=8, heldout_share=0.25, seed=0)
    assert json.dumps(again.rows) == json.dumps(result.rows)  # seeded


def test_farthest_holds_out_the_rewordings_sharing_fewest_words_with_the_question():
    # kept: "Who was the founder of ...?" (every content word of the question), "Which person started ...?"
    # and "Who set up ...?" (half of them each): the two farthest are held out, whatever the seed
    for seed in (0, 1, 2):
        result = augment(scripted, [FOUNDED], {"rewordings": 4}, samples=8, heldout_share=0.5, seed=seed,
                         heldout_pick="farthest")
        assert result.heldout.questions == ["Which person started Thistlewick Co-op?", "Who set up Thistlewick Co-op?"]
        assert [row["messages"][-2]["content"] for row in result.trained] == ["Who was the founder of Thistlewick Co-op?"]


def test_a_row_with_no_usable_candidate_is_counted_and_the_rest_go_on():
    other = Fact("faq.jsonl:row 2", [{"role": "user", "content": "How long is the warranty?"},
                                     {"role": "assistant", "content": "The warranty lasts 2 years."}],
                 "How long is the warranty?", "The warranty lasts 2 years.")
    # "Who started the co-op?" names nothing, but asks about nothing the warranty question does
    result = augment(scripted, [FOUNDED, other], {"rewordings": 2, "reverse": 1}, samples=8, heldout_share=0.0, seed=0)
    # the scripted candidates all ask about Thistlewick Co-op, so the warranty row keeps none of them;
    # and the warranty question names nothing, so no reverse question can be asked of it
    assert result.facts_without == {"rewordings": 1, "reverse": 1}
    assert [row["from"] for row in result.rows] == ["faq.jsonl:row 1"] * 3


def test_generated_candidates_are_cached_by_content(tiny_model, monkeypatch):
    """A second run asks nothing of the model; a changed prompt, sample count or sampling knob asks again."""
    import torch

    from tune.infer import answer_cache, sampling

    calls = []

    def sample_batch(model, tokenizer, texts, samples, max_new_tokens, temperature, top_p, seed):
        calls.append((texts, samples, temperature))
        return [[f"{text} #{i}" for i in range(samples)] for text in texts]

    monkeypatch.setattr(sampling, "sample_batch", sample_batch)
    model = type("Model", (), {"device": torch.device("cpu"), "dtype": torch.float32})()
    setting = {"generator": "tiny", "seed": 1, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 48}
    first = answer_cache.cached_sampler(model, None, str(tiny_model), setting)(["a", "b"], 2)
    again = answer_cache.cached_sampler(model, None, str(tiny_model), setting)(["a", "b"], 2)
    assert first == again == [["a #0", "a #1"], ["b #0", "b #1"]] and len(calls) == 1
    answer_cache.cached_sampler(model, None, str(tiny_model), setting)(["a", "c"], 2)
    answer_cache.cached_sampler(model, None, str(tiny_model), setting)(["a", "b"], 3)
    answer_cache.cached_sampler(model, None, str(tiny_model), setting | {"temperature": 0.7})(["a", "b"], 2)
    assert len(calls) == 4


def test_the_round_trip_keeps_questions_that_fit_their_own_answer_best():
    when = Fact("faq.jsonl:row 2", [{"role": "user", "content": "When was Thistlewick Co-op founded?"},
                                    {"role": "assistant", "content": "Thistlewick Co-op was founded in 1931."}],
                "When was Thistlewick Co-op founded?", "Thistlewick Co-op was founded in 1931.")
    candidates = {"rewordings": ["In what year was Thistlewick Co-op founded?",   # fits its own answer: kept
                                 "Who founded Thistlewick Co-op?",                # the other row's question: unlikely
                                 "Who started Thistlewick Co-op?",                # fits the founder's answer better
                                 "Is Thistlewick Co-op a shop?"]}                 # makes its answer much less likely
    likelihood = {("In what year was Thistlewick Co-op founded?", when.answer): -1.1,
                  ("In what year was Thistlewick Co-op founded?", FOUNDED.answer): -2.0,
                  ("Who started Thistlewick Co-op?", when.answer): -1.2,
                  ("Who started Thistlewick Co-op?", FOUNDED.answer): -0.9,
                  ("Is Thistlewick Co-op a shop?", when.answer): -2.5,
                  ("Is Thistlewick Co-op a shop?", FOUNDED.answer): -2.5,
                  (when.question, when.answer): -1.0, (FOUNDED.question, FOUNDED.answer): -1.0}
    score = lambda pairs: [likelihood.get(pair, -3.0) for pair in pairs]  # noqa: E731
    generate = lambda prompts, n: [candidates["rewordings"] if "When was" in p else [] for p in prompts]  # noqa: E731
    result = augment(generate, [FOUNDED, when], {"rewordings": 4}, samples=4, heldout_share=0.0, seed=0,
                     score=score, margin=0.5)
    assert [row["messages"][-2]["content"] for row in result.rows] == ["In what year was Thistlewick Co-op founded?"]
    assert result.counts["rewordings"]["dropped"] == {"asks something else (round trip)": 2,
                                                      "fits another row's answer better (round trip)": 1}


def test_each_candidate_is_compared_with_every_one_of_its_rivals():
    """Four rows, so each has three rivals: a candidate dropped at its first rival must not shift the scores
    the next candidate is judged by."""
    def fact(n: int, question: str, answer: str) -> Fact:
        return Fact(f"faq.jsonl:row {n}", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    question, answer)
    rows = [fact(1, "When does Thistlewick Co-op open?", "At 7:45."), fact(2, "When does Thistlewick Co-op close?", "At 19:00."),
            fact(3, "When does Thistlewick Co-op deliver?", "On Fridays."), fact(4, "When does Thistlewick Co-op restock?", "On Mondays.")]
    first, second = "At what hour does Thistlewick Co-op close?", "At what hour does Thistlewick Co-op open?"
    likelihood = {(first, "At 7:45."): -1.0, (first, "At 19:00."): -0.5, (first, "On Fridays."): -0.2,
                  (first, "On Mondays."): -0.2, (second, "At 7:45."): -1.0}
    score = lambda pairs: [likelihood.get(pair, -3.0 if "hour" in pair[0] else -1.0) for pair in pairs]  # noqa: E731
    generate = lambda prompts, n: [[first, second] if "open?" in p else [] for p in prompts]  # noqa: E731
    result = augment(generate, rows, {"rewordings": 2}, samples=2, heldout_share=0.0, seed=0, score=score, margin=0.5)
    assert [row["messages"][-2]["content"] for row in result.rows] == [second]
    assert result.counts["rewordings"]["dropped"] == {"fits another row's answer better (round trip)": 1}


def test_tune_data_augment_writes_the_rows_a_run_would_train(tiny_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tune.infer.sampling
    from tests.conftest import write_recipe
    from tune.cli import app

    (tmp_path / "faq.jsonl").write_text(json.dumps({"instruction": FOUNDED.question, "output": FOUNDED.answer}) + "\n")
    monkeypatch.setattr(tune.infer.sampling, "sample_batch", lambda model, tokenizer, texts, n, *args: scripted(texts, n))
    bare = write_recipe(tmp_path / "bare.yaml", data={"train": str(tmp_path / "faq.jsonl")})
    refused = CliRunner().invoke(app, ["data", "augment", str(bare), "--out", str(tmp_path / "rows.jsonl")])
    assert refused.exit_code == 2 and refused.stderr == (
        "data.augment: the recipe has no augment section; add `augment: {}` under data (defaults: 4 rewordings and "
        "2 statements per row)\n")
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(tmp_path / "faq.jsonl"), "augment": {
        "rewordings": 2, "statements": 2, "heldout": 0.0, "round_trip": None}})
    result = CliRunner().invoke(app, ["data", "augment", str(path), "--out", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(r["kind"], r.get("text") or r["messages"][-2]["content"]) for r in rows] == [
        ("rewordings", "Who was the founder of Thistlewick Co-op?"),
        ("rewordings", "Which person started Thistlewick Co-op?"),
        ("statements", FOUNDED.answer), ("statements", "Ottilie Marchetti founded Thistlewick Co-op in 1931.")]
    written, hint = result.stdout.rstrip().split("\n")
    assert written.startswith("augment: 1 rows -> 4 more training examples; rewordings 2 kept") and \
        written.endswith(f"wrote {tmp_path / 'rows.jsonl'}")
    assert hint == f"review it (cut, fix or add rows), then `data.augment.rows: {tmp_path / 'rows.jsonl'}` trains it as it stands"


def test_a_rewording_may_name_what_the_faq_is_about_but_not_the_answer():
    # people name the business they ask; the name most answers share gives no answer away, the hours would
    saturday = Fact("faq.jsonl:row 4", [{"role": "user", "content": "Are you open on Saturdays?"},
                                        {"role": "assistant", "content": "Yes, Veldmark Animal Clinic is open on Saturdays from 9:00."}],
                    "Are you open on Saturdays?", "Yes, Veldmark Animal Clinic is open on Saturdays from 9:00.",
                    common="Veldmark Animal Clinic")
    candidates = ["Is Veldmark Animal Clinic open on Saturdays?", "Is the Veldmark clinic open on Saturdays?",
                  "Is Veldmark Animal Clinic open on Saturdays from 9:00?", "Is Corrow Night Vets open on Saturdays?"]
    result = augment(lambda prompts, n: [candidates for _ in prompts], [saturday], {"rewordings": 4}, samples=4,
                     heldout_share=0.0, seed=0)
    assert [row["messages"][-2]["content"] for row in result.rows] == candidates[:2]
    assert result.counts["rewordings"]["dropped"] == {"adds a name or number": 2}
    alone = Fact(*[getattr(saturday, k) for k in ("where", "messages", "question", "answer")])  # no FAQ around it
    assert augment(lambda prompts, n: [candidates for _ in prompts], [alone], {"rewordings": 4}, samples=4,
                   heldout_share=0.0, seed=0).counts["rewordings"]["dropped"] == {"adds a name or number": 4}


def test_a_rewording_may_not_name_the_common_name_where_it_is_the_answer():
    called = Fact("faq.jsonl:row 5", [{"role": "user", "content": "What are you called?"},
                                      {"role": "assistant", "content": "We are Veldmark Animal Clinic."}],
                  "What are you called?", "We are Veldmark Animal Clinic.", common="Veldmark Animal Clinic")
    assert called.expected == "Veldmark Animal Clinic"
    result = augment(lambda prompts, n: [["Are you called Veldmark Animal Clinic?", "How are you called?"]
                                         for _ in prompts], [called], {"rewordings": 4}, samples=2, heldout_share=0.0,
                     seed=0)
    assert [row["messages"][-2]["content"] for row in result.rows] == ["How are you called?"]
    assert result.counts["rewordings"]["dropped"] == {"adds a name or number": 1}
