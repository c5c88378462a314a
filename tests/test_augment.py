"""Flip augmentation: mirrored photos' captions swap sides, their features are the mirror's, training uses them."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from captioner import backbones
from captioner.augment import flip_caption, flipped_ids
from captioner.config import ModelConfig, TrainConfig
from captioner.data import Flickr8k
from captioner.decode import BeamSearch
from captioner.features import extract_features
from captioner.run_setup import caption_tokens
from captioner.text import Vocabulary
from captioner.train import Mirrored, Trainer


@pytest.mark.parametrize(
    ("caption", "mirrored"),
    [
        ("a dog runs to the left of a man", "a dog runs to the right of a man"),
        ("Left hand up, right foot down.", "Right hand up, left foot down."),
        ("a man looks right", "a man looks left"),
        ("leftover pizza on a bright plate", "leftover pizza on a bright plate"),  # only whole words swap
    ],
)
def test_flip_caption_swaps_left_and_right_and_nothing_else(caption, mirrored):
    assert flip_caption(caption) == mirrored
    assert flip_caption(flip_caption(caption)) == caption


def test_flipped_ids_swap_left_and_right_in_encoded_captions():
    vocab = Vocabulary.build(["a dog on the left", "a cat on the right"], min_count=1)
    ids = vocab.encode("a dog on the left", 8)
    assert vocab.decode(flipped_ids(vocab)[ids]) == ["a", "dog", "on", "the", "right"]
    others = [vocab.id(w) for w in ("a", "dog", "cat", "on", "the")]
    assert list(flipped_ids(vocab)[others]) == others


def test_the_flipped_cache_holds_the_features_of_the_mirrored_photos(tmp_path):
    def builder(include_top=False, weights=None):
        inputs = keras.Input((16, 16, 3), dtype="uint8")
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="conv")(x)  # random: not mirror-symmetric
        return keras.Model(inputs, x, name="tiny_flip")

    backbones.register(backbones.BackboneSpec("tiny_flip", 16, 4, 4, builder, "x/255", "fixed"), overwrite=True)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(photo).save(tmp_path / "a" / "x.png")
    Image.fromarray(photo[:, ::-1]).save(tmp_path / "b" / "x.png")  # the same photo, mirrored on disk
    keras.utils.set_random_seed(0)
    mirrored = extract_features([tmp_path / "a" / "x.png"], tmp_path / "cache", "tiny_flip", flip=True).features
    keras.utils.set_random_seed(0)
    plain = extract_features([tmp_path / "b" / "x.png"], tmp_path / "cache", "tiny_flip").features
    np.testing.assert_array_equal(mirrored, plain)
    assert not np.array_equal(mirrored[0], mirrored[0][:, ::-1])  # so the test would notice a missing flip


def test_mirrored_batches_train_on_the_swapped_captions(tmp_path):
    captions = {"a.jpg": "a dog runs to the left", "b.jpg": "a man walks on the right", "c.jpg": "two cats sit"}
    names = list(captions)
    data = Flickr8k(tmp_path, tmp_path, {n: [c] * 5 for n, c in captions.items()}, {"train": names})
    vocab = Vocabulary.build(captions.values(), min_count=1)
    config = ModelConfig(grid=(2, 2), feature_channels=8, vocab_size=len(vocab), max_length=8, embed_dim=16,
                         units=48, feature_dim=32, attention_units=16, dropout=0.0)  # fmt: skip
    train = TrainConfig(epochs=60, batch_images=3, learning_rate=1e-2, warmup_steps=0, label_smoothing=0.0,
                        ema_decay=0.0, patience=100, flip_probability=1.0, time_budget_minutes=60)  # fmt: skip
    (tmp_path / "run").mkdir()
    trainer = Trainer(tmp_path / "run", config, train, vocab, n_train=len(names))
    features = np.random.default_rng(0).normal(0, 1, (3, 2, 2, 8)).astype(np.float16)
    tokens = caption_tokens(data, names, vocab, config.max_length, seed=0)
    trainer.dev_scores = lambda *_: {"bleu4": 0.0, "cider": 0.0}  # no dev split here: the epochs are what is tested
    trainer.cross_entropy_phase(
        features, tokens, features, [], lambda _: None, Mirrored(features, flipped_ids(vocab)[tokens])
    )
    got = BeamSearch(trainer.decoder, vocab, config.grid)(features, beam_size=1, max_length=config.max_length)
    assert [c.text for c in got] == [flip_caption(c) for c in captions.values()]
