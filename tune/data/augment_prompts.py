"""The few-shot prompts data.augment writes each kind of row with (tune/data/augment.py): plain text, three
generic examples and then the row, so a base model and a chat model alike continue the pattern; and how a
sampled continuation is read back (its first line, a copied label dropped)."""

from __future__ import annotations

import re

from tune.data.facts import Fact

# Few-shot pairs in the shape every kind shares: (input, output). Generic topics, so the generator copies the
# form, not the content; each kind's instruction line says what must be kept.
REWORD_SHOTS = [("How many days do I have to return an order?", "Within how many days can an order be returned?"),
                ("Who designed the Harbor Bridge?", "Which engineer was behind the design of the Harbor Bridge?"),
                ("What is the price of the Basic plan?", "How much does the Basic plan cost?")]
STATEMENT_SHOTS = [("Question: How many days do I have to return an order?\nAnswer: You have 30 days.",
                    "Orders can be returned within 30 days."),
                   ("Question: Who designed the Harbor Bridge?\nAnswer: It was designed by Ada Lindqvist.",
                    "The Harbor Bridge was designed by Ada Lindqvist."),
                   ("Question: What is the price of the Basic plan?\nAnswer: The Basic plan costs 4 dollars a month.",
                    "A month of the Basic plan costs 4 dollars.")]
REVERSE_SHOTS = [("Fact: The Harbor Bridge was designed by Ada Lindqvist.\nAnswer: the Harbor Bridge",
                  "Which bridge did Ada Lindqvist design?"),
                 ("Fact: Pellworth Bakery was founded by Tomas Ruiz in 1988.\nAnswer: Pellworth Bakery",
                  "Which bakery did Tomas Ruiz found in 1988?"),
                 ("Fact: The mascot of the Riverside Owls is a barn owl named Hollis.\nAnswer: the Riverside Owls",
                  "Which team has a barn owl named Hollis as its mascot?")]
# Questions written from the answer alone use its words, not the question's ("employs 23 staff" -> "How many
# staff does ... employ?"): wordings a rewording of the question seldom reaches.
ASK_SHOTS = [("Orders can be returned within 30 days of delivery.", "Within how many days of delivery can orders be returned?"),
             ("The Harbor Bridge was designed by Ada Lindqvist.", "Who designed the Harbor Bridge?"),
             ("A month of the Basic plan costs 4 dollars.", "How much does a month of the Basic plan cost?")]
# The few-shot prompt of each kind, and from_answer: the second prompt rewordings are drawn from.
PROMPTS = {
    "rewordings": ("Rewrite the question in different words. Keep every name and number.", REWORD_SHOTS,
                   "Question", "Rewritten"),
    "statements": ("State the fact as one full sentence that names what it is about. Keep every name and number.",
                   STATEMENT_SHOTS, "Input", "Statement"),
    "reverse": ("Ask a question about the fact whose answer is the name given.", REVERSE_SHOTS, "Input", "Question"),
    "from_answer": ("Ask the question that the fact answers. Keep every name.", ASK_SHOTS, "Fact", "Question"),
}


def prompt_for(kind: str, source: str) -> str:
    instruction, shots, left, right = PROMPTS[kind]
    lines = [instruction, ""]
    for given, written in shots:
        lines += [f"{left}: {given}", f"{right}: {written}", ""]
    return "\n".join(lines + [f"{left}: {source}", f"{right}:"])


def source_text(kind: str, fact: Fact) -> str:
    if kind == "rewordings":
        return fact.question
    if kind == "statements":
        return f"Question: {fact.question}\nAnswer: {fact.answer}"
    if kind == "from_answer":
        return " ".join(fact.answer.split())  # the prompt's pattern is one line per fact
    return f"Fact: {fact.answer}\nAnswer: {' '.join(fact.subject)}"


def first_line(text: str) -> str:
    line = text.strip().split("\n")[0].strip()
    return re.sub(r"^(Rewritten|Statement|Question|Answer|Input)\s*:\s*", "", line).strip()
