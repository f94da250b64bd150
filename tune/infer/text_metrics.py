"""How close generated answers are to reference answers, by the maintained libraries the field reports with:
ROUGE-L F1 (Google's rouge-score, Porter stemming), corpus BLEU and chrF (sacrebleu, its default
tokenization), and two plain checks a person reads at once: exact match and "contains the reference"
(both after trimming, lowercasing and collapsing whitespace). The libraries come with `tune-peft[eval]`."""

from __future__ import annotations

import re

from tune.errors import TuneError

METRICS = ("exact_match", "contains", "rouge_l", "bleu", "chrf")


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def row_scores(answer: str, reference: str, scorer) -> dict:
    import sacrebleu

    return {"exact_match": float(normalized(answer) == normalized(reference)),
            "contains": float(normalized(reference) in normalized(answer)),
            "rouge_l": scorer.score(reference, answer)["rougeL"].fmeasure,
            "chrf": sacrebleu.sentence_chrf(answer, [reference]).score}


def scores(answers: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    """(corpus scores, one dict per row). ROUGE-L, exact match and contains are means over rows; BLEU and chrF
    are corpus-level as sacrebleu computes them (a mean of sentence BLEU is not BLEU); all on a 0-1 scale
    except BLEU and chrF, which keep sacrebleu's 0-100."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError:
        raise TuneError("generation metrics need rouge-score and sacrebleu: pip install 'tune-peft[eval]'") from None
    if len(answers) != len(references) or not answers:
        raise TuneError("no answers to score")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rows = [row_scores(answer, reference, scorer) for answer, reference in zip(answers, references)]
    corpus = {name: sum(row[name] for row in rows) / len(rows) for name in ("exact_match", "contains", "rouge_l")}
    corpus["bleu"] = sacrebleu.corpus_bleu(answers, [references]).score
    corpus["chrf"] = sacrebleu.corpus_chrf(answers, [references]).score
    return {name: corpus[name] for name in METRICS}, rows
