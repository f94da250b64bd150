"""Probes: question files with the fact each answer must contain, answered greedily by the base model
before training and by the tuned model after it. The before/after table is what tells a user whether
the run learned their facts (trained and paraphrased questions) and kept what the base model knew
(general questions). An answer counts when it contains an expected string as whole words or a whole number, ignoring
case and spacing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tune.data.sources import numbered_json_lines
from tune.errors import DataError

QUESTION_KEYS = ("question", "prompt", "instruction")


@dataclass
class ProbeSet:
    name: str  # the file's stem: probes-heldout.jsonl -> probes-heldout
    path: Path
    questions: list[str]
    expected: list[list[str]]  # acceptable strings per question
    answers: list[str] | None = None  # each question's full answer, when known (held-out rewordings): scored by likelihood


def load_probe_sets(specs: list[str], recipe_dir: Path | None) -> list[ProbeSet]:
    from tune.paths import find_file

    sets, problems = [], []
    for number, spec in enumerate(specs):
        path = find_file(spec, recipe_dir)
        if path is None or not path.is_file():
            problems.append(f"data.probes[{number}]: no such file: {spec}")
            continue
        try:
            sets.append(_read(path))
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError(problems)
    return sets


def _read(path: Path) -> ProbeSet:
    questions, expected = [], []
    for number, row in numbered_json_lines(path):
        where = f"{path}:row {number}"
        if isinstance(row, json.JSONDecodeError):
            raise DataError(f"{where}: not valid JSON ({row.msg}); probe rows are {{question, expected}}")
        question = next((row[k] for k in QUESTION_KEYS if isinstance(row, dict) and row.get(k)), None)
        facts = row.get("expected") if isinstance(row, dict) else None
        facts = [facts] if isinstance(facts, str) else facts
        if not isinstance(question, str):
            raise DataError(f"{where}: needs a 'question' (the prompt to answer)")
        if not facts or not all(isinstance(f, str) and f.strip() for f in facts):
            raise DataError(f"{where}: needs 'expected': the text a right answer contains (or a list of such texts)")
        questions.append(question)
        expected.append(facts)
    if not questions:
        raise DataError(f"{path}: no probe rows")
    return ProbeSet(path.stem, path, questions, expected)


def contains(answer: str, facts: list[str]) -> bool:
    text = _normal(answer)
    return any(contains_whole(text, _normal(fact)) for fact in facts)


def contains_whole(text: str, answer: str, ignore_case: bool = True) -> bool:
    """`answer` occurs in `text` as a whole word or number: "10" is not in "1000", "9" not in "19" or "9.5",
    "6" or "30" not in "6:30", "Paris" not in "Parisian"; a plain number may carry a unit ("6:30" is in
    "6:30am", "10" in "10km"); a whole number under 100 but 1 may be written in words either way ("3" is in
    "three sides", "forty-two" in "42"). The one matching rule for probes and the contains_answer reward."""
    flags = re.IGNORECASE if ignore_case else 0
    answer = answer.strip()
    number = re.fullmatch(r"[£$€]?\d[\d.,:]*", answer) is not None  # a unit may follow: "SW1" is not in "SW1A"
    after = r"(?!\d|[.,:]\d)" if number else r"(?!\w|\.\d)"
    if re.search(rf"(?<![\w.])(?<!\d[,:]){re.escape(answer)}{after}", text, flags):
        return True
    digits, words = _number_forms(answer)
    if digits is None:
        return False
    spelled = r"[\s-]+".join(map(re.escape, words.split("-")))  # "forty-two" or "forty two"
    # in any case: "Three sides." starts a sentence
    return re.search(rf"(?<![\w.])(?<!\d[,:])(?:{digits}(?!\d|[.,:]\d)|{spelled}(?![\w-]))", text, re.IGNORECASE) is not None


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORDS = {n: _ONES[n] if n < 20 else _TENS[n // 10 - 2] + ("-" + _ONES[n % 10] if n % 10 else "") for n in range(100)}
_NUMBERS = {word: n for n, word in _WORDS.items()}


def _number_forms(answer: str) -> tuple[str | None, str | None]:
    """A whole number under 100 as (digits, words): "3" and "three" both -> ("3", "three"), "forty two" ->
    ("42", "forty-two"); (None, None) for anything else, and for 1 ("no one", "one of them"). Greedy answers
    of a small model say "A triangle has three sides." as often as "3 sides"."""
    number = int(answer) if re.fullmatch(r"\d{1,2}", answer) else _NUMBERS.get(re.sub(r"[\s-]+", "-", answer.lower()))
    return (None, None) if number is None or number == 1 else (str(number), _WORDS[number])


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def answer_sets(answer, sets: list[ProbeSet], system_prompt: str | None, max_new_tokens: int) -> list[list[str]]:
    """answer(conversations, max_new_tokens) -> [(text, finished)]: tune.generate.generate_batch bound to a
    model and tokenizer (or the cached version of it for the base model)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    flat = [system + [{"role": "user", "content": q}] for s in sets for q in s.questions]
    texts = [text for text, _ in answer(flat, max_new_tokens)]
    answers, start = [], 0
    for probe_set in sets:
        answers.append(texts[start:start + len(probe_set.questions)])
        start += len(probe_set.questions)
    return answers


def score(sets: list[ProbeSet], before: list[list[str]], after: list[list[str]]) -> tuple[list[dict], dict]:
    """(one record per question, {set name: shares}). `kept` is the share of the questions the base model
    got right that the tuned model still gets right: the forgetting measure."""
    rows, shares = [], {}
    for probe_set, base_answers, tuned_answers in zip(sets, before, after):
        base_ok = [contains(a, f) for a, f in zip(base_answers, probe_set.expected)]
        tuned_ok = [contains(a, f) for a, f in zip(tuned_answers, probe_set.expected)]
        for i, question in enumerate(probe_set.questions):
            rows.append({"set": probe_set.name, "question": question, "expected": probe_set.expected[i],
                         "base": base_answers[i], "tuned": tuned_answers[i],
                         "base_correct": base_ok[i], "tuned_correct": tuned_ok[i]})
        total, base_right = len(base_ok), sum(base_ok)
        shares[probe_set.name] = {
            "questions": total, "base_correct": base_right, "tuned_correct": sum(tuned_ok),
            "base_share": base_right / total, "tuned_share": sum(tuned_ok) / total,
            "kept": sum(b and t for b, t in zip(base_ok, tuned_ok)) / base_right if base_right else None,
        }
    return rows, shares


def known(shares: dict) -> list[str]:
    """The sets the base mostly answers right (at least half): what the model must keep. A set the base mostly
    fails holds new facts and measures learning, not forgetting."""
    return [name for name, s in shares.items() if s["base_share"] >= 0.5]


def kept_share(sets: list[ProbeSet], before: list[list[str]], after: list[list[str]]) -> float | None:
    """The share of the base's right answers the tuned model still gets right, pooled over the known sets
    (None when there is none, or the base got nothing right)."""
    shares = score(sets, before, after)[1]
    names = known(shares)
    right = sum(shares[n]["base_correct"] for n in names)
    still = sum(round(shares[n]["kept"] * shares[n]["base_correct"]) for n in names if shares[n]["kept"] is not None)
    return still / right if right else None


def summary_lines(shares: dict) -> list[str]:
    lines = []
    for name, s in shares.items():
        kept = f", kept {s['kept']:.0%} of the {s['base_correct']} the base got right" if s["kept"] is not None else ""
        lines.append(f"probes {name}: base {s['base_correct']}/{s['questions']} ({s['base_share']:.0%}) -> "
                     f"tuned {s['tuned_correct']}/{s['questions']} ({s['tuned_share']:.0%}){kept}")
    return lines


def table_lines(rows: list[dict], set_name: str, limit: int, width: int = 48) -> list[str]:
    """A plain-text before/after table of one set (terminal-friendly; the full table is in probes.md)."""
    picked = [r for r in rows if r["set"] == set_name]
    lines = [f"{'':2}{'question':<{width}} | {'base answer':<{width}} | {'tuned answer':<{width}} | expected"]
    for r in picked[:limit]:
        mark = ("+" if r["tuned_correct"] else "-") + ("+" if r["base_correct"] else "-")
        lines.append(f"{mark} {_cut(r['question'], width)} | {_cut(r['base'], width)} | "
                     f"{_cut(r['tuned'], width)} | {' / '.join(r['expected'])}")
    if len(picked) > limit:
        lines.append(f"  ... {len(picked) - limit} more in probes.md")
    return lines


def markdown(rows: list[dict], shares: dict) -> str:
    out = ["# Probes: base model vs tuned model", "",
           "An answer counts when it contains an expected text as whole words or a whole number (case and "
           "spacing ignored); answers are greedy.", ""]
    out += [f"- {line}" for line in summary_lines(shares)] + [""]
    for name in shares:
        out += [f"## {name}", "", "| question | base answer | tuned answer | expected | base | tuned |",
                "|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["set"] == name):
            cells = [r["question"], r["base"], r["tuned"], " / ".join(r["expected"]),
                     "yes" if r["base_correct"] else "no", "yes" if r["tuned_correct"] else "no"]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return (text[:width - 1] + "…" if len(text) > width else text).ljust(width)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
