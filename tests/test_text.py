"""Caption cleaning and the JSON vocabulary."""

from __future__ import annotations

import pytest

from captioner.errors import DataError
from captioner.text import Vocabulary, clean_caption, clean_tokens, length_for_coverage


def test_cleaning_lowercases_keeps_letters_and_splits_hyphens():
    assert clean_tokens("A black-and-white dog , jumps!  2 times .") == [
        "a",
        "black",
        "and",
        "white",
        "dog",
        "jumps",
        "times",
    ]
    assert clean_caption("  Two   DOGS ") == "two dogs"


def test_vocabulary_min_count_and_special_tokens():
    vocab = Vocabulary.build(["a dog", "a dog runs", "a cat"], min_count=2)
    assert vocab.words == ("<pad>", "<start>", "<end>", "<unk>", "a", "dog")
    assert vocab.id("cat") == vocab.unk_id


def test_vocabulary_json_round_trip_and_encode_decode(tmp_path):
    vocab = Vocabulary.build(["a dog runs on grass", "a dog sits"], min_count=1)
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocab
    ids = loaded.encode("A dog runs on the grass", max_length=4)
    assert ids.tolist() == [1, loaded.id("a"), loaded.id("dog"), loaded.id("runs"), loaded.id("on"), 2]
    assert loaded.decode(loaded.encode("a dog sits", 6)) == ["a", "dog", "sits"]


def test_bad_vocabulary_file_is_a_clear_error(tmp_path):
    (tmp_path / "v.json").write_text('{"words": ["a", "b"]}')
    with pytest.raises(DataError, match="starting with"):
        Vocabulary.load(tmp_path / "v.json")
    with pytest.raises(DataError, match="Expected a vocabulary JSON"):
        Vocabulary.load(tmp_path / "missing.json")


def test_max_length_covers_the_requested_share_of_captions():
    lengths = list(range(1, 101))
    assert length_for_coverage(lengths, 0.99) == 100
    assert length_for_coverage(lengths, 0.5) == 51
