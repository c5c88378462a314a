"""Ensembles: K decoders averaged inside the one compiled beam search, saved and loaded as one model directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from captioner.decode import BeamSearch
from captioner.ensemble import EnsembleDecoder
from captioner.errors import ModelError
from captioner.model import ModelConfig, build_decoder
from captioner.text import Vocabulary

WORDS = ["a", "dog", "cat", "runs", "sits", "on", "the", "grass", "in", "snow", "red", "blue"]
CONFIG = dict(grid=(3, 4), feature_channels=8, max_length=7, embed_dim=8, units=24, feature_dim=16, attention_units=8)


def _decoder(vocab: Vocabulary, seed: int, **overrides):
    import keras

    keras.utils.set_random_seed(seed)
    return build_decoder(ModelConfig(vocab_size=len(vocab), **{**CONFIG, **overrides}))


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build(WORDS, min_count=1)


@pytest.fixture(scope="module")
def members(vocab):
    # A different width too: members need only share the vocabulary and the feature grid.
    return [_decoder(vocab, 3), _decoder(vocab, 4), _decoder(vocab, 5, units=16)]


@pytest.fixture(scope="module")
def feats():
    return np.random.default_rng(1).normal(0, 2, (5, 3, 4, 8)).astype("float32")


def test_an_ensemble_of_one_decodes_exactly_like_its_decoder(vocab, members, feats):
    # Catches an ensemble path that renormalises, reorders states or averages differently even for K = 1.
    single = BeamSearch(members[0], vocab, CONFIG["grid"])
    ensemble = BeamSearch(EnsembleDecoder(members[:1]), vocab, CONFIG["grid"])
    for beam in (1, 3):
        for a, b in zip(single(feats, beam, max_length=7), ensemble(feats, beam, max_length=7), strict=True):
            assert [h.text for h in a.n_best] == [h.text for h in b.n_best]
            for ha, hb in zip(a.n_best, b.n_best, strict=True):
                np.testing.assert_array_equal(ha.token_log_probs, hb.token_log_probs)
                np.testing.assert_array_equal(ha.attention, hb.attention)


def _member_steps(members, f, token_ids, vocab):
    """Teacher-force each member through `token_ids` one step at a time (plain Python, no beam search):
    the mean-probability log-prob of every token and the mean attention map before every word."""
    per_member_logp, per_member_att = [], []
    for m in members:
        regions, keys, states = m.encode(f[None])
        token, logps, maps = np.array([vocab.start_id]), [], []
        for word in token_ids:
            logp, att, states = m.step(token, states, regions, keys)
            logps.append(np.asarray(logp[0], np.float64))
            maps.append(np.asarray(att[0]))
            token = np.array([word])
        per_member_logp.append(np.stack(logps))
        per_member_att.append(np.stack(maps))
    mean_p = np.mean(np.exp(per_member_logp), axis=0)  # (T, V): the members' mean next-word distribution
    token_lp = np.log(mean_p[np.arange(len(token_ids)), token_ids])
    return token_lp, np.mean(per_member_att, axis=0)


def test_every_hypothesis_rescored_member_by_member_matches_the_ensemble_search(vocab, members, feats):
    # Catches averaging log-probs instead of probabilities, members' states mixed up, or attention maps not averaged.
    search = BeamSearch(EnsembleDecoder(members), vocab, CONFIG["grid"])
    for f, caption in zip(feats[:2], search(feats[:2], beam_size=3, length_penalty=0.0, max_length=7), strict=True):
        assert len(caption.n_best) == 3
        for hyp in caption.n_best:
            ids = [vocab.id(w) for w in hyp.tokens] + [vocab.end_id]
            token_lp, attention = _member_steps(members, f, ids, vocab)
            np.testing.assert_allclose(hyp.token_log_probs, token_lp, atol=2e-5)
            np.testing.assert_allclose(hyp.attention.reshape(len(hyp.tokens), -1), attention[:-1], atol=1e-5)
            assert hyp.log_prob == pytest.approx(token_lp.sum(), abs=1e-4)


def test_the_ensemble_greedy_caption_is_the_argmax_of_the_mean_distribution(vocab, members, feats):
    # Catches an ensemble search that follows one member's choices (e.g. member 0's argmax) instead of the mean.
    search = BeamSearch(EnsembleDecoder(members), vocab, CONFIG["grid"])
    banned = [vocab.pad_id, vocab.start_id, vocab.unk_id]
    for f, caption in zip(feats[:2], search(feats[:2], beam_size=1, max_length=7), strict=True):
        encoded = [m.encode(f[None]) for m in members]
        states = [e[2] for e in encoded]
        token, words = np.array([vocab.start_id]), []
        for step in range(8):
            mean_p = 0.0
            for i, (m, (regions, keys, _)) in enumerate(zip(members, encoded, strict=True)):
                logp, _, states[i] = m.step(token, states[i], regions, keys)
                mean_p = mean_p + np.exp(np.asarray(logp[0], np.float64)) / len(members)
            mean_p[banned] = 0.0
            if step == 7:
                break
            token = np.array([int(np.argmax(mean_p))])
            if token[0] == vocab.end_id:
                break
            words.append(vocab.words[token[0]])
        assert caption.tokens == words


def test_members_must_share_one_vocabulary(vocab):
    other = Vocabulary.build([*WORDS, "zebra"], min_count=1)
    with pytest.raises(ModelError, match="vocabulary"):
        EnsembleDecoder([_decoder(vocab, 0), _decoder(other, 0)])


@pytest.fixture(scope="module")
def ensemble_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model directory plus two further members (another seed, another width)."""
    from captioner.hub import write_manifest
    from captioner.model import CONFIG_FILE, Member, save_ensemble

    path = tmp_path_factory.mktemp("ensemble") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = ModelConfig.load(path / CONFIG_FILE)
    wide = ModelConfig(**{**config.__dict__, "units": 24})
    save_ensemble(path, [Member(_decoder_for(config, 7), config), Member(_decoder_for(wide, 8), wide)])
    write_manifest(path)
    return path


def _decoder_for(config: ModelConfig, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return build_decoder(config)


def test_an_ensemble_directory_loads_its_members_and_decodes_as_saved(ensemble_dir, photo_bytes):
    # Catches members that are saved but not loaded, loaded into the wrong config, or silently left out of decoding.
    from captioner.pipeline import Captioner

    loaded = Captioner.from_directory(ensemble_dir)
    assert len(loaded.decoders) == 3
    rebuilt = BeamSearch(EnsembleDecoder(loaded.decoders), loaded.vocab, loaded.config.grid)
    encoded = loaded.encode([photo_bytes])
    for beam in (1, 3):
        ours = loaded.decode(encoded, beam_size=beam)[0]
        theirs = rebuilt(encoded.features, beam, max_length=loaded.config.max_length)[0]
        assert [h.text for h in ours.n_best] == [h.text for h in theirs.n_best]
        np.testing.assert_allclose(ours.token_log_probs, theirs.token_log_probs, atol=1e-6)
    # The members are really used: member 0 alone (what ignoring them would decode, bit for bit) scores otherwise.
    alone = BeamSearch(loaded.decoders[0], loaded.vocab, loaded.config.grid)(encoded.features, 1, max_length=6)[0]
    assert not np.array_equal(alone.token_log_probs, loaded.decode(encoded, beam_size=1)[0].token_log_probs)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e["members"][0].update(weights="../model.weights.h5"), "decoder1.weights.h5"),
        (lambda e: e["members"][0]["config"].update(vocab_size=99), "vocab_size"),
        (lambda e: e["members"][0]["config"].update(grid=[9, 9]), "grid"),
        (lambda e: e["members"][1].update(weights="decoder7.weights.h5"), "not in"),
        (lambda e: e.pop("members"), "members"),
    ],
)
def test_a_malformed_ensemble_file_is_refused_with_a_reason(ensemble_dir, tmp_path, edit, message):
    # Catches a hostile ensemble.json reaching outside the directory, or a member of another vocabulary or grid loading.
    from captioner.pipeline import Captioner

    path = tmp_path / "model"
    shutil.copytree(ensemble_dir, path)
    entries = json.loads((path / "ensemble.json").read_text())
    edit(entries)
    (path / "ensemble.json").write_text(json.dumps(entries))
    with pytest.raises(ModelError, match=message):
        Captioner.from_directory(path)
