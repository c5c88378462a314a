"""A training run set up from the data and its feature caches: vocabulary, config, starting weights, arrays."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner import backbones, glove
from captioner.augment import flipped_ids
from captioner.backbones.registry import fitting
from captioner.config import ModelConfig, TrainConfig
from captioner.data import Flickr8k
from captioner.errors import DataError, ModelError
from captioner.features import FeatureCache
from captioner.files import BEST_TOP_WEIGHTS, BEST_WEIGHTS, CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from captioner.metrics import tokenize
from captioner.model import load_decoder, read_weights
from captioner.text import Vocabulary, clean_tokens, length_for_coverage, length_report
from captioner.train import CaptionReward, Mirrored, Trainer

CAPTIONS_PER_IMAGE = 5


def caption_tokens(data: Flickr8k, names: list[str], vocab: Vocabulary, max_length: int, seed: int) -> np.ndarray:
    """(N, 5, max_length + 2) int32 ids for each image's captions (images with fewer reuse some)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(names), CAPTIONS_PER_IMAGE, max_length + 2), np.int32)
    for i, name in enumerate(names):
        caps = data.captions[name]
        if len(caps) < CAPTIONS_PER_IMAGE:
            caps = caps + list(rng.choice(caps, CAPTIONS_PER_IMAGE - len(caps)))
        for j, cap in enumerate(caps[:CAPTIONS_PER_IMAGE]):
            out[i, j] = vocab.encode(cap, max_length)
    return out


@dataclass(frozen=True)
class PreparedRun:
    """A trainer with everything its `fit` needs: features, caption ids, dev references and the self-critical reward."""

    trainer: Trainer
    train_features: np.ndarray
    train_tokens: np.ndarray
    dev_features: np.ndarray
    dev_references: list[list[list[str]]]
    reward: CaptionReward | None
    mirrored: Mirrored | None = None

    def fit(self, log) -> float:
        """Train (resuming if the run has a checkpoint) and return the best dev BLEU-4."""
        return self.trainer.fit(
            self.train_features,
            self.train_tokens,
            self.dev_features,
            self.dev_references,
            log,
            self.reward,
            self.mirrored,
        )


def tuned_layers(run_dir: Path, config: ModelConfig, original: dict) -> dict[str, list]:
    """The layers of a run's (or model directory's) fine-tuned top stages by name; empty if it tuned none.

    `original`: the ImageNet backbone's layer weights, which the stages start from and must fit.
    """
    if not config.tuned_stages:
        return {}
    top = backbones.top(config.backbone, config.tuned_stages, original)
    if (run_dir / BEST_WEIGHTS).is_file():  # a training run keeps its best stages beside its best decoder
        if not (run_dir / BEST_TOP_WEIGHTS).is_file():
            raise ModelError(
                f"{run_dir} fine-tuned {config.tuned_stages} backbone stage(s) but holds no {BEST_TOP_WEIGHTS}: "
                "export it from its training run directory."
            )
        top.load_weights(run_dir / BEST_TOP_WEIGHTS)
    else:  # a model directory: the stages inside its backbone
        saved = read_weights(run_dir / WEIGHTS_FILE).get("backbone", {})
        for layer in top.layers:
            if layer.weights:
                if layer.name not in saved:
                    raise ModelError(f"{run_dir / WEIGHTS_FILE} lacks the fine-tuned backbone layer {layer.name}.")
                with fitting(config.backbone, layer.name):
                    layer.set_weights(saved[layer.name])
    return backbones.layer_weights(top)


def prepare_run(
    data: Flickr8k,
    cache: FeatureCache,
    run_dir: Path,
    model_overrides: dict,
    train_config: TrainConfig,
    log,
    mirrored_cache: FeatureCache | None = None,
) -> PreparedRun:
    """Vocabulary, embeddings, config and arrays for a run; reuses the run's saved vocabulary when resuming.

    `mirrored_cache` (the features of the mirrored images) is needed when `train_config.flip_probability` > 0. With
    `train_config.tune_stages`, both caches hold the activation entering those stages (`features --tune-stages`).
    With `train_config.init_from`, a new run takes that model directory's vocabulary, config, decoder
    weights and fine-tuned stages (it may have tuned fewer stages than this run).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    train_names, dev_names = data.images("train"), data.images("dev")
    stages, backbone = train_config.tune_stages, cache.manifest["backbone"]
    for c in (cache, mirrored_cache):
        if c is not None and c.manifest.get("stages", 0) != stages:
            raise DataError(f"Feature cache {c.path} was not cut for {stages} fine-tuned stages; "
                            f"run `captioner features --tune-stages {stages}`.")  # fmt: skip
    init = Path(train_config.init_from) if train_config.init_from else None
    resumed = (run_dir / VOCAB_FILE).is_file()
    start = ModelConfig.load(init / CONFIG_FILE) if init is not None and not resumed else None
    top_weights = backbones.layer_weights(backbones.build(backbone)) if stages else {}
    if start is not None:
        if start.backbone != backbone or start.tuned_stages > stages:
            raise DataError(
                f"{init} must be a model of the {backbone} backbone with at most {stages} fine-tuned stage(s) "
                "to start this run from."
            )
        # the stages it tuned start from its weights, any further ones from ImageNet's
        top_weights = {**top_weights, **tuned_layers(init, start, top_weights)}
    top = backbones.top(backbone, stages, top_weights) if stages else None
    if resumed:
        vocab = Vocabulary.load(run_dir / VOCAB_FILE)
        model_config = ModelConfig.load(run_dir / CONFIG_FILE)
    elif start is not None:
        vocab = Vocabulary.load(init / VOCAB_FILE)
        model_config = dataclasses.replace(start, tuned_stages=stages)
    else:
        train_caps = [c for n in train_names for c in data.captions[n]]
        vocab = Vocabulary.build(train_caps, train_config.min_count)
        lengths = [len(clean_tokens(c)) for c in train_caps]
        log(length_report(lengths))
        max_length = length_for_coverage(lengths, train_config.coverage)
        grids = cache.features.shape if top is None else top.output_shape  # (N, H, W, C)
        model_config = ModelConfig(
            backbone=backbone, image_size=cache.manifest["input_size"], grid=(int(grids[1]), int(grids[2])),
            feature_channels=int(grids[3]), vocab_size=len(vocab), max_length=max_length, tuned_stages=stages,
            **model_overrides,
        )  # fmt: skip
    if not resumed:
        vocab.save(run_dir / VOCAB_FILE)
        (run_dir / CONFIG_FILE).write_text(model_config.to_json())
        (run_dir / "train.json").write_text(json.dumps(dataclasses.asdict(train_config), indent=2))
    log(f"vocabulary {len(vocab)} words (min count {train_config.min_count}); max length {model_config.max_length}")
    trainer = Trainer(run_dir, model_config, train_config, vocab, len(train_names), top)
    if init is not None and not trainer.manager.latest_checkpoint:  # a resumed run restores its own weights
        trainer.decoder.set_weights(load_decoder(model_config, init / WEIGHTS_FILE).get_weights())
        log(f"decoder and vocabulary from {init}")
    elif train_config.glove != "none" and not trainer.manager.latest_checkpoint:
        vectors = glove.load_glove(train_config.glove, set(vocab.words))
        emb = glove.embedding_matrix(vocab, vectors, seed=train_config.seed)
        if emb.matrix.shape[1] != model_config.embed_dim:
            raise ValueError(f"GloVe has {emb.matrix.shape[1]} dims; the model expects {model_config.embed_dim}.")
        trainer.decoder.embedding.embeddings.assign(emb.matrix)
        log(f"GloVe covers {emb.found}/{emb.total} words ({emb.coverage:.1%})")
    t0 = time.time()
    train_feats = np.asarray(cache.features[cache.rows(train_names)])
    dev_feats = np.asarray(cache.features[cache.rows(dev_names)])
    log(f"loaded features {train_feats.shape} + {dev_feats.shape} in {time.time() - t0:.0f}s")
    train_tokens = caption_tokens(data, train_names, vocab, model_config.max_length, train_config.seed)
    dev_refs = [[tokenize(c) for c in data.captions[n]] for n in dev_names]
    reward = None
    if train_config.scst_epochs:
        train_refs = [[tokenize(c) for c in data.captions[n]] for n in train_names]
        reward = CaptionReward(train_refs, train_config.scst_bleu_weight)
    mirrored = None
    if train_config.flip_probability > 0:
        if mirrored_cache is None:
            raise DataError("Flip augmentation needs the mirrored images' features: run `captioner features --flip`.")
        mirrored = Mirrored(
            np.asarray(mirrored_cache.features[mirrored_cache.rows(train_names)]), flipped_ids(vocab)[train_tokens]
        )
        log(f"flip augmentation: each image mirrored with probability {train_config.flip_probability:g}")
    return PreparedRun(trainer, train_feats, train_tokens, dev_feats, dev_refs, reward, mirrored)
