"""Writes data_templates/sentiment_train.jsonl and sentiment_heldout.jsonl: English reviews of products,
restaurants, hotels, apps and courses, labelled positive or negative.

Reviews are assembled from per-domain aspect phrases and many sentence shapes: plain praise and
complaints, negations ("not bad at all", "wasn't worth it"), mixed clauses whose verdict decides the
label ("the room was tiny, but the staff made up for it"), one-liners and multi-sentence reviews. To
keep the held-out split honest, every fourth item name and opener appears only in held-out reviews, and
held-out texts that also occur in train are dropped; the sentiment phrases themselves are shared, so
the split measures new combinations, not unseen vocabulary (with phrases split too, frozen MiniLM
features reach only ~0.6: the encoder was trained for similarity, not sentiment). Run: python scripts/make_sentiment_data.py (deterministic)."""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data_templates"

DOMAINS = {
    "product": {
        "items": ["these headphones", "the blender", "this phone case", "the vacuum", "this laptop stand",
                  "the kettle", "these running shoes", "the desk lamp", "this backpack", "the air fryer",
                  "the smartwatch", "this office chair"],
        "pos": ["the battery easily lasts two days", "it feels solid and well made", "setup took two minutes",
                "the sound is crisp and clear", "it does exactly what it promises", "the build quality is excellent",
                "it arrived early and well packed", "it is quiet even on the highest setting",
                "it is comfortable for hours", "the price is fair for what you get", "it still works perfectly after months",
                "customer support replaced a part without any fuss"],
        "neg": ["it stopped working after a week", "the plastic feels cheap and flimsy", "the instructions are useless",
                "the battery dies by lunchtime", "it is far louder than advertised", "it arrived scratched",
                "a button broke on the second day", "it overheats constantly", "the strap snapped within a month",
                "it smells of burnt plastic", "the refund took six weeks", "it wobbles no matter what I do"],
    },
    "restaurant": {
        "items": ["this place", "the bistro on Main Street", "the new ramen bar", "this pizzeria", "the cafe",
                  "the steakhouse", "this taco spot", "the vegan kitchen", "the brunch place", "this sushi bar",
                  "the family diner", "the wine bar"],
        "pos": ["the food came out hot and fresh", "the waiter was attentive and friendly", "the portions are generous",
                "every dish was full of flavour", "the desserts are worth the trip alone", "we were seated right away",
                "the prices are very reasonable", "the atmosphere is warm and relaxed", "the pasta tasted homemade",
                "they handled my allergy carefully", "the coffee is the best in town", "the staff remembered our order"],
        "neg": ["the food was cold and bland", "we waited an hour for our mains", "the waiter was rude to us",
                "the bill had items we never ordered", "the chicken was undercooked", "the tables were sticky",
                "it is overpriced for tiny portions", "the music was so loud we could not talk",
                "my soup arrived lukewarm", "the fish did not taste fresh", "they forgot half our order",
                "the bathroom was filthy"],
    },
    "hotel": {
        "items": ["this hotel", "the resort", "the guesthouse", "this hostel", "the airport hotel",
                  "the boutique hotel", "this inn", "the beach resort", "the city apartment", "this lodge",
                  "the spa hotel", "the motel"],
        "pos": ["the room was spotless", "the bed was incredibly comfortable", "check-in took two minutes",
                "the staff went out of their way to help", "the breakfast buffet was excellent",
                "the view from the balcony was stunning", "it is a short walk to everything",
                "the room was quiet at night", "the pool was clean and warm", "they upgraded us for free",
                "the shower had great pressure", "housekeeping was thorough every day"],
        "neg": ["the room smelled of smoke", "the sheets were stained", "the air conditioning never worked",
                "the walls are paper thin", "check-in took over an hour", "there was mould in the bathroom",
                "the wifi dropped every few minutes", "reception was unhelpful and rude",
                "the breakfast was stale", "we found bugs in the bed", "the pool was closed all week",
                "they charged us twice for parking"],
    },
    "app": {
        "items": ["this app", "the budgeting app", "the new update", "this photo editor", "the banking app",
                  "the fitness tracker app", "this note-taking app", "the language app", "the music player",
                  "the weather app", "this password manager", "the meditation app"],
        "pos": ["it is fast and never crashes", "the interface is clean and intuitive", "sync works flawlessly",
                "the free version is genuinely useful", "support answered within an hour",
                "it saves me time every single day", "the widgets are really handy", "it uses very little battery",
                "the dark mode looks great", "it just works", "the reminders keep me on track",
                "the latest update made it even faster"],
        "neg": ["it crashes every time I open it", "the ads are constant and intrusive", "it drains my battery",
                "my data disappeared after the update", "the login keeps failing", "it is painfully slow",
                "half the features are behind a paywall", "notifications never arrive on time",
                "it froze my phone twice", "support never replied", "the sync loses my notes",
                "the layout is confusing and cluttered"],
    },
    "course": {
        "items": ["this course", "the online bootcamp", "the cooking class", "this Python course",
                  "the photography workshop", "the statistics module", "this language course", "the yoga class",
                  "the design program", "this writing seminar", "the guitar lessons", "the data science track"],
        "pos": ["the instructor explains things clearly", "the exercises are practical", "the pace is just right",
                "I learned more than I expected", "the feedback on assignments was detailed",
                "the videos are short and focused", "the community forum is very helpful",
                "every lesson builds on the last", "the projects are actually fun", "it was worth every penny",
                "the teacher clearly loves the subject", "I landed a job partly thanks to it"],
        "neg": ["the lectures are dull and repetitive", "the material is badly out of date",
                "the instructor rushes through everything", "the quizzes test things never taught",
                "the audio is barely audible", "nobody answers questions in the forum", "it is far too basic",
                "the certificate is worthless", "half the links are broken", "the assignments are never graded",
                "it is overpriced for what it covers", "the teacher reads straight from the slides"],
    },
}

# Whole sentences whose sentiment comes from a negation or an idiom, not from a polar word alone.
NEGATED = {
    "positive": ["Not bad at all.", "I can't complain about {item}.", "Honestly, I have no regrets.",
                 "I never had a single problem with {item}.", "Nothing to complain about here.",
                 "I was not disappointed.", "It did not let me down once.", "Couldn't be happier with {item}.",
                 "Not cheap, but worth it.", "I wouldn't change a thing."],
    "negative": ["Not worth the money.", "I was not impressed with {item}.", "Not what I expected at all.",
                 "I wouldn't recommend {item} to anyone.", "Hardly what I would call good value.",
                 "I won't be coming back.", "It didn't live up to the hype.", "Never again.",
                 "I can't say I enjoyed {item}.", "Not good enough for the price."],
}
VERDICTS = {
    "positive": ["Highly recommended.", "I'd go back in a heartbeat.", "Five stars from me.", "Love it!",
                 "Would definitely buy again.", "Overall a great experience.", "Worth every cent.",
                 "Absolutely delighted.", "Ten out of ten.", "A real gem."],
    "negative": ["Avoid.", "Total waste of money.", "One star is generous.", "Really disappointing.",
                 "I want my money back.", "Stay away.", "What a letdown.", "Overall a terrible experience.",
                 "Save yourself the trouble.", "Deeply frustrating."],
}
OPENERS = ["", "Honestly, ", "To be fair, ", "I have to say ", "After three weeks, ", "Update: ", "So, ",
           "We tried it last month and ", "My partner and I agree: ", "Long story short, "]
LONE = {"positive": "My only gripe:", "negative": "The one good thing:"}
SWITCH = {"positive": ["but", "though in the end", "yet overall", "but honestly"],
          "negative": ["but", "although sadly", "yet in the end", "but unfortunately"]}


def _split(items: list[str], heldout: bool) -> list[str]:
    """Every fourth item is reserved for the held-out split, so it tests phrasing it has not seen."""
    return [item for i, item in enumerate(items) if (i % 4 == 3) == heldout]


def review(rng: random.Random, domain: dict, label: str, heldout: bool) -> str:
    other = "negative" if label == "positive" else "positive"
    item = rng.choice(_split(domain["items"], heldout))
    own = domain["pos" if label == "positive" else "neg"]
    opposite = domain["neg" if label == "positive" else "pos"]
    verdict = rng.choice(VERDICTS[label])
    negated = rng.choice(NEGATED[label]).format(item=item)
    shape = rng.randrange(7)
    if shape == 0:  # one-liner
        text = rng.choice([verdict, negated, f"{item.capitalize()}? {verdict}"])
    elif shape == 1:  # plain: opener + one aspect
        text = (f"{rng.choice(_split(OPENERS, heldout))}{rng.choice(own)}. That sums up {item}. {verdict}" if rng.random() < 0.5
                else f"{item.capitalize()}: {rng.choice(own)}. {verdict}")
    elif shape == 2:  # two aspects of the same polarity
        first, second = rng.sample(own, 2)
        text = f"{rng.choice(_split(OPENERS, heldout))}{first}, and {second}. {negated}"
    elif shape == 3:  # mixed: the opposite first, then the clause that decides the label
        text = (f"{rng.choice(opposite).capitalize()}, {rng.choice(SWITCH[label])} {rng.choice(own)}. "
                f"{verdict}")
    elif shape == 4:  # mixed the other way round: concession at the end does not flip the verdict
        text = f"{negated} {rng.choice(own).capitalize()}. Sure, {rng.choice(opposite)}, but that's minor."
    elif shape == 5:  # negation only
        text = f"{rng.choice(_split(OPENERS, heldout))}{negated[0].lower() + negated[1:]}" if rng.random() < 0.5 else negated
    else:  # long multi-sentence review
        parts = rng.sample(own, 3)
        text = (f"We used {item} for a while before writing this. {parts[0].capitalize()}. "
                f"{parts[1].capitalize()}, and {parts[2]}. {LONE[label]} {rng.choice(opposite)}, "
                f"{rng.choice(SWITCH[label])} that was the exception. {negated} {verdict}")
    return text[0].upper() + text[1:]


def build(count: int, seed: int, heldout: bool, exclude: set[str]) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < count:
        name = rng.choice(sorted(DOMAINS))
        label = "positive" if len(rows) % 2 == 0 else "negative"  # balanced
        text = review(rng, DOMAINS[name], label, heldout)
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label, "domain": name})
    rng.shuffle(rows)
    return rows


def main() -> None:
    train = build(720, seed=7, heldout=False, exclude=set())
    heldout = build(240, seed=11, heldout=True, exclude={row["text"] for row in train})
    for name, rows in (("sentiment_train.jsonl", train), ("sentiment_heldout.jsonl", heldout)):
        (OUT / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {OUT / name}")


if __name__ == "__main__":
    main()
