"""Reframed questions (tune/data/frames.py): the exact rewordings each frame gives, the longest frame winning,
and, with scripted fluency and round trip, which are kept and why the others were dropped."""

from collections import Counter
from types import SimpleNamespace

from tests.conftest import faq_fact as fact
import tune.data.augment as augment_module
from tune.data.augment import Augmented, add_frames
from tune.data.frames import make_frames, reframed


PRICE = fact(1, "How much is a puncture repair?", "A puncture repair costs £9.")
HOURS = fact(2, "What are your opening hours on Sundays?", "On Sundays we open from 10:00 to 16:00.")
NONE = fact(3, "Are your repairs guaranteed?", "Every repair comes with a 90-day guarantee.")
READS_WORSE = {"How much do I pay for a puncture repair?", "What time are you open on Sundays?"}


def fluency(texts):
    return [-3.0 if text in READS_WORSE else -1.0 for text in texts]


def round_trip(facts, passed, dropped, margin):
    """Keeps every question but those with "hours are"; the order given is the likelihood's."""
    dropped["asks something else (round trip)"] += sum("hours are" in t for texts in passed for t in texts)
    return [[t for t in texts if "hours are" not in t] for texts in passed]


def test_a_question_gets_the_other_frames_of_its_group_with_its_own_words():
    assert reframed("How much is a puncture repair?") == [
        "How much does a puncture repair cost?", "What does a puncture repair cost?",
        "What is the price of a puncture repair?", "What is the cost of a puncture repair?",
        "What do you charge for a puncture repair?", "How much do I pay for a puncture repair?"]
    assert reframed("  can i hire a child trailer ?") == [
        "Is it possible to hire a child trailer?", "Am I able to hire a child trailer?",
        "Could I hire a child trailer?", "May I hire a child trailer?"]


def test_the_longest_frame_wins_and_the_rest_of_the_question_is_kept_or_empty():
    # "how much is {x}" matches too, with x = "it to hire a bike": the longer frame asks the same better
    assert reframed("How much is it to hire a bike?")[:2] == ["How much does it cost to hire a bike?",
                                                              "What does it cost to hire a bike?"]
    assert reframed("What are your opening hours on Sundays?")[:2] == ["What are your hours on Sundays?",
                                                                       "When are you open on Sundays?"]
    assert reframed("What are your opening hours?")[:2] == ["What are your hours?", "When are you open?"]
    assert reframed("How many bikes do you have for hire?") == ["How many bikes have you got for hire?",
                                                                "How many bikes are there for hire?"]


def test_the_founder_goes_to_the_founders_and_written_only_frames_are_never_read():
    assert reframed("Who is the founder of Acme?")[:2] == ["Who founded Acme?", "Who started Acme?"]
    assert reframed("Do you offer bike hire?") == [  # "~" frames written, not matched
        "Do you provide bike hire?", "Do you have bike hire?", "Can I get bike hire?", "Do you do bike hire?"]
    assert reframed("What\u2019s your phone number  ?")[:1] == ["What is your phone number?"]


def test_questions_that_would_reframe_into_another_question_get_none():
    for question in ["Do you have a dress code?", "Do you have to book in advance?", "Where can I find my order?",
                     "Who is the course for?", "Who is your course aimed at?", "Are you open to new patients?",
                     "When did the sale start?", "How many people are there in a group?",
                     "How many staff work at night at the shop?", "Can I get there by bus?"]:
        assert not any(text.startswith(("Do you offer", "Do you provide", "What is the address", "Can you tell me",
                                        "Who works as", "Do you open", "What year", "How many people do",
                                        "How many staff does", "Do you offer there"))
                       for text in reframed(question)), question


def test_no_frame_no_rewording():
    assert reframed("Are your repairs guaranteed?") == []
    assert reframed("How much is a repair? And a service?") == []  # the frame must take the whole question
    assert reframed("Who founded the shop") == []  # not a question


def test_kept_when_it_reads_as_well_and_asks_for_the_answer_at_most_wanted():
    dropped = Counter()
    kept = make_frames([PRICE, HOURS, NONE], fluency, round_trip, 0.5, 3, dropped)
    assert kept == [["How much does a puncture repair cost?", "What does a puncture repair cost?",
                     "What is the price of a puncture repair?"],
                    ["What are your hours on Sundays?", "When are you open on Sundays?"],
                    []]
    assert dropped == Counter({"reads worse than the question": 2, "asks something else (round trip)": 1,
                               "more than wanted": 2})  # the row no frame matches is counted as a row without


def test_frames_train_like_rewordings_and_are_never_held_out(monkeypatch):
    held = {"kind": "rewordings", "from": HOURS.where, "heldout": True,
            "messages": [{"role": "user", "content": "What are your hours on Sundays?"},
                         {"role": "assistant", "content": HOURS.answer}]}
    result = Augmented([held], [], None, {"rewordings": {"kept": 1, "dropped": {}}}, {"rewordings": 0})
    monkeypatch.setattr(augment_module, "_round_trip",
                        lambda score, margin, facts, passed, dropped: round_trip(facts, passed, dropped, margin))
    add_frames(result, [PRICE, HOURS, NONE], SimpleNamespace(fluency=fluency, score=None), 1, 0.5)
    assert [(r["kind"], r["messages"][-2]["content"], r["heldout"]) for r in result.rows[1:]] == [
        ("frames", "How much does a puncture repair cost?", False),
        ("frames", "When are you open on Sundays?", False)]  # the first of row 2's frames is held out already
    assert all(row["kind"] == "frames" and "heldout" not in row for row in result.trained)
    assert result.counts["frames"] == {"kept": 2, "dropped": {
        "a copy": 1, "reads worse than the question": 2,
        "asks something else (round trip)": 1, "more than wanted": 4}}
    assert result.facts_without["frames"] == 1


def test_with_the_round_trip_off_frames_are_kept_in_their_groups_order():
    result = Augmented([], [], None, {}, {})
    add_frames(result, [PRICE], SimpleNamespace(fluency=fluency, score=None), 2, None)
    assert [row["messages"][-2]["content"] for row in result.rows] == [
        "How much does a puncture repair cost?", "What does a puncture repair cost?"]
