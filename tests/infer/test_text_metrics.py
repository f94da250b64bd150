"""Generation metrics on fixed strings, against values worked out by hand and the libraries' own results."""

import pytest

from tune.infer.text_metrics import scores


def test_exact_match_and_contains_ignore_case_and_spacing():
    corpus, rows = scores(["  Paris ", "It is Paris.", "Lyon"], ["paris", "Paris", "Paris"])
    assert [row["exact_match"] for row in rows] == [1.0, 0.0, 0.0]
    assert [row["contains"] for row in rows] == [1.0, 1.0, 0.0]
    assert corpus["exact_match"] == pytest.approx(1 / 3) and corpus["contains"] == pytest.approx(2 / 3)


def test_rouge_l_is_the_longest_common_subsequence_f1():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is "the cat on the mat": 5 of 6 tokens each way
    corpus, rows = scores(["the cat sat on the mat", "hello"], ["the cat is on the mat", "goodbye"])
    assert rows[0]["rouge_l"] == pytest.approx(5 / 6) and rows[1]["rouge_l"] == 0.0
    assert corpus["rouge_l"] == pytest.approx(5 / 12)


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    import sacrebleu

    answers = ["the quick brown fox jumps over the dog", "a stitch in time saves nine"]
    references = ["the quick brown fox jumped over the lazy dog", "a stitch in time saves nine"]
    corpus, _ = scores(answers, references)
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(answers, [references]).score)
    assert corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(answers, [references]).score)
    assert 0 < corpus["bleu"] < 100
    same, _ = scores(references, references)
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    assert same["exact_match"] == same["contains"] == same["rouge_l"] == 1.0
