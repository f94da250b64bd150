"""What an FAQ row says, read without a model: the names and numbers a rewording must keep, and what a
right answer must contain."""

from types import SimpleNamespace

from tune.data.facts import Fact, facts_of, key_terms, main_subject
from tune.data.formats import FORMATS


def test_key_terms_are_names_numbers_and_addresses():
    assert key_terms("Thistlewick Co-op was founded in 1931 by a small group of lantern makers.") == [
        "Thistlewick Co-op", "1931"]
    assert key_terms("The company behind Quillnote, Sorensen Paperworks, is based in Larkhaven.") == [
        "Quillnote", "Sorensen Paperworks", "Larkhaven"]
    assert key_terms("What is Quillnote's support email? Write to help@quillnote.example or press Ctrl+N.") == [
        "Quillnote", "help@quillnote.example", "Ctrl+N"]
    assert key_terms("Who founded it?") == [] and key_terms('Open the "Lantern Room" door.') == ["Lantern Room"]
    assert key_terms("Every Thistlewick Co-op lantern has a warranty of seven years.") == ["Thistlewick Co-op", "seven"]
    assert key_terms("Each sailing carries twenty-one bicycles. One of them is free.") == ["twenty-one"]


def test_expected_is_what_the_answer_adds_to_the_question():
    def expected(question, answer):
        return Fact("row 1", [], question, answer).expected

    assert expected("How long is the warranty on Thistlewick Co-op lanterns?",
                    "Every Thistlewick Co-op lantern comes with a warranty of seven years.") == "seven"
    assert expected("How many bicycles can each Harbourline Ferries sailing carry?",
                    "Each Harbourline Ferries sailing has space for 14 bicycles.") == "14"
    assert expected("What colour are the staff aprons at Thistlewick Co-op?",
                    "Staff at Thistlewick Co-op wear mustard yellow aprons while they work.") == "mustard"
    assert expected("Who founded Thistlewick Co-op?", "Thistlewick Co-op was founded by Ottilie Marchetti.") == "Ottilie Marchetti"


CLINIC = "Veldmark Animal Clinic"
BUSINESS_VOICE = [("Are you open on Saturdays?", "Yes, Veldmark Animal Clinic is open on Saturdays from 9:00 to 13:00."),
                  ("Which vet looks after exotic pets?", "At Veldmark Animal Clinic, Dr Benedikt Oakhollow sees exotic pets."),
                  ("Who founded Veldmark Animal Clinic?", "Veldmark Animal Clinic was founded by Dr Oriel Fenwhistle."),
                  ("Who is your head nurse?", "Our head nurse is Marisol Thackeridge."),
                  ("What are you called?", "We are Veldmark Animal Clinic.")]


def test_the_faqs_common_name_is_the_one_at_least_half_the_answers_share():
    faq = [Fact(f"row {n}", [], q, a) for n, (q, a) in enumerate(BUSINESS_VOICE, start=1)]
    assert main_subject(faq) == CLINIC  # four answers of five; "Marisol Thackeridge" one
    assert main_subject(faq[3:4] + [Fact("row 6", [], "Do you sell food?", "We sell Barkly Bites.")]) is None
    hours = [Fact("row 1", [], "When are you open?", "We open Monday to Friday."),
             Fact("row 2", [], "When do the classes run?", "Classes run every Monday at seven.")]
    assert main_subject(hours) is None  # a day or a number word in half the answers is no subject


def test_the_faqs_common_name_is_not_what_a_right_answer_is_checked_by():
    # every answer names the clinic, so an answer naming it says nothing of whether it is right; it is the
    # check only where the answer adds nothing else
    rows = [(f"faq.jsonl:row {n}", {"instruction": q, "output": a}) for n, (q, a) in enumerate(BUSINESS_VOICE, start=1)]
    data = SimpleNamespace(columns={}, system_prompt=None)
    facts = facts_of(rows, FORMATS["instruction"].messages, data)
    assert {fact.common for fact in facts} == {CLINIC}
    assert [fact.expected for fact in facts] == ["9:00", "Dr Benedikt Oakhollow", "Dr Oriel Fenwhistle",
                                                 "Marisol Thackeridge", CLINIC]
    alone = Fact("row 1", [], *BUSINESS_VOICE[0])  # without the FAQ around it, the clinic is what the answer adds
    assert alone.common is None and alone.expected == CLINIC
