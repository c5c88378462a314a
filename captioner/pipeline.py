"""The public inference API: `Captioner.load(...)`, `.encode`, `.decode`, `.caption`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioner import backbones, familiarity, hub, imagenet
from captioner.consensus import MAX_CONSENSUS, Consensus, rerank
from captioner.decode import BeamSearch, Caption
from captioner.ensemble import EnsembleDecoder, SharedBackbone
from captioner.errors import BackboneError, ImageError, ModelError
from captioner.features import ImageSource, describe, prepare_image
from captioner.files import CONFIG_FILE, IMAGENET_STAGES_FILE, METRICS_FILE, VOCAB_FILE, WEIGHTS_FILE, sha256_file
from captioner.model import ImageCaptioner, Member, ModelConfig, load_decoder, load_member, read_ensemble, read_weights
from captioner.text import Vocabulary


@dataclass(frozen=True)
class ModelInfo:
    """Where the weights came from, for display and reports."""

    source: str
    path: Path
    commit: str | None
    weights_sha256: str
    notice: str | None = None

    @property
    def id(self) -> str:
        """The model's logical name for reports and metrics: `bundled`, `hf://OWNER/REPO@SHA` or a directory name."""
        return hub.model_id(self.source, self.path, self.commit)


@dataclass(frozen=True)
class Decoding:
    """Decoding settings: the ones a model was tuned with on dev (metrics.json), or the usual defaults."""

    beam_size: int = 3
    length_penalty: float = 0.7
    block_repeats: bool = False
    consensus: int = 0  # rerank the n-best by agreement with this many similar training photos' captions (0: off)
    consensus_weight: float = 1.0  # the beam score's weight beside that agreement

    @classmethod
    def from_metrics(cls, metrics: Mapping) -> Decoding:
        """The `decoding` block of a metrics.json; anything missing or malformed keeps its default."""
        d = metrics.get("decoding") if isinstance(metrics, Mapping) else None
        d = d if isinstance(d, Mapping) else {}
        beam, alpha, block = d.get("beam_size"), d.get("length_penalty"), d.get("block_repeats")
        k, weight = d.get("consensus"), d.get("consensus_weight")
        default = cls()
        return cls(
            beam if isinstance(beam, int) and 1 <= beam <= 20 else default.beam_size,
            float(alpha) if isinstance(alpha, int | float) and 0.0 <= alpha <= 2.0 else default.length_penalty,
            block if isinstance(block, bool) else default.block_repeats,
            k if isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= MAX_CONSENSUS else default.consensus,
            float(weight) if isinstance(weight, int | float) and 0.0 <= weight <= 100.0 else default.consensus_weight,
        )

    @classmethod
    def of_model_dir(cls, path: str | Path) -> Decoding:
        """The decoding a model directory was tuned with (its metrics.json), without loading the model."""
        return cls.from_metrics(_read_json(Path(path) / METRICS_FILE))

    def overridden(self, **settings) -> Decoding:
        """These settings, with each given value that is not None in place of its own (command-line overrides)."""
        return replace(self, **{name: value for name, value in settings.items() if value is not None})


@dataclass(frozen=True)
class Encoded:
    """Backbone feature grids of a batch of images, ready for decoding."""

    names: list[str]
    # (N, H, W, C) float32; (N, H, W, C·S) for an ensemble whose members fine-tuned their own stages: S grids stacked
    features: np.ndarray
    images: np.ndarray  # (N, S, S, 3) uint8, the squashed backbone inputs (for overlays)
    # (N, C) float32: the pooled grid of the ImageNet backbone, what its ImageNet head and the familiarity check read
    # (the first member's pooled grid, unless it fine-tuned stages: then their original weights' output)
    seen: np.ndarray


class Captioner:
    """A loaded model: images in, captions with attention maps out."""

    def __init__(
        self,
        model: ImageCaptioner,
        config: ModelConfig,
        vocab: Vocabulary,
        info: ModelInfo,
        members: Sequence[Member] = (),
    ):
        """`model` holds the decoder and the inference backbone (`backbones.build_inference`), as `load` builds it.

        `members` are further decoders over the same backbone, decoded with `model.decoder` as one ensemble. When any
        of them fine-tuned stages, `model.backbone` is cut before the most any did (`backbones.cut`).
        """
        self.model, self.config, self.vocab, self.info = model, config, vocab, info
        self.decoders = [model.decoder, *(m.decoder for m in members)]
        self.stages = max([config.tuned_stages, *(m.config.tuned_stages for m in members)])  # the backbone's cut
        self.metrics = _read_json(info.path / METRICS_FILE)
        self.tuned = Decoding.from_metrics(self.metrics)  # what dev chose for this model
        # Optional files beside the weights (None without them); both read `Encoded.seen`.
        self.imagenet = imagenet.ImageNetHead.load(info.path)  # the backbone's own ImageNet classifier
        self.familiarity = familiarity.Familiarity.load(info.path)  # is a photo like the training photos?
        # The ImageNet weights of the stages after the cut: what the ImageNet view runs when member 0 fine-tuned
        # them, and what fills a member's stages where it fine-tuned fewer.
        shipped = imagenet.load_stages(info.path) if self.stages else None
        original = None
        if config.tuned_stages and shipped is None:  # both were made for the ImageNet backbone's features
            self.imagenet = self.familiarity = None
        elif config.tuned_stages:
            original = _folded_top(config.backbone, self.stages, shipped, {}, info.path)
        tops = [
            _folded_top(config.backbone, self.stages, shipped, m.stages, info.path) if m.config.tuned_stages else None
            for m in members
        ]
        # The training captions that consensus reranking compares with; it finds similar photos by familiarity.
        self.consensus = Consensus.load(info.path, vocab) if self.familiarity is not None else None
        if self.consensus is None:
            self.tuned = replace(self.tuned, consensus=0)
        self.shared = SharedBackbone(model.backbone, self.stages > 0, config.tuned_stages > 0, original, tops)
        self.decoder = EnsembleDecoder(self.decoders, self.shared.slots) if members else model.decoder  # what runs
        self.search = BeamSearch(self.decoder, vocab, config.grid)

        # Traced once, without AutoGraph or Keras' predict machinery: quicker to compile on a cold start and to call.
        self._backbone = tf.function(
            self.shared,
            input_signature=[tf.TensorSpec([None, config.image_size, config.image_size, 3], tf.uint8)],
            autograph=False,
        )

    @classmethod
    def load(
        cls,
        source: str | Path | None = None,
        secrets: Mapping | None = None,
        fallback: bool = False,
        token: str | None = None,
    ) -> Captioner:
        """Load a directory or hf://OWNER/REPO@REV; None picks CAPTIONER_MODEL, a secret, or the bundled model."""
        resolved = hub.fetch(
            hub.choose_source(None if source is None else str(source), secrets), fallback=fallback, token=token
        )
        info = ModelInfo(resolved.source, resolved.path, resolved.commit, resolved.weights_sha256, resolved.notice)
        return cls.from_directory(resolved.path, info)

    @classmethod
    def from_directory(cls, path: str | Path, info: ModelInfo | None = None) -> Captioner:
        """Rebuild the model from a verified model directory (config.json, vocab.json, model.weights.h5)."""
        path = Path(path)
        missing = [f for f in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
        if missing:
            raise ModelError(f"Model directory {path} lacks {', '.join(missing)}.")
        config = ModelConfig.load(path / CONFIG_FILE)
        vocab = Vocabulary.load(path / VOCAB_FILE)
        if len(vocab) != config.vocab_size:
            raise ModelError(f"{path}: vocab.json has {len(vocab)} words, config.json says {config.vocab_size}.")
        backbones.get(config.backbone)  # an unknown backbone is reported as that, not as weights that do not fit
        entries = read_ensemble(path, config)
        stages = max([config.tuned_stages, *(member.tuned_stages for _, member in entries)])
        model = _inference_model(config, path / WEIGHTS_FILE, stages)
        members = [load_member(path / name, member) for name, member in entries]
        if info is None:
            info = ModelInfo(str(path), path, None, sha256_file(path / WEIGHTS_FILE))
        return cls(model, config, vocab, info, members)

    def prepare(self, image: ImageSource, name: str | None = None) -> np.ndarray:
        """Decode and resize one image to the backbone input; raises ImageError naming it."""
        return prepare_image(image, self.config.image_size, name)

    def encode(
        self, images: Sequence[ImageSource], names: Sequence[str] | None = None, batch_size: int = 16
    ) -> Encoded:
        """Run the backbone on images (paths, bytes, PIL images or arrays); raises ImageError on a bad one."""
        names = list(names) if names is not None else [describe(im) for im in images]
        if len(names) != len(images):
            raise ValueError(f"Expected one name per image. Received: {len(names)} names, {len(images)} images.")
        if not images:
            raise ImageError("No images to caption.")
        pixels = np.stack([self.prepare(im, n) for im, n in zip(images, names, strict=True)])
        passes = [self._backbone(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        grids, seen = (np.concatenate([p[k].numpy() for p in passes]) for k in (0, 1))
        return Encoded(names, grids, pixels, seen)

    def decode(
        self,
        encoded: Encoded,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        block_repeats: bool | None = None,
        consensus: int | None = None,
        consensus_weight: float | None = None,
    ) -> list[Caption]:
        """Captions for encoded images; beam_size 1 is greedy; a setting left None is the model's tuned one.

        `consensus` (photos, 0 for none) and `consensus_weight` set the reranking of the n-best (captioner.consensus).
        """
        return self.decode_features(
            encoded.features, beam_size, length_penalty, max_length, block_repeats,
            seen=encoded.seen, consensus=consensus, consensus_weight=consensus_weight,
        )  # fmt: skip

    def decode_features(
        self,
        features: np.ndarray,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        block_repeats: bool | None = None,
        *,
        seen: np.ndarray | None = None,
        consensus: int | None = None,
        consensus_weight: float | None = None,
    ) -> list[Caption]:
        """Captions for backbone feature grids (N, H, W, C), e.g. from a feature cache; settings as in `decode`.

        `block_repeats` forbids repeating any trigram within a caption. The n-best is reranked by consensus only
        when `seen` (`Encoded.seen` of the same images) is given: the similar training photos are found from it.
        """
        d = self.tuned.overridden(
            beam_size=beam_size, length_penalty=length_penalty, block_repeats=block_repeats,
            consensus=consensus, consensus_weight=consensus_weight,
        )  # fmt: skip
        if not 0 <= d.consensus <= MAX_CONSENSUS:
            raise ValueError(f"Expected between 0 and {MAX_CONSENSUS} consensus photos. Received: {d.consensus}.")
        max_length = max_length or self.config.max_length
        captions = self.search(features, d.beam_size, d.length_penalty, max_length, block_repeats=d.block_repeats)
        if not d.consensus or seen is None:
            return captions
        agreement = self.agreement(captions, seen, d.consensus)
        return [rerank(c, a, d.consensus_weight) for c, a in zip(captions, agreement, strict=True)]

    def agreement(self, captions: Sequence[Caption], seen: np.ndarray, k: int) -> list[np.ndarray]:
        """Per caption, its n-best's CIDEr-D against the captions of the k training photos most like its image."""
        if self.consensus is None or self.familiarity is None:
            raise ModelError("This model has no consensus index (consensus.npz beside familiarity.npz) to rerank by.")
        nearest = self.familiarity.nearest(seen, k)
        return [self.consensus.agreement(c, photos) for c, photos in zip(captions, nearest, strict=True)]

    def caption(
        self,
        images: Sequence[ImageSource],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        block_repeats: bool | None = None,
        consensus: int | None = None,
        consensus_weight: float | None = None,
    ) -> list[Caption]:
        """Encode and decode in one call; settings left None are the model's tuned ones."""
        return self.decode(
            self.encode(images), beam_size, length_penalty, max_length, block_repeats, consensus, consensus_weight
        )


def _inference_model(config: ModelConfig, weights_file: Path, stages: int) -> ImageCaptioner:
    """The decoder and the BatchNorm-folded backbone, set from the weights file of the full model.

    Cut before the last `stages` stages (the most any member fine-tuned), the backbone has two outputs: [the
    activation entering those stages, the feature grid].
    """
    weights = read_weights(weights_file)  # by layer name: the backbone's arrays are folded into its convs
    if sorted(weights) != ["backbone", "decoder"]:
        raise ModelError(f"Expected a backbone and a decoder in {weights_file}; received {sorted(weights)}.")
    decoder = load_decoder(config, weights_file, weights)
    try:
        # BatchNorm folded into the convs (1.2-1.3x faster), built without building the BatchNorm graph first.
        if stages:
            backbone = backbones.cut(config.backbone, stages, weights["backbone"])
        else:
            backbone = backbones.build_inference(config.backbone, weights["backbone"])
    except BackboneError as e:
        raise ModelError(
            f"Weights {weights_file} do not fit this model config: {e} Are config.json and weights from one run?"
        ) from e
    return ImageCaptioner(backbone, decoder)


def _folded_top(
    backbone: str,
    stages: int,
    original: dict[str, list[np.ndarray]] | None,
    own: dict[str, list[np.ndarray]],
    path: Path,
) -> keras.Model:
    """The last `stages` stages of the backbone, folded: a member's `own` fine-tuned layers, ImageNet's for the rest."""
    if original is None:
        raise ModelError(f"{path} lacks {IMAGENET_STAGES_FILE}, the ImageNet weights of the stages its members share.")
    if extra := sorted(set(own) - set(original)):
        raise ModelError(f"{path}: a member's stages hold layers {extra[:3]}, not among the last {stages} stages.")
    try:
        return backbones.top(backbone, stages, {**original, **own}, folded=True)
    except BackboneError as e:
        raise ModelError(f"{path}: the stages of an ensemble member do not fit {backbone}: {e}") from e


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
