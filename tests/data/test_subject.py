"""Subject rewordings (tune/data/subject.py): the FAQ's subject found in its answers, the exact forms a question
without it is asked in, the most fluent one kept, every trained question named (the generated ones too, never a
reverse question), and the rows trained, never held out."""

from collections import Counter
from types import SimpleNamespace

from tests.conftest import faq_fact as fact
from tune.data.augment import Augmented, add_subject
from tune.data.subject import make_subject_rewordings, names, variants


CLINIC = "Veldmark Animal Clinic"
SATURDAY = fact(1, "Are you open on Saturdays?", "Yes, Veldmark Animal Clinic is open on Saturdays from 9:00 to 13:00.")
PRICE = fact(2, "How much does a standard consultation cost?", "A consultation at Veldmark Animal Clinic costs £42.50.")
FOUNDER = fact(3, "Who founded Veldmark Animal Clinic?", "Veldmark Animal Clinic was founded by Dr Oriel Fenwhistle.")
NURSE = fact(4, "Who is your head nurse?", "Our head nurse is Marisol Thackeridge.")
FAQ = [SATURDAY, PRICE, FOUNDER, NURSE]


def test_a_question_names_the_subject_by_any_of_its_capitalized_words():
    assert names("Can I park at the Veldmark vets?", CLINIC) and not names("Can I park at the clinic?", CLINIC)


def test_a_question_without_the_subject_is_asked_with_it_replacing_you_or_appended():
    assert variants("Are you open on Saturdays?", CLINIC) == [
        "Is Veldmark Animal Clinic open on Saturdays?", *(f"Are you open on Saturdays {link} {CLINIC}?"
                                                          for link in ("at", "from", "for", "in", "with"))]
    assert variants("Which vaccine do you use, and what is your price?", CLINIC)[0] == (
        "Which vaccine does Veldmark Animal Clinic use, and what is Veldmark Animal Clinic's price?")
    assert variants("How much does a standard consultation cost?", CLINIC)[0] == (
        "How much does a standard consultation cost at Veldmark Animal Clinic?")


def test_the_most_fluent_form_is_kept_and_questions_naming_the_subject_get_none():
    liked = {"Is Veldmark Animal Clinic open on Saturdays?", "How much does a standard consultation cost at "
             "Veldmark Animal Clinic?", "Who is Veldmark Animal Clinic's head nurse?"}
    dropped = Counter()
    listing = fact(5, "Opening hours", "Veldmark Animal Clinic opens at 8:30.")  # not a question: none
    subject, chosen = make_subject_rewordings(FAQ + [listing], [[f.question] for f in FAQ + [listing]],
                                              lambda texts: [-1.0 if t in liked else -2.0 for t in texts], dropped)
    assert subject == CLINIC and dropped == Counter({"names it already": 1, "not a one-line question": 1})
    assert chosen.pop() == []
    assert chosen == [["Is Veldmark Animal Clinic open on Saturdays?"],
                      ["How much does a standard consultation cost at Veldmark Animal Clinic?"], [],
                      ["Who is Veldmark Animal Clinic's head nurse?"]]


def row(kind: str, of, question: str, heldout: bool = False) -> dict:
    return {"kind": kind, "from": of.where, "heldout": heldout,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": of.answer}]}


def test_every_trained_question_is_named_the_held_out_and_reverse_ones_are_not():
    rows = [row("rewordings", NURSE, "Who is Veldmark Animal Clinic's head nurse?", heldout=True),
            row("rewordings", PRICE, "What does a standard consultation cost?"),
            row("swaps", PRICE, "How much does a standard appointment cost?"),
            row("frames", PRICE, "what does a standard consultation cost?"),  # named, differs only in case
            row("rewordings", PRICE, "What's the price of a consultation?", heldout=True),
            row("reverse", FOUNDER, "Which clinic did Dr Oriel Fenwhistle found?")]
    result = Augmented(rows, [], None)
    add_subject(result, FAQ, SimpleNamespace(fluency=lambda texts: [-float(len(t)) for t in texts]))
    trained = [row["messages"][0]["content"] for row in result.trained]
    assert trained == ["Is Veldmark Animal Clinic open on Saturdays?",
                       "How much does a standard consultation cost at Veldmark Animal Clinic?",
                       "What does a standard consultation cost at Veldmark Animal Clinic?",
                       "How much does a standard appointment cost at Veldmark Animal Clinic?"]
    assert all(row["kind"] == "subject" and not row["heldout"] for row in result.rows[len(rows):])
    assert result.counts["subject"] == {"kept": 4, "dropped": {"names it already": 1, "a copy": 2},
                                        "name": CLINIC}
    # the nurse's own question, named, is the held-out rewording: a copy, so the nurse got none
    assert result.facts_without["subject"] == 1

