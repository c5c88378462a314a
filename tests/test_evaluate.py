"""Tests for the caption metrics and the evaluation report."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, needs
from nltk.translate import bleu_score as nltk_bleu

from captioner.errors import DataError
from captioner.metrics import BLEU_KEYS, METRIC_KEYS, cider_d, corpus_bleu, corpus_metrics, sentence_bleu, tokenize
from captioner.report import build_report, read_report, write_report


def toks(*captions: str) -> list[list[str]]:
    return [c.split() for c in captions]


# Three images with varied references; used by several tests.
REFS = [
    toks("a dog runs on the grass", "a brown dog running in a field", "the dog plays on green grass"),
    toks("a man rides a bike down a street", "a cyclist on a city road", "a man riding his bicycle"),
    toks("two children play in the snow", "kids playing in snow", "two kids throw snow at each other"),
]


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("A dog runs .") == ["a", "dog", "runs"]


# --- BLEU -------------------------------------------------------------------------------------------------


def test_corpus_bleu_of_hypothesis_equal_to_a_reference_is_100() -> None:
    hyps = [refs[1] for refs in REFS]
    scores = corpus_bleu(hyps, REFS)
    assert list(scores) == list(BLEU_KEYS)
    for value in scores.values():
        assert value == pytest.approx(100.0)


def test_sentence_bleu_of_hypothesis_equal_to_a_reference_is_100() -> None:
    scores = sentence_bleu(REFS[0][0], REFS[0])
    for value in scores.values():
        assert value == pytest.approx(100.0)


def test_corpus_bleu_of_disjoint_hypotheses_is_zero() -> None:
    hyps = toks("zebra xylophone quartz vortex", "yak jumps over", "blue kettle whistles loudly now")
    assert corpus_bleu(hyps, REFS) == {k: 0.0 for k in BLEU_KEYS}


def test_corpus_bleu_matches_nltk_cumulative_weights() -> None:
    hyps = toks("a dog runs in the grass", "a man rides a bicycle on the street", "two kids play in snow")
    scores = corpus_bleu(hyps, REFS)
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    for key, w in zip(BLEU_KEYS, weights, strict=True):
        assert scores[key] == pytest.approx(100 * nltk_bleu.corpus_bleu(REFS, hyps, weights=w), abs=1e-9)
    assert 0 < scores["bleu4"] < scores["bleu3"] < scores["bleu2"] < scores["bleu1"] < 100


def test_sentence_bleu_matches_nltk_method1_smoothing() -> None:
    hyp = ["a", "dog", "is", "running", "on", "grass"]
    smooth = nltk_bleu.SmoothingFunction().method1
    expected = 100 * nltk_bleu.sentence_bleu(REFS[0], hyp, smoothing_function=smooth)
    assert sentence_bleu(hyp, REFS[0])["bleu4"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("hyp", [[], ["dog"], ["a", "dog"], ["the", "dog", "plays"], ["zebra", "zebra"]])
def test_sentence_bleu_smoothing_handles_short_sentences(hyp: list[str]) -> None:
    scores = sentence_bleu(hyp, REFS[0])
    assert list(scores) == list(BLEU_KEYS)
    for value in scores.values():
        assert math.isfinite(value)
        assert 0.0 <= value <= 100.0
    if hyp == ["the", "dog", "plays"]:
        # Matching 1..3-grams but no 4-gram: smoothing keeps BLEU-4 above zero.
        assert scores["bleu4"] > 0


def test_bleu_rejects_mismatched_lengths_with_counts() -> None:
    with pytest.raises(DataError, match=r"2 hypotheses and 3 reference lists"):
        corpus_bleu(toks("a dog", "a cat"), REFS)


def test_bleu_rejects_an_image_without_references() -> None:
    with pytest.raises(DataError, match=r"non-empty list of tokenised references for image 1"):
        corpus_bleu(toks("a dog", "a cat"), [REFS[0], []])


def test_bleu_rejects_untokenised_strings() -> None:
    with pytest.raises(DataError, match=r"tokenize"):
        corpus_bleu(["a dog runs"], [REFS[0]])
    with pytest.raises(DataError, match=r"tokenize"):
        sentence_bleu(["a", "dog"], ["a dog runs"])


def test_metrics_reject_an_empty_set() -> None:
    with pytest.raises(DataError, match=r"at least one image"):
        cider_d([], [])


# --- CIDEr-D ----------------------------------------------------------------------------------------------


def cider_d_dense(hyps: list[list[str]], refs: list[list[list[str]]], sigma: float = 6.0) -> list[float]:
    """Second, independent CIDEr-D: dense numpy vectors over an explicit n-gram index, word lengths."""

    def grams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
        return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]

    n_images = len(refs)
    scores = np.zeros(n_images)
    for n in range(1, 5):
        index = sorted({g for caps in [*refs, [h for h in hyps]] for c in caps for g in grams(c, n)})
        pos = {g: i for i, g in enumerate(index)}

        def counts(tokens: list[str], n: int = n, pos: dict = pos, size: int = len(index)) -> np.ndarray:
            v = np.zeros(size)
            for g in grams(tokens, n):
                v[pos[g]] += 1
            return v

        # Document frequency: number of images whose references contain the n-gram at least once.
        df = np.zeros(len(index))
        for caps in refs:
            df += np.minimum(1, sum(counts(c) for c in caps))
        idf = np.log(n_images) - np.log(np.maximum(1.0, df))
        for i, (hyp, caps) in enumerate(zip(hyps, refs, strict=True)):
            g_c = counts(hyp) * idf
            for ref in caps:
                g_s = counts(ref) * idf
                denom = np.linalg.norm(g_c) * np.linalg.norm(g_s)
                cos = np.minimum(g_c, g_s) @ g_s / denom if denom > 0 else 0.0
                penalty = np.exp(-((len(hyp) - len(ref)) ** 2) / (2 * sigma**2))
                scores[i] += 10.0 * penalty * cos / 4 / len(caps)
    return scores.tolist()


def test_cider_d_matches_hand_computed_two_image_example() -> None:
    # idf of every reference n-gram is log 2; image 0 matches uni- and bigrams exactly (3- and 4-grams are
    # absent): (1 + 1 + 0 + 0) / 4 * 10 = 5. Image 1: unigram cosine (log2^2) / (log2 * sqrt2 log2) = 1/sqrt2,
    # length 1 vs 2 gives the penalty exp(-1 / 72).
    mean, per_image = cider_d(toks("a b", "c"), [toks("a b"), toks("c d")])
    expected_1 = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert per_image == pytest.approx([5.0, expected_1], abs=1e-12)
    assert mean == pytest.approx((5.0 + expected_1) / 2, abs=1e-12)


def test_cider_d_matches_dense_reimplementation_on_random_captions() -> None:
    rng = np.random.default_rng(0)
    words = [
        "a",
        "dog",
        "cat",
        "runs",
        "on",
        "grass",
        "the",
        "red",
    ]  # small vocabulary: repeats exercise clipping

    def caption() -> list[str]:
        return list(rng.choice(words, size=int(rng.integers(2, 10))))

    refs = [[caption() for _ in range(int(rng.integers(1, 6)))] for _ in range(12)]
    hyps = [caption() for _ in refs]
    hyps[3] = refs[3][0]
    mean, per_image = cider_d(hyps, refs)
    expected = cider_d_dense(hyps, refs)
    assert per_image == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert mean == pytest.approx(float(np.mean(expected)), rel=1e-9)


def test_cider_d_clips_repeated_hypothesis_ngrams() -> None:
    refs = [toks("a dog runs fast"), toks("a cat sleeps now"), toks("the bird sings loudly")]
    _, scores = cider_d(toks("dog dog dog dog", "cat", "bird"), refs)
    # Only unigrams can match. idf is log 3 for words of one image and log 3/2 for "a" (two images).
    # Hypothesis vector: dog = 4 log3; clipped dot with the reference: min(4 log3, log3) * log3.
    # Both captions have 3 bigrams, so no length penalty.
    log3, log_a = math.log(3), math.log(1.5)
    ref_norm = math.sqrt(3 * log3**2 + log_a**2)
    clipped_cosine = log3 * log3 / (4 * log3 * ref_norm)
    assert scores[0] == pytest.approx(10 * clipped_cosine / 4, abs=1e-12)
    # Unclipped, the repeats would count four times as much.
    assert scores[0] < 10 * (4 * clipped_cosine) / 4


def test_cider_d_of_hypothesis_identical_to_all_references_is_ten() -> None:
    captions = ["a black dog runs on grass", "a man rides a bike", "two kids play in the snow"]
    refs = [[c.split()] * 5 for c in captions]
    mean, per_image = cider_d([c.split() for c in captions], refs)
    assert per_image == pytest.approx([10.0, 10.0, 10.0])
    assert mean == pytest.approx(10.0)


def test_cider_d_scores_a_matching_hypothesis_above_a_poor_one() -> None:
    good, _ = cider_d([refs[0] for refs in REFS], REFS)
    poor, _ = cider_d(toks("a man on grass", "two dogs", "a bike in snow"), REFS)
    assert good > 1.0 > poor >= 0.0


def test_cider_d_of_empty_hypothesis_is_zero() -> None:
    _, per_image = cider_d([[], REFS[1][0], []], REFS)
    assert per_image[0] == 0.0
    assert per_image[2] == 0.0
    assert per_image[1] > 0.0


def test_cider_d_per_image_scores_do_not_depend_on_image_order() -> None:
    hyps = toks("a dog runs in the grass", "a man rides a bicycle on the street", "two kids play in snow")
    _, scores = cider_d(hyps, REFS)
    order = [2, 0, 1]
    _, permuted = cider_d([hyps[i] for i in order], [REFS[i] for i in order])
    assert permuted == pytest.approx([scores[i] for i in order], abs=1e-12)


def test_corpus_metrics_combines_bleu_and_cider() -> None:
    hyps = [refs[2] for refs in REFS]
    metrics = corpus_metrics(hyps, REFS)
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["bleu4"] == pytest.approx(100.0)
    assert metrics["cider"] == pytest.approx(cider_d(hyps, REFS)[0])


# --- Report -----------------------------------------------------------------------------------------------

MODEL = {"id": "test/model", "config": {"backbone": "efficientnet_lite0"}, "weights_sha256": "ab" * 32}
DECODING = {"beam_size": 3, "length_penalty": 0.7, "max_length": 20}
RAW_REFS = [[" ".join(r).capitalize() + " ." for r in refs] for refs in REFS]


def make_report(n_copies: int = 1) -> dict:
    names = [f"{i}_{j}.jpg" for i in range(n_copies) for j in range(len(REFS))]
    return build_report(
        model=MODEL,
        split="test",
        decoding=DECODING,
        image_names=names,
        references=RAW_REFS * n_copies,
        greedy=["a dog runs on the grass", "a man on a bike", "kids in the snow"] * n_copies,
        beam=["A brown dog running in a field .", "a man riding a bicycle", "two kids play"] * n_copies,
    )


def test_build_report_has_the_design_shape_and_scores() -> None:
    report = make_report()
    assert set(report) == {"model", "split", "decoding", "corpus", "images"}
    assert report["model"] == MODEL
    assert report["decoding"] == DECODING
    for mode in ("greedy", "beam"):
        assert list(report["corpus"][mode]) == list(METRIC_KEYS)
    first = report["images"][0]
    assert first["image"] == "0_0.jpg"
    assert first["references"] == RAW_REFS[0]
    # Raw beam caption is kept, but scored after tokenisation: it equals reference 1 of image 0.
    assert first["beam"]["caption"] == "A brown dog running in a field ."
    assert first["beam"]["bleu4"] == pytest.approx(100.0)
    assert set(first["greedy"]) == {"caption", *BLEU_KEYS, "cider"}
    hyps = [tokenize(img["greedy"]["caption"]) for img in report["images"]]
    refs = [[tokenize(r) for r in img["references"]] for img in report["images"]]
    assert report["corpus"]["greedy"]["bleu4"] == pytest.approx(corpus_bleu(hyps, refs)["bleu4"])
    cider_mean, cider_images = cider_d(hyps, refs)
    assert report["corpus"]["greedy"]["cider"] == pytest.approx(cider_mean)
    assert [img["greedy"]["cider"] for img in report["images"]] == pytest.approx(cider_images, abs=1e-3)


def test_report_round_trips_through_write_and_read(tmp_path: Path) -> None:
    report = make_report()
    path = tmp_path / "report" / "test_report.json"
    write_report(report, path)
    assert read_report(path) == report
    assert json.loads(path.read_text(encoding="utf-8")) == report
    assert [p.name for p in path.parent.iterdir()] == ["test_report.json"]  # no temp file left behind


def test_report_for_1000_images_stays_under_2_mb(tmp_path: Path) -> None:
    path = tmp_path / "test_report.json"
    write_report(make_report(n_copies=334), path)
    assert path.stat().st_size < 2_000_000


def test_build_report_rejects_mismatched_lengths() -> None:
    with pytest.raises(DataError, match=r"Expected 3 beam captions .* Received: 2"):
        build_report(
            model=MODEL,
            split="test",
            decoding=DECODING,
            image_names=["a.jpg", "b.jpg", "c.jpg"],
            references=RAW_REFS,
            greedy=["x", "y", "z"],
            beam=["x", "y"],
        )


def test_build_report_rejects_empty_references() -> None:
    with pytest.raises(DataError, match=r"reference strings for 'b.jpg'"):
        build_report(
            model=MODEL,
            split="test",
            decoding=DECODING,
            image_names=["a.jpg", "b.jpg"],
            references=[RAW_REFS[0], []],
            greedy=["x", "y"],
            beam=["x", "y"],
        )


def test_read_report_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file"):
        read_report(tmp_path / "absent.json")


def test_read_report_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(DataError, match=r"valid JSON"):
        read_report(path)


@pytest.mark.parametrize(
    ("field", "damage"),
    [
        ("corpus.beam.bleu4", lambda r: r["corpus"]["beam"].pop("bleu4")),
        ("'images'", lambda r: r.update(images={})),
        ("images[1].references", lambda r: r["images"][1].update(references=[])),
        ("images[2].greedy.bleu2", lambda r: r["images"][2]["greedy"].update(bleu2="high")),
        ("'model' to have 'weights_sha256'", lambda r: r["model"].pop("weights_sha256")),
    ],
)
def test_read_report_names_the_malformed_field(tmp_path: Path, field: str, damage) -> None:
    report = make_report()
    damage(report)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(DataError, match="expected " + re.escape(field)):
        read_report(path)


# --- Human agreement on Flickr8k (slow) ------------------------------------------------------------------


@pytest.mark.slow
def test_human_reference_against_the_other_four_matches_published_bleu() -> None:
    captions_file = SHARED / "flickr8k" / "captions.txt"
    split_file = SHARED / "flickr8k" / "Flickr_8k.testImages.txt"
    needed = "needs ../shared/flickr8k/captions.txt and Flickr_8k.testImages.txt"
    needs(captions_file.is_file() and split_file.is_file(), f"{needed} (looked in {SHARED})")
    test_images = split_file.read_text(encoding="utf-8").split()
    by_image: dict[str, list[str]] = defaultdict(list)
    with captions_file.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            by_image[row["image"]].append(row["caption"])
    assert len(test_images) == 1000
    assert Counter(len(by_image[name]) for name in test_images) == {5: 1000}

    tokenised = [[tokenize(c) for c in by_image[name]] for name in test_images]
    # The published 18.7-23.6 range spans the five choices of which human caption plays the hypothesis.
    for held_out in range(5):
        hyps = [caps[held_out] for caps in tokenised]
        refs = [caps[:held_out] + caps[held_out + 1 :] for caps in tokenised]
        metrics = corpus_metrics(hyps, refs)
        print(f"human caption {held_out} vs the other four:", {k: round(v, 2) for k, v in metrics.items()})
        assert 18.7 <= metrics["bleu4"] <= 23.6
        assert metrics["bleu1"] > metrics["bleu2"] > metrics["bleu3"] > metrics["bleu4"]


def test_dev_tuning_keeps_the_one_winning_setting_and_scores_every_beam_size(tiny_model_dir, photo_bytes, tmp_path):
    import dataclasses

    from captioner.data import Flickr8k
    from captioner.evaluate import tune_and_score
    from captioner.pipeline import Captioner

    names = [f"{i}.jpg" for i in range(4)]
    for name in names:
        (tmp_path / name).write_bytes(photo_bytes)
    reference = "a brown dog runs on the green grass"
    data = Flickr8k(tmp_path, tmp_path, {n: [reference] for n in names}, {"dev": names[:2], "test": names[2:]})
    model = Captioner.load(str(tiny_model_dir))
    decode = model.search
    # Each setting says a different prefix of the reference: longer is better, and only one setting says it all.
    settings = [(k, alpha, block) for k in (1, 2) for block in (False, True) for alpha in (0.0, 1.0)]
    winner = (2, 0.0, True)
    words = {s: reference.split()[: 8 - 4 * (s != winner) + (s == (1, 1.0, False))] for s in settings}

    def search(features, beam_size, alpha, max_length, block_repeats=False, **kwargs):
        captions = decode(features, beam_size, alpha, max_length, block_repeats=block_repeats, **kwargs)
        said = words[beam_size, alpha, block_repeats]
        return [dataclasses.replace(c, text=" ".join(said), tokens=said) for c in captions]

    model.search = search
    lines = []
    metrics = tune_and_score(model, data, (1, 2), (0.0, 1.0), log=lines.append)
    search = metrics["dev_search"]
    assert len({m["bleu4"] for m in search.values()}) == 3  # one best, one second, the rest tied below
    assert len(search) == len(lines) == 8  # 2 beam sizes × 2 α × blocking on/off; no consensus index, no reranking
    assert metrics["decoding"] == {"beam_size": 2, "length_penalty": 0.0, "max_length": 6, "block_repeats": True,
                                   "consensus": 0, "consensus_weight": 1.0}  # fmt: skip
    assert set(metrics["corpus"]) == set(metrics["dev"]) == {"greedy", "beam", "beam1"}
    assert metrics["dev"]["beam"]["bleu4"] == pytest.approx(100.0) == metrics["corpus"]["beam"]["bleu4"]
    assert metrics["dev"]["beam1"]["bleu4"] < 100.0
