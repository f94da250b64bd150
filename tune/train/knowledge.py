"""SFT's measure for the guard (tune/train/guard.py): did the model learn the facts, or only the wordings it
trained on, and did it keep what it knew? Every probe set and the held-out rewordings (tune/data/augment.py)
are answered greedily in one batched pass and sorted by what the base and the training data say of them:

- known: the base answers at least half right; the kept share of these is the forgetting measure;
- unseen: the base mostly fails them and their questions are not training rows (held-out rewordings,
  paraphrase probes); the accuracy on these is what the guard keeps the best of;
- trained: mostly training questions; shown in the table, never selected on (a model that memorized
  its rows scores well there and nowhere else)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tune.data import probes
from tune.data.facts import facts_of, normal
from tune.data.formats import FORMATS
from tune.output import write_json, write_text
from tune.train.guard import Evaluation


def trained_sets(sets: list[probes.ProbeSet], trained_questions: list[str]) -> set[str]:
    asked = {normal(q) for q in trained_questions}
    return {s.name for s in sets if sum(normal(q) in asked for q in s.questions) * 2 >= len(s.questions)}


def evaluator(sets: list[probes.ProbeSet], trained_questions: list[str], system_prompt: str | None,
              max_new_tokens: int):
    """evaluate(answer, step, base=None, guarded_only=False, likelihood=None) -> Evaluation; the base's own
    evaluation sorts the sets. guarded_only (the guard's evaluations during training) leaves out the trained
    sets the base does not know: they decide nothing, and only the kept adapter's answers to them are shown
    (complete). likelihood(pairs) -> the mean log-probability per token of each (question, answer) pair's
    answer: given, it scores the unseen sets whose full answers are known (the held-out rewordings), the
    guard's finer reading where a dozen questions answered right tie."""
    trained = trained_sets(sets, trained_questions)

    def evaluate(answer, step, base: Evaluation | None = None, guarded_only: bool = False,
                 likelihood=None) -> Evaluation:
        left_out = trained - set(probes.known(_base_shares(sets, base))) if guarded_only and base else set()
        answered = iter(probes.answer_sets(answer, [s for s in sets if s.name not in left_out], system_prompt,
                                           max_new_tokens))
        answers = [[""] * len(s.questions) if s.name in left_out else next(answered) for s in sets]
        shares = probes.score(sets, base.probe_answers if base else answers, answers)[1]
        known = set(probes.known(shares))
        unseen = [name for name in shares if name not in known | trained]
        right = sum(shares[name]["tuned_correct"] for name in unseen)
        asked = sum(shares[name]["questions"] for name in unseen)
        kept = probes.kept_share(sets, base.probe_answers, answers) if base else None
        pairs = [pair for s in sets if s.name in unseen and s.answers for pair in zip(s.questions, s.answers)]
        likely = likelihood(pairs) if likelihood and pairs else None
        return Evaluation(step, right / asked if asked else None,
                          {name: shares[name]["tuned_share"] for name in unseen}, kept, probe_answers=answers,
                          unanswered=sorted(left_out), likelihoods=likely or [])
    return evaluate


def complete(evaluation: Evaluation, answer, sets: list[probes.ProbeSet], system_prompt: str | None,
             max_new_tokens: int) -> Evaluation:
    """`evaluation` with the sets it left out answered by `answer` (the kept adapter), for the report."""
    if not evaluation.unanswered:
        return evaluation
    missing = iter(probes.answer_sets(answer, [s for s in sets if s.name in evaluation.unanswered], system_prompt,
                                      max_new_tokens))
    answers = [next(missing) if s.name in evaluation.unanswered else given
               for s, given in zip(sets, evaluation.probe_answers)]
    return replace(evaluation, probe_answers=answers, unanswered=[])


def _base_shares(sets: list[probes.ProbeSet], base: Evaluation) -> dict:
    return probes.score(sets, base.probe_answers, base.probe_answers)[1]


def describe(sets: list[probes.ProbeSet], trained_questions: list[str], base: Evaluation,
             kept_of: str = "probes") -> str:
    """How the sets were sorted, for the run's output: which ones the guard selects on and which it keeps."""
    shares = _base_shares(sets, base)
    known, trained = probes.known(shares), trained_sets(sets, trained_questions)
    unseen = [name for name in shares if name not in set(known) | trained]
    keeps = f"answers of {', '.join(known) or 'none'}" if kept_of == "probes" else kept_of
    return (f"guard: selects on unseen wordings ({', '.join(unseen) or 'none'}); keeps the base's right {keeps}" + (f"; trained questions, shown only: {', '.join(sorted(trained))}"
                                               if trained else ""))


EXPOSURES = 16  # times train.epochs: auto trains each fact (SmolLM2 FAQs: 12 left the 32-row co-op underfit, trained 0.84)


def auto_epochs(user_rows: int, generated_rows: int) -> int:
    """Passes that train each of the user's rows about EXPOSURES times, its generated rows counted."""
    import math

    return max(1, math.ceil(EXPOSURES * user_rows / max(1, user_rows + generated_rows)))


def questions_of(data, rows: list[tuple[str, dict]]) -> list[str]:
    """The last user turn of every training row (what `trained` sets are recognized by)."""
    to_messages = FORMATS[data.format].messages
    return [fact.question for fact in facts_of(rows, to_messages, data)] if to_messages else []


def timed(evaluate, answer, step: int, base: Evaluation | None, sets, echo, who: str) -> Evaluation:
    started = time.perf_counter()
    evaluation = evaluate(answer, step, base)
    echo(f"probes: the {who} answered {sum(len(s.questions) for s in sets)} questions in "
         f"{time.perf_counter() - started:.0f} s")
    return evaluation


def report(sets, before: Evaluation, after: Evaluation, staging: Path, echo) -> dict:
    """The before/after table (probes.md, probes.json), printed: a few rows per set, then every set's shares."""
    rows, shares = probes.score(sets, before.probe_answers, after.probe_answers)
    write_text(staging / "probes.md", probes.markdown(rows, shares))
    write_json(staging / "probes.json", {"shares": shares, "rows": rows})
    for probe_set in sets:
        echo(f"\nprobes {probe_set.name} (first mark: tuned right, second: base right):")
        for line in probes.table_lines(rows, probe_set.name, limit=8):
            echo(line)
    echo("")
    for line in probes.summary_lines(shares):
        echo(line)
    return shares
