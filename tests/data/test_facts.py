"""What an FAQ row says, read without a model: the names and numbers a rewording must keep, and what a
right answer must contain."""

from tune.data.facts import Fact, key_terms


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
