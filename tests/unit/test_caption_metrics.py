"""BLEU and CIDEr-D against cases computed by hand (see each comment)."""

import math

import pytest

from polymodal.eval.caption_metrics import bleu, caption_scores, cider, cider_per_item, tokenize

LOG2 = math.log(2)


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("A dog, running!  On the BEACH.") == ["a", "dog", "running", "on", "the", "beach"]


def test_bleu_of_an_exact_match_is_one() -> None:
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat", "a cat"]]) == pytest.approx(
        {"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0})


def test_bleu_clips_counts_by_the_references_papineni_example() -> None:
    # 7 x "the": "the" occurs at most twice in one reference -> unigram precision 2/7;
    # closest reference length 7 = candidate length -> no brevity penalty; no bigram matches
    scores = bleu(["the the the the the the the"], [["the cat is on the mat", "there is a cat on the mat"]])
    assert scores["bleu1"] == pytest.approx(2 / 7)
    assert scores["bleu2"] == scores["bleu4"] == 0.0


def test_bleu_brevity_penalty_and_geometric_mean() -> None:
    # "a cat on the mat" (5 words) vs "the cat is on the mat" (6): unigrams 4/5 (not "a"),
    # bigrams 2/4 ("on the", "the mat"), trigrams 1/3 ("on the mat"), 4-grams 0/2;
    # brevity penalty exp(1 - 6/5)
    scores = bleu(["a cat on the mat"], [["the cat is on the mat"]])
    penalty = math.exp(1 - 6 / 5)
    assert scores["bleu1"] == pytest.approx(penalty * 0.8)
    assert scores["bleu2"] == pytest.approx(penalty * math.sqrt(0.8 * 0.5))
    assert scores["bleu3"] == pytest.approx(penalty * (0.8 * 0.5 / 3) ** (1 / 3))
    assert scores["bleu4"] == 0.0


def test_bleu_is_a_corpus_statistic_not_a_mean_of_sentences() -> None:
    # pooled counts: unigrams (2 + 1) / (2 + 2), lengths 4 vs 4 -> no penalty
    scores = bleu(["a cat", "a dog"], [["a cat"], ["the bird"]], max_n=1)
    assert scores["bleu1"] == pytest.approx(2 / 4)


def test_cider_of_exact_matches_and_misses() -> None:
    # two images, one reference each: N = 2. idf: "a" is in both (weight 0), "cat", "dog",
    # "a cat", "a dog" in one (weight log 2). An exact 2-word match scores 1 for n = 1 and 2,
    # 0 for n = 3, 4 (no such n-grams): mean 0.5, times 10 = 5. "a cat" for the dog image
    # shares only "a", whose weight is 0.
    refs = [["a cat"], ["a dog"]]
    assert cider_per_item(["a cat", "a cat"], refs) == pytest.approx([5.0, 0.0])
    assert cider(["a cat", "a cat"], refs) == pytest.approx(2.5)


def test_cider_length_penalty_and_clipping() -> None:
    refs = [["a cat"], ["a dog"]]
    # "cat": unigram cosine 1, no bigram, length 1 vs 2 -> penalty exp(-1 / 72)
    assert cider_per_item(["cat", "a dog"], refs)[0] == pytest.approx(10 * math.exp(-1 / 72) / 4)
    # "cat cat": weight 2 log 2 clipped to the reference's log 2: (log2 * log2) / (2 log2 * log2) = 0.5
    assert cider_per_item(["cat cat", "a dog"], refs)[0] == pytest.approx(10 * 0.5 / 4)


def test_cider_averages_over_references() -> None:
    # image 1 has the references "a cat" and "one cat": the candidate "a cat" matches the
    # first exactly and shares "cat" with the second
    per_item = cider_per_item(["a cat", "a dog"], [["a cat", "one cat"], ["a dog"]])
    # idf: a -> in both images: 0; cat, one, "a cat", "one cat": log 2; dog, "a dog": log 2
    # vs "a cat": n1 = 1, n2 = 1; vs "one cat": n1 = log2^2 / (log2 * sqrt(2) log2) = 1/sqrt(2), n2 = 0
    expected = 10 * ((1 + 1) / 4 + (1 / math.sqrt(2)) / 4) / 2
    assert per_item[0] == pytest.approx(expected)
    assert per_item[1] == pytest.approx(5.0)


def test_bad_input_is_clear() -> None:
    with pytest.raises(ValueError, match="2 candidates but 1 reference"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        cider(["a"], [[]])
    with pytest.raises(ValueError, match="no candidates"):
        caption_scores([], [])
    assert set(caption_scores(["a cat"], [["a cat"]])) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
