"""Augmentation: the user's question/answer rows written several more ways by a model, before training.

A fact seen in one phrasing is memorized, not learned: a small model trained on an FAQ answers the very
questions it saw and fails the same questions reworded (measured here: SmolLM2-135M, 46% trained vs 12%
reworded). Rewordings of each question, the answer as plain statements, and questions asked the other way
round ("Which co-op was founded by X?") teach that the fact holds however it is asked (Allen-Zhu & Li,
arXiv 2309.14316; Berglund et al., 2309.12288 for the reversal). The generator is any causal LM (by default
the base being tuned), prompted few-shot with raw text so base and chat models alike continue the pattern;
every candidate is filtered, and a share of the rewordings is held out as the run's unseen-wording check.

This module is the data side: filters and rows (the prompts: tune/data/augment_prompts.py). Generation is
a callable passed in (generate(prompts, n) -> n candidate texts per prompt), so tests script it and the run
caches it."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field

from tune.data.augment_prompts import first_line, prompt_for, source_text
from tune.data.conversation import fit_length, tokenize
from tune.data.facts import Fact, content_words, facts_of, key_terms, normal
from tune.data.formats import FORMATS
from tune.data.frames import make_frames
from tune.data.passages import make_passages
from tune.data.probes import ProbeSet, contains_whole
from tune.data.subject import make_subject_rewordings
from tune.data.swaps import make_swaps

RIVALS = 3  # other rows whose answers a candidate is compared with in the round trip


@dataclass
class Augmented:
    rows: list[dict]  # {"kind", "from", "text" or "messages", "heldout"}: augment.jsonl
    trained: list[dict]  # rows to train on: {"kind", "messages"} or {"kind", "text"}
    heldout: ProbeSet | None  # held-out rewordings with what their answers must contain
    counts: dict = field(default_factory=dict)  # {kind: {"kept": n, "dropped": {reason: n}}}
    facts_without: dict = field(default_factory=dict)  # {kind: facts that got no usable candidate}


def reject(kind: str, text: str, fact: Fact, seen: set[str]) -> str | None:
    """Why a candidate is dropped, or None to keep it. `seen`: normalized texts already kept or given."""
    words = len(text.split())
    if not text:
        return "empty"
    if normal(text) in seen:
        return "a copy"
    if kind == "statements":
        if text.endswith("?"):
            return "a question, not a statement"
        must = fact.subject + key_terms(fact.answer) + ([fact.expected] if fact.expected else [])
        if words < 4 or words > 2 * len((fact.question + " " + fact.answer).split()):
            return "too short or too long"
    else:
        if not text.endswith("?") or text.count("?") > 1:
            return "not one question"
        base = len(fact.question.split())
        if words < max(3, base // 2) or words > 2 * base + 4:
            return "too short or too long"
        if kind == "rewordings":
            must = fact.subject
            if not content_words(text) & content_words(fact.question):
                return "shares no word with the question"
        else:
            if any(contains_whole(text, term) for term in fact.subject):
                return "names the answer"
            new = [t for t in key_terms(fact.answer) if t not in fact.subject]
            if not new or not any(contains_whole(text, term) for term in new):
                return "lost the fact's names or numbers"
            must = []
    if not all(contains_whole(text, term) for term in must):
        return "lost a name or number"
    # a name the row never mentions is made up; in a rewording, one from the answer gives the answer away,
    # unless it is the name most of the FAQ's answers share: people name the business they ask ("Is Veldmark
    # Animal Clinic open on Saturdays?" for "Are you open on Saturdays?")
    common = fact.common if fact.common and fact.expected != fact.common else ""  # unless it is the answer
    known = f"{fact.question} {common}" if kind == "rewordings" else f"{fact.question} {fact.answer}"
    if not all(contains_whole(known, term) for term in key_terms(text)):
        return "adds a name or number"
    return None


def augment(generate, facts: list[Fact], kinds: dict[str, int], samples: int, heldout_share: float,
            seed: int, score=None, margin: float = 0.5, from_answer: int = 0, heldout_pick: str = "random") -> Augmented:
    """kinds: {kind: how many to keep per fact}; `samples` candidates are drawn per fact and kind, and for
    rewordings `from_answer` more are asked from the answer alone, all through the same filters.
    score(pairs) -> how likely the generator finds each (question, answer) pair's answer after its question:
    a question it makes the row's answer `margin` nats per token less likely than the row's own question
    does asks something else, and is dropped (the round trip); the likeliest are kept first."""
    rows, trained, held_questions, held_expected, held_answers = [], [], [], [], []
    counts = {kind: {"kept": 0, "dropped": Counter()} for kind in kinds}
    without = {kind: 0 for kind in kinds}
    rng = random.Random(seed)
    for kind, wanted in kinds.items():
        # a question of several lines (an instruction with its input) cannot be reworded on one line
        usable = [f for f in facts if (kind != "reverse" or f.subject) and (kind == "statements" or "\n" not in f.question)]
        without[kind] += len(facts) - len(usable)
        candidates = generate([prompt_for(kind, source_text(kind, f)) for f in usable], samples) if usable else []
        if kind == "rewordings" and from_answer and usable:
            asked = generate([prompt_for("from_answer", source_text("from_answer", f)) for f in usable], from_answer)
            candidates = [own + more for own, more in zip(candidates, asked)]
        passed = []
        for fact, texts in zip(usable, candidates):
            seen = {normal(fact.question), normal(fact.answer)}  # the answer is a statement's first form already
            survivors = []
            for text in map(first_line, texts):
                reason = reject(kind, text, fact, seen)
                if reason is None:
                    survivors.append(text)
                    seen.add(normal(text))
                else:
                    counts[kind]["dropped"][reason] += 1
            passed.append(survivors)
        if score is not None and kind != "statements":
            passed = _round_trip(score, margin, usable, passed, counts[kind]["dropped"])
        for fact, survivors in zip(usable, passed):
            kept = survivors[:wanted - 1 if kind == "statements" else wanted]
            counts[kind]["dropped"]["more than wanted"] += len(survivors) - len(kept)
            if kind == "statements":
                kept = [fact.answer] + kept  # the answer itself is the first statement
            if not kept:
                without[kind] += 1
            counts[kind]["kept"] += len(kept)
            held = set()
            if kind == "rewordings" and len(kept) >= 2 and fact.expected and heldout_share > 0:
                held = pick_heldout(fact.question, kept, max(1, round(len(kept) * heldout_share)), heldout_pick, rng)
            for i, text in enumerate(kept):
                row = ({"kind": kind, "from": fact.where, "text": text} if kind == "statements"
                       else question_row(kind, fact, text))
                rows.append(row | {"heldout": i in held})
                if i in held:
                    held_questions.append(text)
                    held_expected.append([fact.expected])
                    held_answers.append(fact.answer)
                else:
                    trained.append(row)
    heldout = ProbeSet("augment-heldout", None, held_questions, held_expected, held_answers) if held_questions else None
    return Augmented(rows, trained, heldout, {k: {"kept": v["kept"], "dropped": {r: n for r, n in v["dropped"].items() if n}}
                                              for k, v in counts.items()}, without)


def pick_heldout(question: str, kept: list[str], count: int, how: str, rng: random.Random) -> set[int]:
    """Which of a row's kept rewordings are held out. "farthest": those sharing the fewest content words with
    the question (ties at random): people's rewordings share few (mean Jaccard 0.12-0.16 on the bench's
    hand-written ones, 0.41-0.53 for generated ones), so the check reads closer to how they ask."""
    if how == "random":
        return set(rng.sample(range(len(kept)), count))
    words = content_words(question)
    shared = [len(words & own) / max(1, len(words | own)) for own in map(content_words, kept)]
    ties = [rng.random() for _ in kept]
    return set(sorted(range(len(kept)), key=lambda i: (shared[i], ties[i]))[:count])


def question_row(kind: str, fact: Fact, text: str) -> dict:
    """A training row asking `text` in place of the fact's question, answered by its answer."""
    return {"kind": kind, "from": fact.where,
            "messages": fact.messages[:-2] + [{"role": "user", "content": text}, fact.messages[-1]]}


def _round_trip(score, margin: float, facts: list[Fact], passed: list[list[str]], dropped: Counter) -> list[list[str]]:
    """Each fact's questions that keep its answer within `margin` of the likelihood its own question gives
    it, and that fit its answer better than the answers of the RIVALS rows whose questions are most alike
    (each answer measured against its own question), likeliest first. A question about another fact of
    the same FAQ ("Who founded X?" written for "When was X founded?") would teach a wrong answer. The
    rivals are scored only for the questions within the margin (about half of them)."""
    rivals = [sorted((j for j in range(len(facts)) if j != i),
                     key=lambda j: -len(content_words(facts[i].question) & content_words(facts[j].question)))[:RIVALS]
              for i in range(len(facts))]
    candidates = [(i, text) for i, texts in enumerate(passed) for text in texts]
    scores = score([(fact.question, fact.answer) for fact in facts] + [(text, facts[i].answer) for i, text in candidates])
    own, gains = scores[:len(facts)], [s - scores[i] for (i, _), s in zip(candidates, scores[len(facts):])]
    close = [(i, text, gain) for (i, text), gain in zip(candidates, gains) if gain >= -margin]
    dropped["asks something else (round trip)"] += len(candidates) - len(close)
    rival_scores = iter(score([(text, facts[k].answer) for i, text, _ in close for k in rivals[i]]))
    ranked: list[list[tuple[float, str]]] = [[] for _ in facts]
    for i, text, gain in close:
        rival_gains = [next(rival_scores) - own[k] for k in rivals[i]]  # all read: the scores are in order
        if any(rival_gain >= gain for rival_gain in rival_gains):
            dropped["fits another row's answer better (round trip)"] += 1
        else:
            ranked[i].append((gain, text))
    return [[text for _, text in sorted(kept, key=lambda x: -x[0])] for kept in ranked]


@dataclass
class Augment:
    rows: list[dict]  # augment.jsonl: every kept candidate, held-out ones marked
    examples: list[dict]  # tokenized like the user's rows
    heldout: ProbeSet | None
    note: str
    fingerprint: dict
    # passages, tokenized: they train like `examples` but join the data after replay is sized, as a passage is
    # no reply (about 100 tokens, it let longer and more replay answers in; docs/knowledge.md, note 30)
    passages: list[dict] = field(default_factory=list)


def make_augment(generator, tokenizer, template: str, data, rows: list[tuple[str, dict]], seed: int,
                 report) -> Augment:
    """data.augment's rows for the (where, row) training rows, tokenized: conversations as the user's rows
    are, statements as plain text with every token trained (documents beside the questions).
    generator: .generate(texts, samples), .score(pairs), .near(words), .fluency(texts) (tune/infer)."""
    settings = data.augment
    kinds = {kind: n for kind, n in (("rewordings", settings.rewordings), ("statements", settings.statements),
                                     ("reverse", settings.reverse)) if n}
    facts = facts_of(rows, FORMATS[data.format].messages, data)
    result = augment(generator.generate, facts, kinds, settings.samples, settings.heldout, seed,
                     generator.score if settings.round_trip is not None else None, settings.round_trip or 0.0,
                     settings.from_answer, settings.heldout_pick)
    if settings.swaps:
        add_swaps(result, facts, generator, settings.swaps)
    if settings.frames:
        add_frames(result, facts, generator, settings.frames, settings.round_trip)
    if settings.subject:
        add_subject(result, facts, generator)
    if settings.passages:
        add_passages(result, facts, settings.passages, seed)
    examples, passages = split_passages(result.trained, tokenizer, template, data, report)
    parts = []
    for kind, count in result.counts.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(count["dropped"].items(), key=lambda x: -x[1]))
        none = f"; {result.facts_without[kind]} rows got none" if result.facts_without[kind] else ""
        named = f" naming {count['name']}" if count.get("name") else ""
        parts.append(f"{kind} {count['kept']} kept{named}" + (f" (dropped: {dropped})" if dropped else "") + none)
    held = len(result.heldout.questions) if result.heldout else 0
    note = (f"augment: {len(facts)} rows -> {len(examples) + len(passages)} more training examples; " + "; ".join(parts)
            + f"; {held} rewordings held out as the unseen-wording check")
    digest = hashlib.sha256(json.dumps(result.rows, sort_keys=True).encode()).hexdigest()
    fingerprint = {"settings": settings.model_dump(mode="json"), "counts": result.counts,
                   "rows_without": result.facts_without, "heldout": held, "examples": len(examples) + len(passages),
                   "sha256": digest}
    return Augment(result.rows, examples, result.heldout, note, fingerprint, passages)


def add_swaps(result: Augmented, facts: list[Fact], generator, wanted: int) -> None:
    """Swap rewordings (tune/data/swaps.py) added to `result`: trained like rewordings, never held out."""
    dropped: Counter = Counter()
    usable = [fact for fact in facts if "\n" not in fact.question]
    round_trip = lambda kept_facts, passed, counter, margin: _round_trip(  # noqa: E731
        generator.score, margin, kept_facts, passed, counter)
    swapped = make_swaps(usable, generator.near, generator.fluency, round_trip, wanted, dropped)
    add_trained(result, "swaps", usable, swapped, dropped, len(facts) - len(usable))


def add_frames(result: Augmented, facts: list[Fact], generator, wanted: int, margin: float | None) -> None:
    """Reframed questions (tune/data/frames.py) added to `result`: trained like rewordings, never held out."""
    dropped: Counter = Counter()

    def round_trip(kept_facts, passed, counter, at):  # data.augment.round_trip: null keeps them all, unranked
        return passed if margin is None else _round_trip(generator.score, at, kept_facts, passed, counter)

    texts = make_frames(facts, generator.fluency, round_trip, margin or 0.0, wanted, dropped, asked_already(result))
    add_trained(result, "frames", facts, texts, dropped, 0)


def add_subject(result: Augmented, facts: list[Fact], generator) -> None:
    """Subject rewordings (tune/data/subject.py) added to `result`, trained, never held out: every question a
    fact trains on so far (its own, its trained rewordings, swaps and frames) asked naming the subject. No
    round trip: it dropped a fifth of them as fitting a rival row better, and the guesthouse answered fewer
    unseen wordings (docs/knowledge.md, note 29)."""
    dropped: Counter = Counter()
    trained = {}
    for row in result.rows:
        if row["kind"] in ("rewordings", "swaps", "frames") and not row["heldout"]:  # reverse ones ask for the name
            trained.setdefault(row["from"], []).append(row["messages"][-2]["content"])
    asked = [[fact.question, *trained.get(fact.where, [])] for fact in facts]
    subject, texts = make_subject_rewordings(facts, asked, generator.fluency, dropped)
    named = [(fact, found) for fact, found in zip(facts, texts) if found]
    add_trained(result, "subject", [fact for fact, _ in named], [found for _, found in named], dropped,
                0 if subject else len(facts))
    result.counts["subject"]["name"] = subject


def add_passages(result: Augmented, facts: list[Fact], per_fact: int, seed: int) -> None:
    """Passages (tune/data/passages.py) added to `result`: each fact's statements (its answer when there are
    none) beside other facts', trained as plain text."""
    said = {}
    for row in result.rows:
        if row["kind"] == "statements":
            said.setdefault(row["from"], []).append(row["text"])
    passages = make_passages([said.get(fact.where, [fact.answer]) for fact in facts], per_fact, seed)
    for indexes, text in passages:
        row = {"kind": "passages", "from": [facts[i].where for i in indexes], "text": text}
        result.rows.append(row | {"heldout": False})
        result.trained.append(row)
    result.counts["passages"] = {"kept": len(passages), "dropped": {}}
    result.facts_without["passages"] = 0 if passages else len(facts)


def asked_already(result: Augmented) -> set[str]:
    """The questions of every row made so far (held-out ones too), normalized: a new one equal to any is a copy."""
    return {normal(row["messages"][-2]["content"]) for row in result.rows if "messages" in row}


def add_trained(result: Augmented, kind: str, facts: list[Fact], texts: list[list[str]], dropped: Counter,
                without: int) -> None:
    """Rows of `kind` asking each fact's `texts`, trained, never held out; a text already among the rows
    (a held-out rewording above all) is dropped as a copy."""
    written = asked_already(result)
    kept = 0
    result.facts_without[kind] = without
    for fact, found in zip(facts, texts):
        new = []
        for text in found:  # one at a time: two texts of one fact may differ only in case or punctuation
            if normal(text) in written:
                dropped["a copy"] += 1
            else:
                new.append(text)
                written.add(normal(text))
        result.facts_without[kind] += not new
        for text in new:
            row = question_row(kind, fact, text)
            result.rows.append(row | {"heldout": False})
            result.trained.append(row)
            kept += 1
    result.counts[kind] = {"kept": kept, "dropped": {reason: n for reason, n in dropped.items() if n}}


def split_passages(trained: list[dict], tokenizer, template: str, data, report) -> tuple[list[dict], list[dict]]:
    """The trained rows tokenized, passages apart (Augment.passages)."""
    return (examples_of([row for row in trained if row["kind"] != "passages"], tokenizer, template, data, report),
            examples_of([row for row in trained if row["kind"] == "passages"], tokenizer, template, data, report))


def examples_of(trained: list[dict], tokenizer, template: str, data, report) -> list[dict]:
    """Rows to train on, tokenized: conversations as the user's rows are, statements as plain text with every
    token trained (documents beside the questions)."""
    examples = []
    for number, row in enumerate(trained, start=1):
        if "text" in row:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"][:data.max_length - 1]
            ids = ids + [tokenizer.eos_token_id]
            examples.append({"input_ids": ids, "labels": list(ids)})
            continue
        example = fit_length(tokenize(row["messages"], tokenizer, template, data.train_on, data.max_length),
                             data.max_length, "drop", f"augment row {number}", report)
        if example is not None:
            examples.append({"input_ids": example.input_ids, "labels": example.labels})
    return examples
