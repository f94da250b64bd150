"""Writes train.jsonl and heldout.jsonl: short word problems with a verifiable integer `answer`.

Run from this folder: python make_prompts.py (seeded: the same files every time). Held-out prompts use
other numbers and other objects than the train prompts, so a rising held-out reward is not memorization."""

import json
import random

TRAIN_ITEMS = ["apples", "books", "coins", "pencils", "cups", "stamps", "shells", "marbles", "cards", "eggs"]
HELD_OUT_ITEMS = ["oranges", "buttons", "keys", "candles", "plates", "ribbons"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]


def problems(items, rng, count, numbers):
    rows, seen = [], set()
    while len(rows) < count:
        name, item = rng.choice(NAMES), rng.choice(items)
        a, b = rng.choice(numbers), rng.choice(numbers)
        kind = rng.choice(["plus", "minus", "times"])
        if kind == "plus":
            text, answer = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
        elif kind == "minus":
            a, b = max(a, b) + 1, min(a, b)
            text, answer = f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
        else:
            a, b = a % 6 + 2, b % 5 + 2
            text, answer = f"{name} has {a} boxes with {b} {item} in each. How many {item} are there in all?", a * b
        if text in seen:
            continue
        seen.add(text)
        rows.append({"prompt": text, "answer": str(answer)})
    return rows


rng = random.Random(2026)
train = problems(TRAIN_ITEMS, rng, 240, range(2, 15))
held_out = problems(HELD_OUT_ITEMS, rng, 48, range(15, 25))
for name, rows in (("train.jsonl", train), ("heldout.jsonl", held_out)):
    with open(name, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
