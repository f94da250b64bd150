"""Frames: a question asked the other ways people ask the same thing.

A question's frame is the part that says what is asked: "How much does {x} cost?", "Who is your {x}?",
"Can I {v}?". People who ask a shop's assistant use their own frame as often as their own words: "What does
a full service cost?", "What do you charge for a full service?" for the FAQ's "How much does a full bike
service cost?". A small generator rewords mostly inside the question's frame, so the frames are written
here: FRAMES holds groups of English frames that ask the same thing, each with the slot(s) it carries
over. A question that one frame matches (the longest, when several do) gets the other frames of its group
with its own words in the slots (a frame marked "~" is only written, never matched: "Where can I find my
order?" is not a question about an address), kept when
- it reads as well as the question (`fluency`, mean log-probability per token, at most FLUENCY_DROP lower):
  "How much does the Pawsure Plan per month cost?" made from "How much is the Pawsure Plan per month?" is
  dropped there;
- it passes the round trip at the recipe's margin, with the same rival rows as sampled rewordings.
At most `wanted` per row, the likeliest first. A slot never starts with "to" or "there" nor ends in a
preposition ("Can I get to the station?", "Who is the course for?" are other questions). Frames train
like rewordings and are never held out (the run's own check stays the generator's wordings); a question
no frame matches gets none.

Measured in docs/knowledge.md, note 28."""

from __future__ import annotations

import re
from collections import Counter

from tune.data.facts import Fact, normal
from tune.data.swaps import reading_as_well

FLUENCY_DROP = 0.5  # nats per token: a frame changes several words, a swap one (swaps.py: 0.3)
# {x}, {x2}: things, {v}: what someone does, {r}: the rest of the question, possibly nothing (" on Sundays");
# "~": written, never matched (too wide a net as a question read: "Where can I find my order?").
FRAMES = [
    ["how much is {x}", "how much does {x} cost", "what does {x} cost", "what is the price of {x}",
     "what is the cost of {x}", "what do you charge for {x}", "how much do I pay for {x}"],
    ["how much does it cost to {v}", "what does it cost to {v}", "how much is it to {v}",
     "what do you charge to {v}", "how much do I pay to {v}", "what is the price to {v}"],
    ["who is your {x}", "who's your {x}", "who works as your {x}", "can you tell me who your {x} is"],
    ["who is the {x}", "who's the {x}", "can you tell me who the {x} is"],
    ["who founded {x}", "who started {x}", "who set up {x}", "who established {x}", "who is the founder of {x}"],
    ["when was {x} founded", "when was {x} established", "what year was {x} founded", "when was {x} set up"],
    ["when did {x} open", "when did {x} first open", "what year did {x} open", "~when did {x} start"],
    ["where is {x} located", "where is {x}", "where's {x}", "~where can I find {x}", "~what is the address of {x}"],
    ["do you offer {x}", "do you provide {x}", "~do you have {x}", "~can I get {x}", "~do you do {x}"],
    ["can I {v}", "is it possible to {v}", "am I able to {v}", "could I {v}", "may I {v}"],
    ["do I need to {v}", "do I have to {v}", "is it necessary to {v}", "must I {v}"],
    ["how do I {v}", "how can I {v}", "what do I do to {v}", "what should I do to {v}"],
    ["how long does {x} take", "how long will {x} take", "how much time does {x} take"],
    ["how long does it take to {v}", "how long will it take to {v}", "how much time does it take to {v}"],
    ["how many {x} work at {x2}", "~how many {x} are there at {x2}", "~how many {x} does {x2} have"],
    ["how many {x} does {x2} have", "~how many {x} are there at {x2}", "~how many {x} has {x2} got"],
    ["is there {x}", "~have you got {x}"],
    ["how many {x} do you have{r}", "how many {x} have you got{r}", "~how many {x} are there{r}"],
    ["what are your opening hours{r}", "what are your hours{r}", "when are you open{r}",
     "what time are you open{r}", "what hours are you open{r}"],
    ["are you open{r}", "do you open{r}"],
    ["what is your phone number", "what is your telephone number", "what number can I call you on",
     "what number do I call", "how can I phone you"],
    ["what is your email address", "what email address can I write to", "how can I email you"],
    ["what is the name of {x}", "what is {x} called", "what's {x} called", "what do you call {x}"],
    ["what is your {x}", "what's your {x}", "can you tell me your {x}"],
    ["what is the {x}", "what's the {x}", "can you tell me the {x}"],
]
_SLOT = re.compile(r"\{(x2|[xvr])\}")
# a slot's words: not opening with "to"/"there", not closing on a preposition, no question mark
_WORDS = r"(?!(?:to|there)\b)[^?]+?(?<! for)(?<! at)(?<! to)(?<! with)(?<! in)(?<! on)(?<! about)"
_SLOTS = {"x": f"(?P<x>{_WORDS})", "v": f"(?P<v>{_WORDS})", "r": r"(?P<r>(?: (?!to\b)[^?]+?)?)",
          "x2": rf"(?P<x2>(?![^?]* at ){_WORDS})"}  # the second thing of "work at": one place, not "night at the shop"


def _pattern(frame: str) -> re.Pattern:
    parts = _SLOT.split(frame)  # literal, slot name, literal, ...
    regex = "".join(re.escape(part) if i % 2 == 0 else _SLOTS[part] for i, part in enumerate(parts))
    return re.compile(regex + r"\?", re.IGNORECASE)


_COMPILED = [[(frame, _pattern(frame)) for frame in group if not frame.startswith("~")] for group in FRAMES]


def _literal(frame: str) -> int:
    return len(_SLOT.sub("", frame))


def reframed(question: str) -> list[str]:
    """The question in each other frame of the group of its longest matching frame, its slots' words kept;
    [] when no frame matches the whole question."""
    text = re.sub(r"\s*\?$", "?", question.strip().replace("\u2019", "'"))
    found = [(_literal(frame), g, frame, match) for g, group in enumerate(_COMPILED) for frame, pattern in group
             if (match := pattern.fullmatch(text))]
    if not found:
        return []
    _, g, own, match = max(found, key=lambda item: item[0])
    slots = match.groupdict()
    out = []
    for frame in (written.lstrip("~") for written in FRAMES[g]):
        if frame == own:
            continue
        filled = _SLOT.sub(lambda m: slots.get(m.group(1)) or "", frame)
        out.append(filled[:1].upper() + filled[1:] + "?")
    return out


def make_frames(facts: list[Fact], fluency, round_trip, margin: float, wanted: int, dropped: Counter,
                taken: set[str] = frozenset()) -> list[list[str]]:
    """Up to `wanted` reframed questions per fact, none of them one of the `taken` questions (normalized: the
    rows already made, held-out ones above all). fluency(texts) -> mean log-probability per token of each
    text; round_trip(facts, per-fact texts, dropped, margin) -> the texts that ask for each fact's answer,
    likeliest first."""
    per_fact = [reframed(fact.question) if "\n" not in fact.question else [] for fact in facts]
    new = [[text for text in found if normal(text) not in taken] for found in per_fact]
    dropped["a copy"] += sum(len(found) - len(kept) for found, kept in zip(per_fact, new))
    per_fact = new
    ranked = round_trip(facts, reading_as_well(facts, per_fact, fluency, FLUENCY_DROP, dropped), dropped, margin)
    dropped["more than wanted"] += sum(max(0, len(texts) - wanted) for texts in ranked)
    return [texts[:wanted] for texts in ranked]
