"""What an FAQ row says, read without a model: the row as a Fact (its question and answer), the names and
numbers a rewording must keep (key_terms), what a right answer must contain (Fact.expected) and the name
most of the FAQ's answers share (main_subject), which tells no answer apart. Shared by
data.augment's filters, reviewed rows (tune/data/augment_rows.py) and the guard's sets (tune/train/knowledge.py)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

STOPWORDS = set("a an the is are was were be been of in on at to for by with from and or as it its this that "
                "what which who whom whose when where why how do does did can could will would should may "
                "i you your we our they their there has have had not no".split())
# Words that open a sentence before a name without being part of it ("Every Thistlewick Co-op lantern ...").
DETERMINERS = set("each every one all some any both most many several another no our your their its".split())
# Days and months recur in an FAQ's answers (opening hours) without being what it is about.
CALENDAR = set("monday tuesday wednesday thursday friday saturday sunday mondays tuesdays wednesdays thursdays "
               "fridays saturdays sundays january february march april may june july august september october "
               "november december".split())
# Numbers written out are numbers ("a warranty of seven years"); "one" is as often a pronoun.
NUMBER_WORDS = set("two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                   "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
                   "thousand million billion".split())


@dataclass
class Fact:
    where: str
    messages: list[dict]  # the row's conversation, ending with the answer
    question: str  # the last user turn
    answer: str  # the last assistant turn
    common: str | None = None  # the name most of the FAQ's answers share (main_subject): says nothing of this row

    @property
    def subject(self) -> list[str]:
        """Names in the question: what the fact is about (kept by every rewording, avoided by a reverse question)."""
        return key_terms(self.question)

    @property
    def expected(self) -> str | None:
        """What a right answer must contain: the first name or number the answer adds to the question, else
        its longest new word. The FAQ's common name is not one ("Veldmark Animal Clinic is open Monday to
        Friday" is checked by "Monday": every answer names the clinic), unless the answer adds nothing else."""
        asked = content_words(self.question)  # by stem, so "lantern" is not new after "lanterns"
        common = content_words(self.common) if self.common else set()
        return (common and _new_in(self.answer, asked | common)) or _new_in(self.answer, asked)


def _new_in(answer: str, known: set[str]) -> str | None:
    """The first name or number of `answer` with a word not in `known`, else its longest such word."""
    terms = [t for t in key_terms(answer) if not content_words(t) <= known]
    if terms:
        return terms[0]
    # no name or number: the longest word the question does not have ("mustard" in "... wear mustard
    # yellow aprons")
    words = [w for w in re.findall(r"[\w-]+", answer)
             if len(w) > 1 and w.lower() not in DETERMINERS and not content_words(w) <= known]
    return max(words, key=len) if words else None


def main_subject(facts: list[Fact]) -> str | None:
    """The name (key_terms) in the most answers, when at least half of the answers have it: what the FAQ is
    about (the business, the product)."""
    counts = Counter(term for fact in facts for term in set(key_terms(fact.answer)) if not term[:1].isdigit()
                     and not all(w in CALENDAR or w.split("-")[0] in NUMBER_WORDS for w in term.lower().split()))
    if not counts:
        return None
    term, count = max(counts.items(), key=lambda item: (item[1], len(item[0])))
    return term if count * 2 >= len(facts) and count >= 2 else None


def key_terms(text: str) -> list[str]:
    """Names, numbers (in digits or words), quoted terms, addresses: what a rewording must keep. Capitalized
    words count unless they open a sentence on their own (a question's "What") or are a determiner ("Every
    Thistlewick Co-op lantern"); runs of them, unbroken by punctuation, stay one term ("Ottilie Marchetti",
    "Thistlewick Co-op"); a possessive 's is dropped."""
    terms = re.findall(r"[\"“]([^\"”]{2,40})[\"”]", text)
    words = [(m.start(), m.end(), re.sub(r"'s$", "", m.group().strip(".:'-/"))) for m in re.finditer(r"[\w@.+:/'&-]+", text)]

    def adjacent(i: int) -> bool:  # word i follows word i-1 with only spaces between
        return i > 0 and text[words[i - 1][1]:words[i][0]].strip() == ""

    def named(i: int) -> bool:
        word = words[i][2]
        if not word or word.lower() in STOPWORDS:
            return False
        if any(c.isdigit() for c in word) or "@" in word or "+" in word[1:]:
            return True
        opens_sentence = i == 0 or text[:words[i][0]].rstrip()[-1:] in (".", "?", "!")
        if opens_sentence and word.lower() in DETERMINERS:
            return False
        if word.lower().split("-")[0] in NUMBER_WORDS:
            return True
        starts_run = i + 1 < len(words) and adjacent(i + 1) and words[i + 1][2][:1].isupper()
        return word[0].isupper() and (not opens_sentence or starts_run)
    run: list[str] = []
    for i in range(len(words)):
        if named(i) and (not run or adjacent(i)):
            run.append(words[i][2])
            continue
        if run:
            terms.append(" ".join(run))
        run = [words[i][2]] if named(i) else []
    if run:
        terms.append(" ".join(run))
    return list(dict.fromkeys(t for t in terms if t))


def content_words(text: str) -> set[str]:
    """Words that carry meaning, cut to a stem of 5 letters (found/founder, release/released)."""
    return {word[:5] for word in normal(text).split() if word not in STOPWORDS}


def normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def facts_of(rows: list[tuple[str, dict]], to_messages, data) -> list[Fact]:
    """One Fact per distinct row (weights repeat rows; each is augmented once), each knowing the FAQ's common
    name."""
    facts, seen = [], set()
    for where, row in rows:
        if where in seen:
            continue
        seen.add(where)
        messages = to_messages(row, data.columns, data.system_prompt, where)
        users = [m for m in messages if m["role"] == "user"]
        if messages and messages[-1]["role"] == "assistant" and users:
            facts.append(Fact(where, messages, users[-1]["content"], messages[-1]["content"]))
    common = main_subject(facts)
    return [replace(fact, common=common) for fact in facts]
