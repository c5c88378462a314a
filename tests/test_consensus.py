"""Consensus reranking (captioner.consensus): the index file, the reranking rule, and the model's decoding with it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from captioner import familiarity
from captioner.consensus import Consensus, rerank
from captioner.decode import Caption
from captioner.errors import ModelError
from captioner.files import CONSENSUS_FILE
from captioner.pipeline import Captioner
from captioner.text import Vocabulary

PHOTOS = [
    ["a dog runs on the grass", "a brown dog running on grass"],
    ["a man rides a bike", "a man riding a bike down the road"],
    ["two children play in the water", "kids splash in a lake"],
]


def caption(text: str, score: float) -> Caption:
    words = text.split()
    return Caption(text, words, score, score, np.zeros(len(words) + 1), np.zeros((len(words), 1, 1)))


def beam(*hyps: Caption) -> Caption:
    return Caption(**{**hyps[0].__dict__, "n_best": list(hyps)})


def test_rerank_picks_the_caption_like_the_similar_photos_unless_the_beam_score_outweighs_it():
    # Catches agreement read against the wrong photos, the weight applied with the wrong sign, or a lost n-best.
    index = Consensus([[c.split() for c in photo] for photo in PHOTOS])
    got = beam(caption("a dog runs in the water", -0.5), caption("a man rides a bike on the road", -0.9))
    agreement = index.agreement(got, [1])
    assert agreement.shape == (2, 1) and agreement[1, 0] > agreement[0, 0]
    chosen = rerank(got, agreement, weight=0.0)
    assert chosen.text == "a man rides a bike on the road"
    assert [h.text for h in chosen.n_best] == [got.n_best[1].text, got.n_best[0].text]
    assert rerank(got, agreement, weight=100.0).text == "a dog runs in the water"  # the beam's order stands
    assert rerank(got, index.agreement(got, [0]), weight=0.0).text == "a dog runs in the water"


def test_the_index_round_trips_through_its_file_with_unknown_words_as_unk(tmp_path):
    # Catches captions cut at the wrong offsets, photos regrouped wrongly, or a corrupt file loading silently.
    vocab = Vocabulary.build([c for photo in PHOTOS[:2] for c in photo], min_count=1)
    index = Consensus.build(PHOTOS, vocab)
    assert index.captions[2][1] == ["<unk>", "<unk>", "<unk>", "a", "<unk>"]  # "kids splash in a lake"
    again = Consensus.load(index.save(tmp_path, vocab).parent, vocab)
    assert again.captions == index.captions
    assert Consensus.load(tmp_path / "elsewhere", vocab) is None
    np.savez(tmp_path / CONSENSUS_FILE, ids=np.zeros(3, np.int16), lengths=np.array([5]), per_photo=np.array([1]))
    with pytest.raises(ModelError, match="do not fit"):
        Consensus.load(tmp_path, vocab)


def test_nearest_training_photos_come_nearest_first():
    # Catches neighbours returned in partition order (not by similarity) or from the far end.
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (50, 16))
    fam = familiarity.calibrate(train, train[:10], dims=16)
    query = train[[7]] + rng.normal(0, 0.01, (1, 16))
    nearest = fam.nearest(query, 5)[0]
    sims = (train / np.linalg.norm(train, axis=1, keepdims=True)) @ (query[0] / np.linalg.norm(query))
    assert nearest[0] == 7
    np.testing.assert_array_equal(nearest, np.argsort(-sims)[:5])


@pytest.fixture
def indexed_model(tiny_model_dir, tmp_path, photo_bytes):
    """The tiny model, a familiarity calibration and a consensus index: its photo's neighbours say its 2nd caption."""
    from conftest import rerank_to_second_caption, talkative_copy

    path = talkative_copy(tiny_model_dir, tmp_path / "model")
    encoded, _, second = rerank_to_second_caption(path, photo_bytes)
    return path, encoded, second


def test_a_model_with_an_index_reranks_its_beam_as_tuned_and_only_then(indexed_model, tiny_model_dir, tmp_path):
    # Catches the tuned reranking not applied by `decode`, applied without the pooled features, or a request for
    # it on a model without an index passing silently.
    path, encoded, second = indexed_model
    model = Captioner.load(str(path))
    assert (model.tuned.consensus, model.tuned.consensus_weight) == (2, 0.0)
    assert model.decode(encoded)[0].text == second.text
    assert model.decode(encoded, consensus=0)[0].text != second.text
    assert model.decode_features(encoded.features)[0].text != second.text  # no `seen`: the beam's own first
    with pytest.raises(ValueError, match="between 0 and 100"):
        model.decode(encoded, consensus=-1)
    plain = shutil.copytree(path, tmp_path / "plain")
    (plain / CONSENSUS_FILE).unlink()
    without = Captioner.load(str(plain))
    assert without.tuned.consensus == 0  # tuned with an index it no longer has: off, not an error
    with pytest.raises(ModelError, match="no consensus index"):
        without.decode(encoded, consensus=2)


def test_dev_search_tries_every_reranking_when_the_model_has_an_index(indexed_model, photo_bytes, tmp_path):
    # Catches the search skipping the reranked settings, or the chosen one not being what dev scored best.
    from captioner.data import Flickr8k
    from captioner.evaluate import dev_objective, tune_and_score

    path, _, second = indexed_model
    names = [f"{i}.jpg" for i in range(4)]
    for name in names:
        (tmp_path / name).write_bytes(photo_bytes)
    refs = {n: [second.text, "a photo of something"] for n in names}
    data = Flickr8k(tmp_path, tmp_path, refs, {"dev": names[:2], "test": names[2:]})
    metrics = tune_and_score(Captioner.load(str(path)), data, (1, 3), (0.7,), (1, 2), (0.0,), log=lambda _: None)
    assert len(metrics["dev_search"]) == 2 * 2 + 2 * 2  # beams 1 and 3 × blocking, and beam 3's two rerankings
    best = max(metrics["dev_search"].values(), key=dev_objective)
    assert {k: metrics["dev"]["beam"][k] for k in best} == pytest.approx(best, abs=1e-3)
    assert best["bleu4"] == pytest.approx(100.0)  # only reranking says the reference's caption
    assert metrics["decoding"]["consensus"] in (1, 2) and metrics["decoding"]["beam_size"] == 3
