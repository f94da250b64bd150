"""Swaps: rewordings made by trading one word of a question for a word the generator places near it.

People ask with their own words ("personnel" where the FAQ says "staff", "evening" for "night"), and a
small generator rewords mostly with the question's own words. Its input embeddings still know which words
are near: the neighbours of "staff" in SmolLM2-135M's are personnel, employees, crew. Near is not the same,
though: they also hold antonyms and siblings (late / early, morning / afternoon), so each swap must pass
- not a word another row of the FAQ uses (by stem): "morning" swapped into the row about late evenings
  would ask the morning row's question;
- the question stays as likely as text (`fluency`, mean log-probability per token, at most FLUENCY_DROP
  lower): "What is the called of ..." and "How many staff job at ..." are not questions anyone writes;
- the round trip, tighter than for sampled rewordings (the answer at most `margin` nats per token less
  likely, and no likelier after the swap than any of the closest rows' answers are after their own).
At most one swap per word of the question is kept, the likeliest first. Swaps train like rewordings and
are never held out: the held-out check stays the generator's own wordings.

Measured on four FAQs, each against the same run without swaps (docs/knowledge.md, note 20)."""

from __future__ import annotations

import re
from collections import Counter

from tune.data.facts import Fact, content_words, key_terms

FLUENCY_DROP = 0.3  # nats per token; the broken swaps seen lost 0.5-1.7, the good ones -0.3 to +0.3
MARGIN = 0.25  # the round trip's margin for a one-word change (sampled rewordings: 0.5)
# "How many", "How long": the question's frame, whose near words ask something else ("How short")
FRAME = {"many", "much", "long", "often", "far", "else"}


def swap_words(question: str) -> list[str]:
    """The words of a question a swap may replace: lowercase, alphabetic, not a stopword or part of a name."""
    names = " ".join(key_terms(question)).lower().split()
    words = re.findall(r"[A-Za-z]+", question)
    return list(dict.fromkeys(w for w in words if w.islower() and len(w) > 2 and content_words(w) and w not in names
                               and w not in FRAME))


def candidates(fact: Fact, near: dict[str, list[str]], elsewhere: set[str]) -> list[tuple[str, str]]:
    """(swapped question, replaced word) for each near word of each swappable word, the first occurrence of
    the word replaced; near words another row uses (by stem, `elsewhere`) are skipped."""
    out = []
    for word in swap_words(fact.question):
        for other in near.get(word, []):
            if content_words(other) & elsewhere:
                continue
            text = re.sub(rf"\b{re.escape(word)}\b", other, fact.question, count=1)
            if text != fact.question:
                out.append((text, word))
    return out


def reading_as_well(facts: list[Fact], per_fact: list[list[str]], fluency, drop: float,
                    dropped: Counter) -> list[list[str]]:
    """Each fact's texts whose fluency (mean log-probability per token) is at most `drop` below its own
    question's, one fluency call for all; the others counted in `dropped`."""
    texts = [fact.question for fact in facts] + [text for found in per_fact for text in found]
    scores = iter(fluency(texts)) if texts else iter(())
    own = [next(scores) for _ in facts]
    fluent = []
    for i, found in enumerate(per_fact):
        kept = [text for text in found if next(scores) >= own[i] - drop]
        dropped["reads worse than the question"] += len(found) - len(kept)
        fluent.append(kept)
    return fluent


def make_swaps(facts: list[Fact], near, fluency, round_trip, wanted: int, dropped: Counter) -> list[list[str]]:
    """Up to `wanted` swaps per fact. near(words) -> {word: near words}; fluency(texts) -> mean log-probability
    per token of each text; round_trip(facts, per-fact texts, dropped, margin) -> the texts that ask for each
    fact's answer, likeliest first."""
    words = sorted({w for fact in facts for w in swap_words(fact.question)})
    neighbours = near(words) if words else {}
    stems = [content_words(f"{fact.question} {fact.answer}") for fact in facts]
    per_fact = []
    for i, fact in enumerate(facts):
        elsewhere = set().union(*(s for j, s in enumerate(stems) if j != i)) - stems[i] if len(facts) > 1 else set()
        per_fact.append(candidates(fact, neighbours, elsewhere))
    fluent = reading_as_well(facts, [[text for text, _ in found] for found in per_fact], fluency, FLUENCY_DROP, dropped)
    replaced = {(i, text): word for i, found in enumerate(per_fact) for text, word in found}
    ranked = round_trip(facts, fluent, dropped, MARGIN)
    chosen = []
    for i, texts in enumerate(ranked):
        used, kept = set(), []
        for text in texts:
            if replaced[(i, text)] in used:
                dropped["another swap of the same word"] += 1
            elif len(kept) == wanted:
                dropped["more than wanted"] += 1
            else:
                used.add(replaced[(i, text)])
                kept.append(text)
        chosen.append(kept)
    return chosen
