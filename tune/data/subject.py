"""Subject rewordings: the questions a fact trains on that do not name what the FAQ is about, asked naming it.

A business writes its FAQ to its own customers, in the second person or about nothing named ("Are you open
on Saturdays?", "How much does a standard consultation cost?"), while people asking its assistant name it
("Is Veldmark Animal Clinic open on Saturdays?", "What does a consultation cost at Veldmark?"). Trained only
as written, those facts are tied to questions without the name, and a question with the name is pulled
toward the rows whose questions have it (the address, the owner). The subject is the name most answers
share (at least half of them: the business, the product). Every question a fact trains on (its own, and
its generated rewordings, swaps and frames) that has no word of it is also asked naming it: "you"/"your"
replaced by the name ("do you" -> "does <name>"), or the name appended ("... at <name>?", "from", "for",
"in", "with"), whichever the generator finds the most fluent. Named once per fact, the name stayed a cue
for the few facts whose questions had it; named everywhere, it tells the facts apart no more than "you"
does. Trained like rewordings, never held out; no model samples them, and no round trip (note 29).

Measured in docs/knowledge.md, notes 25 and 29."""

from __future__ import annotations

import re
from collections import Counter

from tune.data.facts import Fact, main_subject

# Second-person forms and what they become with the subject named, verbs agreeing ("are you" -> "is X").
SECOND_PERSON = [(r"\bare you\b", "is {}"), (r"\bwere you\b", "was {}"), (r"\bdo you\b", "does {}"),
                 (r"\bhave you\b", "has {}"), (r"\byour\b", "{}'s"), (r"\byou\b", "{}")]
LINKS = ("at", "from", "for", "in", "with")  # how an appended name attaches to the question


def names(question: str, subject: str) -> bool:
    """The question names the subject or a word of it, as a name ("the Veldmark vets" names "Veldmark
    Animal Clinic"; "the clinic", lowercase, does not)."""
    return any(re.search(rf"\b{re.escape(word)}\b", question) for word in subject.split() if word[:1].isupper())


def variants(question: str, subject: str) -> list[str]:
    """The question with its second person replaced by the subject (when it has one), and with the subject
    appended by each of LINKS."""
    out = []
    text = question
    for pattern, form in SECOND_PERSON:
        text = re.sub(pattern, lambda m: _cased(m.group(), form.format(subject)), text, flags=re.IGNORECASE)
    if text != question:
        out.append(text)
    stem = question.rstrip().rstrip("?").rstrip()
    out += [f"{stem} {link} {subject}?" for link in LINKS]
    return out


def _cased(found: str, replacement: str) -> str:
    return replacement[:1].upper() + replacement[1:] if found[:1].isupper() else replacement


def make_subject_rewordings(facts: list[Fact], asked: list[list[str]], fluency,
                            dropped: Counter) -> tuple[str | None, list[list[str]]]:
    """(the subject, per fact the rewordings that name it): each of `asked[i]` (the questions fact i trains
    on: its own and the generated ones) that names nothing of the subject, asked naming it in its most
    fluent form; a question naming it already or not one line is counted in `dropped`.
    fluency(texts) -> mean log-probability per token."""
    subject = main_subject(facts)
    if subject is None:
        return None, [[] for _ in facts]
    found: list[list[list[str]]] = []
    for questions in asked:
        forms = []
        for question in questions:
            if "\n" in question or not question.rstrip().endswith("?"):
                dropped["not a one-line question"] += 1
            elif names(question, subject):
                dropped["names it already"] += 1
            else:
                forms.append(variants(question, subject))
        found.append(forms)
    texts = [text for forms in found for options in forms for text in options]
    scores = iter(fluency(texts)) if texts else iter(())
    chosen = []
    for forms in found:
        best = [max(((next(scores), text) for text in options), key=lambda pair: pair[0])[1] for options in forms]
        chosen.append(list(dict.fromkeys(best)))
    return subject, chosen
