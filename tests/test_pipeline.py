"""The public API and the `caption` / `evaluate` commands, on a tiny random-weight model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import talkative_copy, tiny_model
from PIL import Image

from captioner import Captioner, backbones
from captioner.errors import ImageError, ModelError
from captioner.features import prepare_image
from captioner.files import WEIGHTS_FILE
from captioner.layers import BahdanauAttention
from captioner.model import ImageCaptioner, build_decoder, save_model_dir
from captioner.paths import BUNDLED_MODEL_DIR
from captioner.pipeline import Decoding, ModelInfo


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return Captioner.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def talkative_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with output biases that make it say a few words, so comparing captions compares something."""
    return talkative_copy(tiny_model_dir, tmp_path_factory.mktemp("talkative") / "model")


@pytest.fixture(scope="module")
def talkative(talkative_dir):
    return Captioner.load(str(talkative_dir))


def _assert_same_n_best(a, b):
    assert a.text and [h.text for h in a.n_best] == [h.text for h in b.n_best]
    for x, y in zip(a.n_best, b.n_best, strict=True):
        np.testing.assert_allclose(x.token_log_probs, y.token_log_probs, atol=2e-3, err_msg=x.text)
        np.testing.assert_allclose(x.attention, y.attention, atol=1e-3, err_msg=x.text)


def test_load_reports_where_the_weights_came_from(model, tiny_model_dir):
    assert model.info.path == tiny_model_dir
    assert len(model.info.weights_sha256) == 64


def test_paths_bytes_pil_images_and_arrays_give_the_same_features_and_captions(talkative, photo_bytes, tmp_path):
    (tmp_path / "p.jpg").write_bytes(photo_bytes)
    pil = Image.open(tmp_path / "p.jpg")
    encoded = talkative.encode([tmp_path / "p.jpg", photo_bytes, pil, np.asarray(pil)])
    for i, kind in enumerate(("bytes", "PIL image", "array"), 1):
        np.testing.assert_array_equal(encoded.images[i], encoded.images[0], err_msg=kind)  # the backbone's input
        np.testing.assert_allclose(encoded.features[i], encoded.features[0], atol=1e-5, err_msg=kind)
    results = talkative.decode(encoded, beam_size=3)
    for r in results[1:]:
        _assert_same_n_best(results[0], r)
    assert results[0].attention.shape == (len(results[0].tokens), *talkative.config.grid)


def test_a_saved_model_loads_to_the_same_n_best_captions_log_probs_and_attention(photo_bytes, tmp_path):
    model, config, vocab = tiny_model(talkative=True)
    for v in model.weights:  # the values the float16 weights file will hold, so saving itself changes nothing
        if "float" in str(v.dtype):
            v.assign(keras.ops.cast(keras.ops.cast(v, "float16"), v.dtype))
    in_memory = Captioner(model, config, vocab, ModelInfo("memory", tmp_path, None, "0" * 64))
    loaded = Captioner.from_directory(save_model_dir(tmp_path / "model", model, config, vocab.to_json()))
    for beam_size in (1, 3):
        a, b = in_memory.caption([photo_bytes], beam_size)[0], loaded.caption([photo_bytes], beam_size)[0]
        assert len(a.n_best) == beam_size
        _assert_same_n_best(a, b)


def test_bundled_model_loads_exactly_as_keras_would_with_batch_norm_folded():
    """Weights read by layer name, BatchNorm folded from the file's arrays: the numbers the Keras loader gives."""
    cap = Captioner.from_directory(BUNDLED_MODEL_DIR)
    reference = ImageCaptioner(backbones.build(cap.config.backbone, weights=None), build_decoder(cap.config))
    reference.load_weights(BUNDLED_MODEL_DIR / WEIGHTS_FILE)
    for a, b in zip(reference.decoder.weights, cap.model.decoder.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), err_msg=a.path)
    pixels = prepare_image(BUNDLED_MODEL_DIR.parent / "examples" / "1056338697_4f7d7ce270.jpg", cap.config.image_size)
    folded = cap.model.backbone.predict_on_batch(pixels[None])
    if cap.config.tuned_stages:  # a cut backbone returns the activation where its tuned stages begin, then the grid
        folded = folded[-1]
    expected = reference.backbone.predict_on_batch(pixels[None])  # the BatchNorm graph
    assert np.max(np.abs(folded - expected)) <= 1e-4 * np.max(np.abs(expected))


def test_weights_that_do_not_fit_the_config_are_one_model_error(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    for change, message in (
        ({"units": 2 * config["units"]}, r"do not fit this model config \("),
        ({"attention_gate": False}, r"hold 19 decoder arrays; this model config has 17\."),
        ({"backbone": "efficientnet_lite1"}, r"do not fit .* layers of efficientnet_lite1; missing \['block16_dw_bn'"),
    ):
        (tmp_path / "model" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ModelError, match=message):
            Captioner.from_directory(tmp_path / "model")


def test_a_keras_clear_session_mid_build_changes_nothing(talkative, talkative_dir, photo_bytes, monkeypatch):
    """Streamlit calls keras.backend.clear_session() after every script run, while the app builds the model."""
    build = BahdanauAttention.build

    def build_after_a_clear_session(self, *args):
        keras.backend.clear_session(free_memory=False)  # Keras forgets its name scopes, mid-way through the decoder
        build(self, *args)

    monkeypatch.setattr(BahdanauAttention, "build", build_after_a_clear_session)
    again = Captioner.from_directory(talkative_dir)
    _assert_same_n_best(talkative.caption([photo_bytes], beam_size=3)[0], again.caption([photo_bytes], beam_size=3)[0])


def test_tuned_decoding_comes_from_metrics_and_each_bad_field_falls_back_to_its_default():
    tuned = {"decoding": {"beam_size": 5, "length_penalty": 0.3, "block_repeats": True, "max_length": 22}}
    assert Decoding.from_metrics(tuned) == Decoding(beam_size=5, length_penalty=0.3, block_repeats=True)
    odd = {"decoding": {"beam_size": "5", "length_penalty": 9.0, "block_repeats": 1}}
    assert Decoding.from_metrics(odd) == Decoding() == Decoding.from_metrics({}) == Decoding.from_metrics([])
    assert Decoding.from_metrics({"decoding": {"length_penalty": 1}}) == Decoding(length_penalty=1.0)


def test_decoding_defaults_to_the_tuned_settings_and_decodes_feature_grids_alike(tiny_model_dir, photo_bytes, tmp_path):
    tuned_dir = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, tuned_dir)
    decoding = {"beam_size": 2, "length_penalty": 0.3, "block_repeats": True, "max_length": 6}
    (tuned_dir / "metrics.json").write_text(json.dumps({"decoding": decoding}))
    cap = Captioner.from_directory(tuned_dir)
    assert cap.tuned == Decoding(beam_size=2, length_penalty=0.3, block_repeats=True)
    encoded = cap.encode([photo_bytes])
    default = cap.decode(encoded)[0]
    explicit = cap.decode(encoded, beam_size=2, length_penalty=0.3, block_repeats=True)[0]
    grids = cap.decode_features(encoded.features)[0]
    assert (default.text, default.log_prob) == (explicit.text, explicit.log_prob) == (grids.text, grids.log_prob)
    assert cap.caption([photo_bytes])[0].text == default.text
    greedy = cap.decode_features(encoded.features, beam_size=1)[0]
    assert greedy.text == cap.decode(encoded, beam_size=1, length_penalty=0.3, block_repeats=True)[0].text


def test_bad_image_names_the_file(model):
    with pytest.raises(ImageError, match=r"^broken\.png: not a recognised image"):
        model.encode([b"not an image"], names=["broken.png"])


def test_model_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="lacks"):
        Captioner.from_directory(tmp_path)


def _cli(*args, env_model=None):
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True, timeout=300)


def test_caption_command_captions_good_files_and_reports_bad_ones(talkative, talkative_dir, photo_bytes, tmp_path):
    good, bad, empty = tmp_path / "good.jpg", tmp_path / "bad.jpg", tmp_path / "empty.png"
    good.write_bytes(photo_bytes)
    bad.write_bytes(b"GIF89a but not really")
    empty.write_bytes(b"")
    proc = _cli(
        "caption", str(good), str(bad), str(empty), "--json", "--beam", "2", "--block-repeats",
        "--model", str(talkative_dir),
    )  # fmt: skip
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert [set(e) for e in out] == [{"image", "greedy", "beam"}, {"image", "error"}, {"image", "error"}]
    beam = talkative.caption([photo_bytes], beam_size=2, block_repeats=True)[0]
    assert out[0]["beam"]["caption"] == beam.text != ""
    assert out[0]["greedy"]["caption"] == talkative.caption([photo_bytes], beam_size=1, block_repeats=True)[0].text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "bad.jpg" in errors[0] and "empty" in errors[1]


def test_caption_command_with_a_missing_model_is_one_line(tmp_path, photo_bytes):
    (tmp_path / "p.jpg").write_bytes(photo_bytes)
    proc = _cli("caption", str(tmp_path / "p.jpg"), "--model", str(tmp_path / "nowhere"))
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error:") and proc.stderr.strip().count("\n") == 0, proc.stderr


def test_cli_drops_tensorflows_start_up_info_lines_but_keeps_other_stderr(tmp_path):
    # A stand-in TensorFlow that writes to fd 2 from "C++" as the real one does on AVX-512 CPUs.
    (tmp_path / "tensorflow.py").write_text(
        "import os\nos.write(2, b'I0000 00:00 port.cc:153] oneDNN custom operations are on.\\nreal problem\\n')\n"
    )
    code = "import sys; from captioner import cli; cli._import_tensorflow(); print(sys.modules['tensorflow'])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "real problem\n" and str(tmp_path) in proc.stdout
