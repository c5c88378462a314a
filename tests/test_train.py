"""Training: a tiny model must overfit a handful of images and give their captions back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.config import ModelConfig
from captioner.data import Flickr8k
from captioner.decode import BeamSearch
from captioner.metrics import sentence_bleu
from captioner.run_setup import caption_tokens
from captioner.text import Vocabulary
from captioner.train import CaptionReward, TrainConfig, Trainer, length_batches

CAPTIONS = {
    "a.jpg": "a dog runs on the grass",
    "b.jpg": "two children play in the snow",
    "c.jpg": "a man rides a red bike",
    "d.jpg": "the dog jumps over a fence",
}


def _tiny(tmp_path, epochs: int, ema_decay: float = 0.0, scst_ema_decay: float = 0.0, budget: float = 58.0,
          scst_epochs: int = 0, attention: str = "additive", **train_options):  # fmt: skip
    names = list(CAPTIONS)
    data = Flickr8k(tmp_path, tmp_path, {n: [c] * 5 for n, c in CAPTIONS.items()}, {"train": names})
    vocab = Vocabulary.build(CAPTIONS.values(), min_count=1)
    config = ModelConfig(grid=(2, 2), feature_channels=8, vocab_size=len(vocab), max_length=8, embed_dim=16,
                         units=48, feature_dim=32, attention_units=16, dropout=0.0, attention=attention)  # fmt: skip
    train = TrainConfig(epochs=epochs, batch_images=2, learning_rate=1e-2, warmup_steps=0, label_smoothing=0.0,
                        ema_decay=ema_decay, scst_ema_decay=scst_ema_decay, time_budget_minutes=budget,
                        scst_epochs=scst_epochs, **train_options)  # fmt: skip
    trainer = Trainer(tmp_path / "run", config, train, vocab, n_train=len(names))
    features = np.random.default_rng(0).normal(0, 1, (len(names), 2, 2, 8)).astype(np.float16)
    tokens = caption_tokens(data, names, vocab, config.max_length, seed=0)
    return trainer, features, tokens, vocab, config


@pytest.mark.parametrize("attention", ["additive", "dot", "multihead"])
def test_tiny_model_overfits_and_returns_its_training_captions(tmp_path, attention):
    trainer, features, tokens, vocab, config = _tiny(tmp_path, epochs=60, attention=attention)
    first = float(trainer.loss(features, tokens, training=False)[1])
    rng = np.random.default_rng(0)
    for _ in range(60):
        for idx in length_batches(tokens, 2, rng):
            trainer.train_step(features[np.sort(idx)], tokens[np.sort(idx)])
    last = float(trainer.loss(features, tokens, training=False)[1])
    assert last < first / 10, (first, last)
    captions = BeamSearch(trainer.decoder, vocab, config.grid)(features, beam_size=1, max_length=config.max_length)
    assert [c.text for c in captions] == list(CAPTIONS.values())


def test_length_batches_cover_every_image_once():
    tokens = np.zeros((10, 5, 6), np.int32)
    tokens[:, :, :3] = 1
    batches = length_batches(tokens, 4, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert [len(b) for b in sorted(batches, key=len)] == [2, 4, 4]


def test_moving_average_weights_are_swapped_in_for_evaluation_and_back_out(tmp_path):
    trainer, features, tokens, _, _ = _tiny(tmp_path, epochs=3, ema_decay=0.9)
    start = [v.numpy() for v in trainer.decoder.trainable_variables]
    for _ in range(30):
        trainer.train_step(features, tokens)
    trained = [v.numpy() for v in trainer.decoder.trainable_variables]
    # The average trails the weights: it lies between the start and the latest step, and differs from both.
    with trainer.averaged_weights():
        averaged = [v.numpy() for v in trainer.decoder.trainable_variables]
    changed = [i for i, (s, t) in enumerate(zip(start, trained, strict=True)) if not np.allclose(s, t)]
    assert changed
    for i in changed:
        assert not np.allclose(averaged[i], trained[i])
        assert np.abs(averaged[i] - trained[i]).max() < np.abs(start[i] - trained[i]).max()
    for v, t in zip(trainer.decoder.trainable_variables, trained, strict=True):
        np.testing.assert_array_equal(v.numpy(), t)


def test_self_critical_average_follows_only_the_self_critical_steps(tmp_path):
    trainer, features, tokens, _, _ = _tiny(tmp_path, epochs=3, scst_ema_decay=0.5)
    start = [a.numpy() for a in trainer.ema]
    trainer.train_step(features, tokens)  # a cross-entropy step leaves this average alone
    assert all(np.array_equal(s, a.numpy()) for s, a in zip(start, trainer.ema, strict=True))
    trainer.scst_start.assign(1)
    for avg, var in zip(trainer.ema, trainer.decoder.trainable_variables, strict=True):
        avg.assign(var)  # as `fit` does when the self-critical phase begins
    before = [v.numpy() for v in trainer.decoder.trainable_variables]
    samples = tokens[:, :, :6]
    trainer.scst_step(features, samples, np.ones(samples.shape[:2], np.float32))
    after = [v.numpy() for v in trainer.decoder.trainable_variables]
    with trainer.averaged_weights():
        averaged = [v.numpy() for v in trainer.decoder.trainable_variables]
    changed = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if not np.allclose(b, a)]
    assert changed
    for i in changed:  # decay 0.5 after one step: halfway between the start and the new weights
        np.testing.assert_allclose(averaged[i], (before[i] + after[i]) / 2, rtol=1e-5, atol=1e-6)


def test_self_critical_step_leaves_the_words_sampling_never_picks_alone(tmp_path):
    trainer, features, tokens, vocab, _ = _tiny(tmp_path, epochs=3)
    kernel, bias = (w.numpy() for w in trainer.decoder.logits.weights)
    samples = tokens[:, :, :6]
    # Every sample scored below its peers: without the mask, the mass taken from them would go to these words too.
    trainer.scst_step(features, samples, -np.ones(samples.shape[:2], np.float32))
    new_kernel, new_bias = (w.numpy() for w in trainer.decoder.logits.weights)
    never = [vocab.pad_id, vocab.start_id, vocab.unk_id]
    np.testing.assert_array_equal(new_kernel[:, never], kernel[:, never])
    np.testing.assert_array_equal(new_bias[never], bias[never])
    assert not np.allclose(new_kernel[:, vocab.end_id], kernel[:, vocab.end_id])  # <end> is sampled; it learns


def test_self_critical_learning_rate_decays_to_zero_over_its_epochs(tmp_path):
    trainer, features, tokens, _, _ = _tiny(tmp_path, epochs=3, scst_epochs=3)  # 3 epochs × 2 batches
    samples = tokens[:, :, :6]
    rates = []
    for _ in range(6):
        trainer.scst_step(features, samples, np.ones(samples.shape[:2], np.float32))
        rates.append(float(trainer.scst_optimizer.learning_rate))  # the rate this step used
    assert rates[0] == pytest.approx(2e-5) and rates[3] == pytest.approx(1e-5) and rates[5] < 2e-6
    assert rates == sorted(rates, reverse=True)


def test_caption_reward_adds_weighted_sentence_bleu4_to_cider():
    refs = [[c.split() for c in CAPTIONS.values()], [["two", "cats", "sleep", "on", "a", "sofa"]] * 2]
    fluent = ["a", "dog", "runs", "on", "the", "grass"]
    clipped = ["a", "dog", "runs", "grass"]  # what CIDEr-D alone teaches: "on the" dropped
    plain, mixed = CaptionReward(refs), CaptionReward(refs, bleu_weight=1.0)
    assert plain(0, fluent) == plain.cider.score(0, fluent)
    bleu = mixed(0, fluent) - plain(0, fluent)
    assert bleu == pytest.approx(sentence_bleu(fluent, refs[0])["bleu4"] / 100) and bleu > 0.9  # an exact reference
    assert mixed(0, clipped) - plain(0, clipped) < bleu / 2  # the missing bigrams cost BLEU-4


def test_time_budget_stops_before_an_epoch_that_would_end_past_it(tmp_path, monkeypatch):
    class Clock:  # every reading is a minute after the last, so each epoch "takes" one minute
        now = 0.0

        @classmethod
        def time(cls) -> float:
            cls.now += 60.0
            return cls.now

    monkeypatch.setattr("captioner.train.time", Clock)
    trainer, features, tokens, _, _ = _tiny(tmp_path, epochs=5, budget=2.5)
    trainer.run_dir.mkdir()
    refs = [[c.split()] * 5 for c in CAPTIONS.values()]
    lines = []
    trainer.fit(features, tokens, features, refs, lines.append)
    # After two one-minute epochs a third would end at 3 > 2.5 minutes, so it never starts.
    assert int(trainer.epoch) == 2
    assert "no time for another" in lines[-1]


@pytest.mark.parametrize(("xe_beam", "dev_decodings"), [(1, [1, 1, 3, 3]), (3, [3, 3, 3])])
def test_each_phase_keeps_its_epochs_on_its_own_dev_beam_size(tmp_path, xe_beam, dev_decodings):
    trainer, features, tokens, _, _ = _tiny(tmp_path, epochs=2, scst_epochs=1, xe_select_beam=xe_beam,
                                            scst_select_beam=3)  # fmt: skip
    trainer.run_dir.mkdir()
    refs = [[c.split()] * 5 for c in CAPTIONS.values()]
    beams, search = [], trainer.search
    trainer.search = lambda grids, beam_size, **kw: beams.append(beam_size) or search(grids, beam_size, **kw)
    trainer.fit(features, tokens, features, refs, lambda _: None, reward=CaptionReward(refs))
    # Greedy cross-entropy epochs need the bar rescored with beam 3 when the self-critical phase begins.
    assert beams == dev_decodings


def _tiny_with_top(tmp_path, **train_options):
    """A tiny decoder on the last stage of a random EfficientNet-Lite0, its cached activations and caption ids."""
    import keras

    from captioner import backbones

    keras.utils.set_random_seed(0)  # the random backbone and decoder start alike whatever tests ran before
    top = backbones.top(
        "efficientnet_lite0", 1, backbones.layer_weights(backbones.build("efficientnet_lite0", weights=None))
    )
    names = list(CAPTIONS)
    data = Flickr8k(tmp_path, tmp_path, {n: [c] * 5 for n, c in CAPTIONS.items()}, {"train": names})
    vocab = Vocabulary.build(CAPTIONS.values(), min_count=1)
    config = ModelConfig(backbone="efficientnet_lite0", grid=(7, 7), vocab_size=len(vocab), max_length=8, embed_dim=16,
                         units=48, feature_dim=32, attention_units=16, dropout=0.0, tuned_stages=1)  # fmt: skip
    train = TrainConfig(epochs=60, batch_images=2, learning_rate=1e-2, warmup_steps=0, label_smoothing=0.0,
                        ema_decay=0.0, tune_stages=1, backbone_lr_scale=0.5, **train_options)  # fmt: skip
    trainer = Trainer(tmp_path / "run", config, train, vocab, n_train=len(names), top=top)
    cut = np.random.default_rng(0).normal(0, 1, (len(names), *top.input_shape[1:])).astype(np.float16)
    return trainer, top, cut, caption_tokens(data, names, vocab, config.max_length, seed=0), vocab, config


def test_fine_tuned_top_stages_train_with_the_decoder_and_the_loss_falls(tmp_path):
    import keras

    trainer, top, cut, tokens, vocab, config = _tiny_with_top(tmp_path)
    before = {w.path: w.numpy() for w in top.weights}
    first = float(trainer.loss(trainer.grids(cut), tokens, training=False)[1])
    rng = np.random.default_rng(0)
    for _ in range(60):
        for idx in length_batches(tokens, 2, rng):
            trainer.train_step(cut[np.sort(idx)], tokens[np.sort(idx)])
    last = float(trainer.loss(trainer.grids(cut), tokens, training=False)[1])
    assert last < first / 10, (first, last)
    changed = {w.path for w in top.weights if not np.array_equal(w.numpy(), before[w.path])}
    assert changed == {w.path for w in top.trainable_weights}  # BatchNorm statistics and scales stay ImageNet's
    assert not any("_bn" in path for path in changed)
    assert all(isinstance(layer, keras.layers.BatchNormalization) for layer in top.layers
               if layer.weights and not layer.trainable_weights)  # fmt: skip
    captions = BeamSearch(trainer.decoder, vocab, config.grid)(trainer.grids(cut), beam_size=1, max_length=8)
    assert [c.text for c in captions] == list(CAPTIONS.values())


@pytest.mark.parametrize("scst_tune_stages", [False, True])
def test_self_critical_steps_train_the_tuned_stages_only_when_asked(tmp_path, scst_tune_stages):
    trainer, top, cut, tokens, _, _ = _tiny_with_top(tmp_path, scst_epochs=1, scst_tune_stages=scst_tune_stages)
    before = {w.path: w.numpy() for w in top.trainable_weights}
    decoder = [w.numpy() for w in trainer.decoder.trainable_weights]
    samples = tokens[:, :, :6]
    step_input = cut if scst_tune_stages else trainer.grids(cut)
    trainer.scst_step(step_input, samples, np.ones(samples.shape[:2], np.float32))
    changed = {w.path for w in top.trainable_weights if not np.array_equal(w.numpy(), before[w.path])}
    assert changed == (set(before) if scst_tune_stages else set())
    after = trainer.decoder.trainable_weights
    assert not all(np.array_equal(a, w.numpy()) for a, w in zip(decoder, after, strict=True))
