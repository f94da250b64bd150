"""Passages: the FAQ's statements trained together, several facts to a text, in an order never the same.

Trained one statement to a row, a fact is stored after its own first words: every answer of a business's
FAQ opens with its name ("Tallowmere Climbing Centre has 186 graded routes", "... is open from 6:30am"),
and a question worded as no row was is answered from the likeliest continuation of that name, often
another fact's (the weekday hours for "How do I ring Tallowmere?"), or with the right sentence and a wrong
value ("18 graded routes"). In a passage each statement follows other facts, a different set in each
passage, so its value has to be recalled from the statement's own words wherever it stands: Allen-Zhu & Li
(arXiv 2309.14316) found that sentence-permuted biographies, each person's facts in a new order every
time, are what made a ~124M model's knowledge answerable to questions it was not trained on.

Each fact appears in `per_fact` passages of `size` facts (the last of a round shorter, or one longer where
a single fact would be left alone), each time with one of its statements drawn at random; the facts of a
passage differ. A passage longer than data.max_length is cut there, as a statement is. Measured in docs/knowledge.md,
note 30."""

from __future__ import annotations

import random

SIZE = 4  # facts per passage: about 100 tokens of SmolLM2's, a paragraph of an FAQ page


def make_passages(statements: list[list[str]], per_fact: int, seed: int, size: int = SIZE) -> list[tuple[list[int], str]]:
    """(the facts' indexes, the passage's text) for each passage: each fact with statements in `per_fact` of
    them, the facts in a new random order each round, one of a fact's statements drawn each time."""
    rng = random.Random(seed)
    usable = [i for i, found in enumerate(statements) if found]
    if len(usable) < 2:  # one fact is its own statement already
        return []
    passages = []
    for _ in range(per_fact):
        order = usable[:]
        rng.shuffle(order)
        for start in range(0, len(order), size):
            group = order[start:start + size]
            if len(group) == 1:  # a lone fact joins the round's previous passage rather than stand alone
                facts, text = passages.pop()
                passages.append((facts + group, f"{text} {rng.choice(statements[group[0]])}"))
                continue
            passages.append((group, " ".join(rng.choice(statements[i]) for i in group)))
    return passages
