"""Swap rewordings (tune/data/swaps.py) with scripted near words, fluency and round trip: the exact swaps
kept and why the others were dropped; and a tiny model's embeddings and likelihoods read through tune/infer."""

from collections import Counter
from types import SimpleNamespace

from tests.conftest import faq_fact as fact
from tune.data.augment import Augmented, add_swaps
from tune.data.swaps import make_swaps, swap_words


STAFF = fact(1, "How many staff work at Kestrel Hill Observatory?", "Kestrel Hill Observatory employs 23 staff.")
MORNING = fact(2, "What time does Kestrel Hill Observatory open in the morning?", "It opens at 9 every morning.")
NEAR = {"staff": ["personnel", "mornings", "crew"], "work": ["job"], "time": ["hour"], "open": ["close"],
        "morning": ["evening"]}
READS_WORSE = {"How many staff job at Kestrel Hill Observatory?"}


def near(words):
    return {w: NEAR.get(w, []) for w in words}


def fluency(texts):
    return [-3.0 if text in READS_WORSE else -1.0 for text in texts]


def round_trip(facts, passed, dropped, margin):
    """Keeps every question but those that ask the opposite; the order given is the likelihood order."""
    dropped["asks something else (round trip)"] += sum("close" in t for texts in passed for t in texts)
    return [[t for t in texts if "close" not in t] for texts in passed]


def test_only_lowercase_words_outside_the_names_are_swapped():
    assert swap_words("How many staff work at Kestrel Hill Observatory?") == ["staff", "work"]
    assert swap_words("What does the Night Owl pass cost?") == ["pass", "cost"]


def test_swaps_keep_one_per_word_that_reads_as_well_and_no_word_of_another_row():
    dropped = Counter()
    kept = make_swaps([STAFF, MORNING], near, fluency, round_trip, 3, dropped)
    assert kept == [["How many personnel work at Kestrel Hill Observatory?"],  # "mornings": row 2's word (stem)
                    ["What hour does Kestrel Hill Observatory open in the morning?",
                     "What time does Kestrel Hill Observatory open in the evening?"]]
    assert dropped == Counter({"reads worse than the question": 1, "another swap of the same word": 1,
                               "asks something else (round trip)": 1})
    capped = Counter()
    assert make_swaps([STAFF, MORNING], near, fluency, round_trip, 1, capped)[1] == [
        "What hour does Kestrel Hill Observatory open in the morning?"]
    assert capped["more than wanted"] == 1


def test_swaps_train_like_rewordings_and_are_never_held_out():
    held = {"kind": "rewordings", "from": STAFF.where, "heldout": True,
            "messages": [{"role": "user", "content": "How many personnel work at Kestrel Hill Observatory?"},
                         {"role": "assistant", "content": STAFF.answer}]}
    result = Augmented([held], [], None, {"rewordings": {"kept": 1, "dropped": {}}}, {"rewordings": 0})
    generator = SimpleNamespace(near=near, fluency=fluency, score=None)
    import tune.data.augment as augment_module

    original = augment_module._round_trip
    augment_module._round_trip = lambda score, margin, facts, passed, dropped: round_trip(facts, passed, dropped, margin)
    try:
        add_swaps(result, [STAFF, MORNING], generator, 3)
    finally:
        augment_module._round_trip = original
    assert [(r["kind"], r["messages"][-2]["content"], r["heldout"]) for r in result.rows[1:]] == [
        ("swaps", "What hour does Kestrel Hill Observatory open in the morning?", False),
        ("swaps", "What time does Kestrel Hill Observatory open in the evening?", False)]
    assert all(row["kind"] == "swaps" and "heldout" not in row for row in result.trained) and len(result.trained) == 2
    # the held-out rewording already asks the one swap of row 1: not trained again, and row 1 counts as without
    assert result.counts["swaps"] == {"kept": 2, "dropped": {"a copy": 1, "reads worse than the question": 1,
                                                           "another swap of the same word": 1,
                                                           "asks something else (round trip)": 1}}
    assert result.facts_without["swaps"] == 1


def test_a_tiny_models_neighbours_and_fluency(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.infer.near_words import text_fluency, word_neighbours

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    near_words = word_neighbours(model, tokenizer, count=3)
    spaced = [t[1:] for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
              if t[0] in "Ġ▁" and t[1:].isalpha() and t[1:].islower() and len(t) > 5]
    found = near_words([spaced[0], "zzzznotaword"])
    assert list(found) == [spaced[0]] and len(found[spaced[0]]) == 3
    assert all(w[:5] != spaced[0][:5] and w in spaced + [s for s in found[spaced[0]]] for w in found[spaced[0]])
    scores = text_fluency(model, tokenizer)(["What is the answer?", "answer the is What?"])
    assert len(scores) == 2 and all(s < 0 for s in scores)
