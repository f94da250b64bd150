"""Probes and replay on the tiny model: the answer matching rule, the before/after records a run writes,
replay rows joining the data, and the base model's greedy answers reused from the TUNE_HOME cache."""

import json

import pytest

from tests.conftest import SAMPLE_DATA, write_recipe
from tune import recipe as recipe_io
from tune.data.probes import contains

QUIET = {"echo": lambda line: None}


@pytest.mark.parametrize("answer,expected,hit", [
    ("Refunds are accepted within 21 days.", ["21 days"], True),
    ("Refunds are accepted within 21\n  DAYS.", ["21 days"], True),  # case and spacing ignored
    ("Refunds are accepted within twenty-one days.", ["21 days", "twenty-one days"], True),
    ("Refunds are accepted within 2 days.", ["21 days"], False),
    ("", ["Paris"], False),
    # a whole word or number, as the contains_answer reward counts: 10 of the general probes expect one
    ("100 divided by 10 is 1000.", ["10"], True),
    ("It is 1000.", ["10"], False),
    ("3 times 3 is 19.", ["9"], False),
    ("It boils at 9.5 degrees.", ["9"], False),
    ("It is 9.", ["9"], True),
    ("Water boils at 100°C.", ["100"], True),
    ("The Parisian metro.", ["Paris"], False),
    ("Founded by Ottilie Marchetti, a lantern maker.", ["ottilie marchetti"], True),
    # a number with its unit is the number; one that goes on in digits is another number
    ("Open from 6:30am to 10pm.", ["6:30"], True),
    ("Open from 6:30am to 10pm.", ["6"], False),
    ("A run of 10km.", ["10"], True),
    ("Shoes cost £4.50 to hire.", ["£4"], False),
    ("It has 1,900 members.", ["1"], False),
    ("It has 1,900 members.", ["900"], False),
    ("Doors open at 6:30.", ["30"], False),
    ("Post it to SW1A 2AA.", ["SW1"], False),  # a unit may follow a plain number only
    # a whole number under 100 may be spelled out either way, except 1 ("no one", "one of them")
    ("Three sides.", ["3"], True),
    ("The answer is forty two.", ["42"], True),
    ("It is 42.", ["forty-two"], True),
    ("There are thirty-three.", ["30"], False),
    ("Seventeen.", ["7"], False),
    ("No one knows.", ["1"], False),
    ("It has 1,900 members.", ["nine"], False),
])
def test_an_answer_counts_when_it_contains_an_expected_text(answer, expected, hit):
    assert contains(answer, expected) is hit


def test_replay_answers_are_limited_to_twice_the_typical_reply():
    from tune.data.replay import MAX_NEW_TOKENS, reply_limit

    def rows(*trained):
        return [{"labels": [-100] * 5 + [1] * n} for n in trained]

    assert reply_limit(rows(*range(1, 101))) == 2 * 91  # the 90th percentile of 1..100 trained tokens
    assert reply_limit(rows(3, 4)) == 32 and reply_limit(rows(900)) == MAX_NEW_TOKENS


@pytest.fixture
def probe_recipe(tmp_path, tiny_model):
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines()[:6]]
    probes = tmp_path / "facts.jsonl"
    probes.write_text("".join(json.dumps({"question": r["instruction"], "expected": r["output"].split()[-1]}) + "\n"
                              for r in rows))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Say something about the number {n}."}) + "\n"
                               for n in range(40)))
    return write_recipe(tmp_path / "r.yaml", data={"probes": [str(probes)], "probe_max_new_tokens": 6,
                                                   "replay": 0.1, "replay_prompts": str(prompts)},
                        output={"overwrite": True})


def test_a_run_writes_before_after_probes_and_replay_rows_and_reuses_base_answers(probe_recipe, tmp_path,
                                                                                  monkeypatch):
    import tune.infer.generate
    import tune.train.sft  # noqa: F401  (imported first: it keeps the real generate_batch for the tuned model)

    real, calls = tune.infer.generate.generate_batch, []

    def base_model(model, tokenizer, conversations, max_new_tokens):
        # The random tiny model never ends a turn, so its replay answers would all be left out; stand in
        # for the base model with finished answers (the tuned model's probe answers stay real).
        calls.append(len(conversations))
        return [(f"base answer {len(c[-1]['content'])}", True) for c in conversations]

    monkeypatch.setattr(tune.infer.generate, "generate_batch", base_model)
    summary = _run(probe_recipe)
    out = tmp_path / "out"
    assert calls == [6, 32]  # the probes, then replay: twice the 0.1 x 164 rows wanted, from the 40 prompts
    replay = [json.loads(line) for line in (out / "replay.jsonl").read_text().splitlines()]
    assert len(replay) == 16 and all(r["answer"].startswith("base answer") for r in replay)
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())["replay"]
    assert fingerprint["rows"] == 16 and fingerprint["max_new_tokens"] == 32  # the tiny replies are short
    record = json.loads((out / "probes.json").read_text())
    assert record["shares"] == summary["probes"]
    assert [r["base"] for r in record["rows"]] == [f"base answer {len(r['question'])}" for r in record["rows"]]
    assert all(isinstance(r["tuned"], str) for r in record["rows"]) and len(record["rows"]) == 6
    shares = summary["probes"]["facts"]
    assert shares["questions"] == 6 and shares["base_correct"] == 0 and shares["kept"] is None
    assert shares["tuned_correct"] == sum(r["tuned_correct"] for r in record["rows"])
    assert "| question | base answer | tuned answer |" in (out / "probes.md").read_text()

    calls.clear()
    _run(probe_recipe)  # same base, prompts and template: both base passes come from the cache
    assert calls == []
    assert (out / "replay.jsonl").read_text().splitlines() == [json.dumps(r) for r in replay]
    assert json.loads((out / "probes.json").read_text())["rows"][0]["base"] == record["rows"][0]["base"]
    assert real is not base_model


def _run(path):
    from tune.train.sft import train

    return train(recipe_io.load(path), path, **QUIET).summary


def test_augmented_rows_train_and_the_guard_keeps_the_best_unseen_accuracy(tiny_model, tmp_path, monkeypatch):
    """data.augment end to end on the tiny model, with a scripted generator (the random model writes no
    usable question): held-out rewordings become the augment-heldout probe set, the rest train, and
    train.keep: best evaluates every eval_steps and says which step it kept, in run.json too."""
    import tune.infer.sampling
    from tune.data.augment_prompts import PROMPTS

    rows = [row for row in map(json.loads, SAMPLE_DATA.read_text().splitlines()) if row.get("instruction", "").endswith("?")][:8]
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reword, state = PROMPTS["rewordings"][0], PROMPTS["statements"][0]

    def sample_batch(model, tokenizer, texts, samples, max_new_tokens, temperature, top_p, seed):
        out = []
        for text in texts:
            source = text.rsplit("\n", 2)[-2].split(": ", 1)[1]  # the row's question (or "Answer: ..." line)
            if text.startswith(reword):
                out.append([f"Tell me: {source}", f"Quick question: {source}", f"Please answer: {source}"])
            else:
                out.append([f"It is known that {source.lower()}" if text.startswith(state) else "?"])
        return out

    monkeypatch.setattr(tune.infer.sampling, "sample_batch", sample_batch)
    path = write_recipe(tmp_path / "r.yaml", data={"train": str(data), "augment": {"rewordings": 3, "statements": 1, "heldout": 0.34,
                                                              "round_trip": None, "from_answer": 0}, "probe_max_new_tokens": 6},
                        train={"eval_steps": 4, "keep": "best", "min_kept_share": 0.0, "max_steps": 8})
    summary = _run(path)
    out = tmp_path / "out"
    written = [json.loads(line) for line in (out / "augment.jsonl").read_text().splitlines()]
    held = [r["messages"][-2]["content"] for r in written if r["heldout"]]
    assert len(written) == 8 * 4 and len(held) == 8  # 3 rewordings (1 held out) and the answer, per row
    assert all(q.startswith(("Tell me: ", "Quick question: ", "Please answer: ")) for q in held)
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())["augment"]
    assert fingerprint["counts"]["rewordings"] == {"kept": 24, "dropped": {}} and fingerprint["heldout"] == 8
    assert fingerprint["examples"] == 8 * 3  # the held-out rewordings never reach training
    record = json.loads((out / "probes.json").read_text())
    assert [r["question"] for r in record["rows"]] == held and summary["probes"]["augment-heldout"]["questions"] == 8
    evaluations = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "unseen_accuracy" in r]
    assert [r["step"] for r in evaluations] == [4, 8]
    assert all(isinstance(r["unseen_likelihood"], float) for r in evaluations)
    # at the same accuracy the likelier held-out answers win; a tie on both keeps the earlier step
    best = max(evaluations, key=lambda r: (r["unseen_accuracy"], r["unseen_likelihood"]))
    assert summary["kept"].startswith(f"kept step {best['step']}: unseen-wording accuracy" if best["step"] == 4
                                      else "kept the final weights (step 8): the highest unseen-wording accuracy")
    assert summary["unseen_accuracy_tuned"] == best["unseen_accuracy"]


def test_passages_train_but_do_not_size_replay(probe_recipe, tmp_path, monkeypatch):
    """Reviewed rows of 40 long passages: replay still takes 0.1 x 164 user rows' answers, with the short
    replies' token limit (a passage is no reply), and the passages reach training."""
    import yaml

    import tune.infer.generate
    import tune.train.sft

    monkeypatch.setattr(tune.infer.generate, "generate_batch",  # finished answers, as in the test above
                        lambda model, tokenizer, conversations, max_new_tokens: [("base answer", True)] * len(conversations))
    passage = " ".join(f"Fact {n} is told here at some length." for n in range(12))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"kind": "passages", "text": f"{n}. {passage}", "heldout": False}) + "\n"
                            for n in range(40)))
    recipe = yaml.safe_load(probe_recipe.read_text())
    recipe["data"]["augment"] = {"rows": str(rows)}
    probe_recipe.write_text(yaml.safe_dump(recipe))
    lines = []
    tune.train.sft.train(recipe_io.load(probe_recipe), probe_recipe, echo=lines.append)
    fingerprint = json.loads((tmp_path / "out" / "data_fingerprint.json").read_text())["replay"]
    assert fingerprint["rows"] == 16 and fingerprint["max_new_tokens"] == 32
    assert any(line.startswith("data: 220 train /") for line in lines), lines  # 164 rows + 16 replay + 40 passages


def test_distribution_replay_sends_every_replay_token_through_the_kl(probe_recipe, tmp_path, monkeypatch):
    import tune.infer.generate
    import tune.train.sft  # noqa: F401
    from tune.train import replay_loss
    from tune.train.sft import train

    monkeypatch.setattr(tune.infer.generate, "generate_batch", lambda model, tokenizer, conversations, limit: [
        (f"base answer {len(c[-1]['content'])}", True) for c in conversations])
    real, seen = replay_loss.loss, []

    def counted(model, teacher_off, inputs, num_items_in_batch=None):
        labelled = inputs["labels"][:, 1:] != -100
        seen.append((int((labelled & inputs[replay_loss.MASK][:, 1:].bool()).sum()), int(labelled.sum())))
        return real(model, teacher_off, inputs, num_items_in_batch)

    monkeypatch.setattr(replay_loss, "loss", counted)
    lines = []
    summary = train(recipe_io.load(probe_recipe, ["data.replay_loss=distribution", "train.max_steps=24"]),
                    probe_recipe, echo=lines.append).summary
    replay_rows = (tmp_path / "out" / "replay.jsonl").read_text().count("\n")
    # 24 steps of 8 from 180 rows (16 of them replay): about one epoch, so most replay rows were drawn
    assert len(seen) >= replay_rows // 2 and all(0 < replay <= total for replay, total in seen)
    assert sum(replay for replay, _ in seen) >= 3 * replay_rows  # "base answer N" is 3+ tokens
    assert any(line.startswith(f"data: replay: {replay_rows} rows train toward the base model's") for line in lines)
    assert summary["last_loss"] < summary["first_loss"]
