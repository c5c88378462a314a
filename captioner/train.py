"""Teacher-forced training from cached features, with early stopping on dev BLEU-4 from real decoding."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioner.config import ModelConfig, TrainConfig
from captioner.decode import BeamSearch, emittable_words
from captioner.files import BEST_TOP_WEIGHTS, BEST_WEIGHTS
from captioner.metrics import CiderD, corpus_metrics, sentence_bleu
from captioner.model import build_decoder
from captioner.text import Vocabulary


def length_batches(tokens: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Image indices grouped with others of similar caption length (less padding), batches shuffled."""
    lengths = (tokens > 0).sum(-1).max(-1) + rng.uniform(0, 3, len(tokens))  # jitter varies batches per epoch
    order = np.argsort(lengths)
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    rng.shuffle(batches)
    return batches


class CaptionReward:
    """Self-critical reward of a sampled caption: CIDEr-D against its image's references + w × sentence BLEU-4."""

    def __init__(self, references: list[list[list[str]]], bleu_weight: float = 0.0):
        self.references, self.bleu_weight = references, bleu_weight
        self.cider = CiderD(references)

    def __call__(self, image: int, hypothesis: list[str]) -> float:
        reward = self.cider.score(image, hypothesis)
        if self.bleu_weight:
            reward += self.bleu_weight * sentence_bleu(hypothesis, self.references[image])["bleu4"] / 100
        return reward


class Trainer:
    """Owns the decoder (and the fine-tuned backbone stages, if any), optimizers, data and checkpoints of one run.

    Without `top`, the cached features are the decoder's feature grids. With `top` (the backbone's last stages, from
    `backbones.split`), they are the activation entering those stages, and the cross-entropy phase trains the top with
    the decoder at `backbone_lr_scale` × the learning rate; the self-critical phase keeps it fixed.
    """

    def __init__(
        self,
        run_dir: Path,
        model_config: ModelConfig,
        train_config: TrainConfig,
        vocab: Vocabulary,
        n_train: int,
        top: keras.Model | None = None,
    ):
        self.run_dir, self.model_config, self.config, self.vocab = run_dir, model_config, train_config, vocab
        keras.utils.set_random_seed(train_config.seed)
        self.decoder = build_decoder(model_config)
        self.top = top
        self.tuned = self.decoder.trainable_variables + (top.trainable_variables if top is not None else [])
        total = train_config.epochs * -(-n_train // train_config.batch_images)

        def adam(rate: float) -> keras.optimizers.Adam:
            schedule = keras.optimizers.schedules.CosineDecay(
                0.0, total, alpha=0.05, warmup_target=rate, warmup_steps=min(train_config.warmup_steps, total // 10)
            )
            return keras.optimizers.Adam(schedule, global_clipnorm=train_config.clip_norm)

        self.optimizer = adam(train_config.learning_rate)
        self.optimizer.build(self.decoder.trainable_variables)
        parts = {}
        if top is not None:
            self.top_optimizer = adam(train_config.learning_rate * train_config.backbone_lr_scale)
            self.top_optimizer.build(top.trainable_variables)
            parts = {"top": top, "top_optimizer": self.top_optimizer}
        self.scst_optimizer = keras.optimizers.Adam(
            train_config.scst_learning_rate, global_clipnorm=train_config.clip_norm
        )
        # Decaying to zero over the self-critical epochs: at a constant rate the greedy captions degrade
        # (dropped prepositions, loops) by the third epoch while the sampled reward still rises. Each step
        # assigns the rate (rather than handing Adam the schedule) so checkpoints keep their layout.
        scst_steps = max(1, train_config.scst_epochs * (n_train // train_config.batch_images))
        self.scst_schedule = keras.optimizers.schedules.CosineDecay(train_config.scst_learning_rate, scst_steps)
        self.scst_optimizer.build(self.decoder.trainable_variables)
        self.scst_tuned = self.decoder.trainable_variables  # and the tuned stages, with `scst_tune_stages`
        self.scst_top_optimizer = None
        if top is not None and train_config.scst_tune_stages:
            self.scst_tuned = self.scst_tuned + top.trainable_variables
            self.scst_top_optimizer = keras.optimizers.Adam(0.0, global_clipnorm=train_config.clip_norm)  # set per step
            self.scst_top_optimizer.build(top.trainable_variables)
            parts["scst_top_optimizer"] = self.scst_top_optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64)
        self.best = tf.Variable(-1.0, dtype=tf.float64)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64)
        self.scst_start = tf.Variable(-1, dtype=tf.int64)  # epoch the self-critical phase began, -1 before
        self.elapsed = tf.Variable(0.0, dtype=tf.float64)  # seconds of training so far, across resumes
        averaging = train_config.ema_decay or train_config.scst_ema_decay
        self.ema = [tf.Variable(v, trainable=False) for v in (self.tuned if averaging else [])]  # when it is on
        self.checkpoint = tf.train.Checkpoint(
            decoder=self.decoder, optimizer=self.optimizer, scst_optimizer=self.scst_optimizer, epoch=self.epoch,
            best=self.best, bad=self.bad_epochs, scst_start=self.scst_start, elapsed=self.elapsed, ema=self.ema,
            **parts,
        )  # fmt: skip
        self.manager = tf.train.CheckpointManager(self.checkpoint, run_dir / "checkpoints", max_to_keep=1)
        grids = tf.TensorSpec([None, *model_config.grid, model_config.feature_channels], tf.float16)
        feats = grids if top is None else tf.TensorSpec([None, *top.input_shape[1:]], tf.float16)  # what is cached
        tokens = tf.TensorSpec([None, None, None], tf.int32)
        self.train_step = tf.function(self._train_step, input_signature=[feats, tokens])
        scst_inputs = feats if self.scst_top_optimizer is not None else grids
        advantage = tf.TensorSpec([None, None])
        self.scst_step = tf.function(self._scst_step, input_signature=[scst_inputs, tokens, advantage])
        self.sample = tf.function(self._sample, input_signature=[grids])
        self._top_grids = tf.function(lambda f: tf.cast(self._grid_of(f), tf.float16), input_signature=[feats])
        self.search = BeamSearch(self.decoder, vocab, model_config.grid)  # one trace for every dev decoding

    def loss(self, features, tokens, training: bool):
        """Label-smoothed masked cross-entropy + doubly stochastic attention penalty."""
        inputs, targets = tokens[:, :, :-1], tokens[:, :, 1:]
        logits, alpha = self.decoder(features, inputs, training=training)  # (B, N, T, V), (B, N, T, R)
        mask = tf.cast(targets > 0, tf.float32)
        logp = tf.nn.log_softmax(logits)
        nll = -tf.gather(logp, targets, batch_dims=3)
        eps = self.config.label_smoothing
        per_token = (1 - eps) * nll - eps * tf.reduce_mean(logp, -1)
        ce = tf.reduce_sum(per_token * mask) / tf.reduce_sum(mask)
        coverage = tf.reduce_sum(alpha * mask[..., None], axis=2)  # (B, N, R): attention each region received
        penalty = tf.reduce_mean(tf.reduce_sum(tf.square(1.0 - coverage), -1))
        return ce + self.config.attention_penalty * penalty / tf.cast(tf.shape(alpha)[-1], tf.float32), ce

    def _grid_of(self, features):
        """The decoder's feature grids of cached features: the top's output (inference mode), or the features."""
        return features if self.top is None else self.top(tf.cast(features, tf.float32), training=False)

    def grids(self, features: np.ndarray, batch: int = 64) -> np.ndarray:
        """Float16 feature grids of cached features, in batches (the features themselves without fine-tuning)."""
        if self.top is None:
            return features
        return np.concatenate(
            [self._top_grids(features[i : i + batch]).numpy() for i in range(0, len(features), batch)]
        )

    def _train_step(self, features, tokens):
        with tf.GradientTape() as tape:
            loss, ce = self.loss(self._grid_of(features), tokens, training=True)
        grads = tape.gradient(loss, self.tuned)
        n = len(self.decoder.trainable_variables)
        self.optimizer.apply(grads[:n], self.decoder.trainable_variables)
        if self.top is not None:
            self.top_optimizer.apply(grads[n:], self.top.trainable_variables)
        if self.config.ema_decay:
            # The usual warm-up (1 + n) / (10 + n) keeps the average from clinging to the random init.
            n = tf.cast(self.optimizer.iterations, tf.float32)
            self._update_average(tf.minimum(self.config.ema_decay, (1.0 + n) / (10.0 + n)))
        return ce

    def _update_average(self, decay) -> None:
        for avg, var in zip(self.ema, self.tuned, strict=True):
            avg.assign(decay * avg + (1.0 - decay) * var)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Inside the block the decoder (and top) hold the moving-average weights (when the current phase keeps one)."""
        if not (self.config.scst_ema_decay if int(self.scst_start) >= 0 else self.config.ema_decay):
            yield
            return
        current = [v.numpy() for v in self.tuned]
        for var, avg in zip(self.tuned, self.ema, strict=True):
            var.assign(avg)
        try:
            yield
        finally:
            for var, value in zip(self.tuned, current, strict=True):
                var.assign(value)

    def _emittable(self, last_step=False):
        return emittable_words(self.model_config.vocab_size, self.vocab.unk_id, self.vocab.end_id, last_step)

    def _sample(self, features):
        """Ancestral sampling of `scst_samples` captions per image: (B, n, L) ids, <end> then <pad>."""
        n, steps, vocab = self.config.scst_samples, self.model_config.max_length + 1, self.vocab
        regions, keys, states = self.decoder.encode(features)
        regions, keys = tf.repeat(regions, n, axis=0), tf.repeat(keys, n, axis=0)
        states = tuple(tf.repeat(s, n, axis=0) for s in states)  # step() returns a tuple
        token = tf.fill([tf.shape(regions)[0]], vocab.start_id)
        finished = tf.zeros_like(token, tf.bool)
        out = tf.TensorArray(tf.int32, size=steps)
        for t in tf.range(steps):
            logp, _, states = self.decoder.step(token, states, regions, keys)
            allowed = self._emittable(t >= steps - 1)  # the words beam search may take too
            word = tf.cast(tf.random.categorical(tf.where(allowed, logp, -1e9), 1)[:, 0], tf.int32)
            word = tf.where(finished, vocab.pad_id, word)
            out = out.write(t, word)
            finished = finished | (word == vocab.end_id)
            token = word
        return tf.reshape(tf.transpose(out.stack()), [tf.shape(features)[0], n, steps])

    def _scst_step(self, features, tokens, advantage):
        """Policy gradient: raise the log-probability of samples that beat the others' mean CIDEr-D.

        `features` are grids, or the cached activations when the tuned stages learn in this phase too.
        """
        with tf.GradientTape() as tape:
            grids = features if self.scst_top_optimizer is None else self._grid_of(features)
            logits, _ = self.decoder(grids, tokens[:, :, :-1], training=False)
            logits = tf.where(self._emittable(), logits, -1e9)  # the policy that sampled, over the words it could pick
            targets = tokens[:, :, 1:]
            logp = tf.gather(tf.nn.log_softmax(logits), targets, batch_dims=3) * tf.cast(targets > 0, tf.float32)
            loss = -tf.reduce_mean(advantage * tf.reduce_sum(logp, -1))
        grads = tape.gradient(loss, self.scst_tuned)
        n, rate = len(self.decoder.trainable_variables), self.scst_schedule(self.scst_optimizer.iterations)
        self.scst_optimizer.learning_rate.assign(rate)
        self.scst_optimizer.apply(grads[:n], self.decoder.trainable_variables)
        if self.scst_top_optimizer is not None:
            self.scst_top_optimizer.learning_rate.assign(rate * self.config.backbone_lr_scale)
            self.scst_top_optimizer.apply(grads[n:], self.top.trainable_variables)
        if self.config.scst_ema_decay:
            self._update_average(self.config.scst_ema_decay)
        return loss

    def scst_epoch(self, train_feats, reward: CaptionReward, rng, bar) -> list[float]:
        """One self-critical epoch over the training images; returns the mean sampled reward per batch."""
        rewards_seen = []
        n = self.config.scst_samples
        for idx in bar(np.array_split(rng.permutation(len(train_feats)), len(train_feats) // self.config.batch_images)):
            idx = np.sort(idx)
            cached = train_feats[idx]
            feats = self.grids(cached)
            samples = self.sample(feats).numpy()  # (B, n, L)
            rewards = np.array([[reward(i, self.vocab.decode(s)) for s in samples[b]] for b, i in enumerate(idx)])
            advantage = rewards - (rewards.sum(1, keepdims=True) - rewards) / (n - 1)
            start = np.full((*samples.shape[:2], 1), self.vocab.start_id, np.int32)
            tokens = np.concatenate([start, samples], -1)[:, :, : int((samples > 0).sum(-1).max()) + 1]
            self.scst_step(feats if self.scst_top_optimizer is None else cached, tokens, advantage.astype(np.float32))
            rewards_seen.append(float(rewards.mean()))
        return rewards_seen

    def dev_scores(self, features: np.ndarray, references: list[list[list[str]]]) -> dict[str, float]:
        """Decode the dev images with the phase's selection beam: corpus BLEU-1..4 (percent) and CIDEr-D."""
        beam = self.config.scst_select_beam if int(self.scst_start) >= 0 else self.config.xe_select_beam
        captions = self.search(
            self.grids(features), beam_size=beam, max_length=self.model_config.max_length, block_repeats=beam > 1
        )
        return corpus_metrics([c.tokens for c in captions], references)

    def fit(
        self,
        train_feats,
        train_tokens,
        dev_feats,
        dev_refs,
        log,
        reward: CaptionReward | None = None,
        mirrored: Mirrored | None = None,
    ) -> float:
        """Cross-entropy until epochs/patience, then optional self-critical epochs; returns the best dev BLEU-4.

        Every epoch ends with decoding dev; the best weights so far stay in best.weights.h5. A resumed run carries on
        in the phase it stopped in.
        """
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint)
            log(f"resumed from {self.manager.latest_checkpoint} at epoch {int(self.epoch)}")
        if int(self.scst_start) < 0:
            finished = self.cross_entropy_phase(train_feats, train_tokens, dev_feats, dev_refs, log, mirrored)
            if not finished or self.config.scst_epochs == 0 or reward is None:
                return float(self.best)
            self._begin_self_critical(dev_feats, dev_refs, log)
        self.self_critical_phase(train_feats, reward, dev_feats, dev_refs, log)
        return float(self.best)

    def cross_entropy_phase(
        self, train_feats, train_tokens, dev_feats, dev_refs, log, mirrored: Mirrored | None = None
    ) -> bool:
        """Teacher-forced epochs until `epochs` or `patience`; False if the time budget stopped the run first.

        With `mirrored`, each image of a batch is shown mirrored (its captions' sides swapped) with probability
        `flip_probability`.
        """
        while int(self.epoch) < self.config.epochs and int(self.bad_epochs) < self.config.patience:
            t0, rng, bar = self._epoch_start()
            losses = []
            for idx in bar(length_batches(train_tokens, self.config.batch_images, rng)):
                idx = np.sort(idx)
                feats, tok = train_feats[idx], train_tokens[idx]
                if mirrored is not None:
                    flip = rng.random(len(idx)) < self.config.flip_probability
                    feats = np.where(flip[:, None, None, None], mirrored.features[idx], feats)
                    tok = np.where(flip[:, None, None], mirrored.tokens[idx], tok)
                tok = tok[:, :, : int((tok > 0).sum(-1).max())]  # pad only to this batch's longest caption
                losses.append(float(self.train_step(feats, tok)))
            if not self._end_epoch(f"loss {np.mean(losses):.4f}", t0, dev_feats, dev_refs, log):
                return False
        return True

    def _begin_self_critical(self, dev_feats, dev_refs, log) -> None:
        """Start the self-critical phase from the best cross-entropy weights, its bar rescored as it decodes dev."""
        self.decoder.load_weights(self.run_dir / BEST_WEIGHTS)  # fine-tune the best cross-entropy model
        if self.top is not None:
            self.top.load_weights(self.run_dir / BEST_TOP_WEIGHTS)
        if self.ema:
            self._update_average(0.0)  # the self-critical average starts from these weights
        self.scst_start.assign(self.epoch)
        self.bad_epochs.assign(0)
        xe_beam, scst_beam = self.config.xe_select_beam, self.config.scst_select_beam
        scores = f"{float(self.best):.2f} {_decoding(xe_beam)}"
        if xe_beam != scst_beam:  # the bar, rescored as this phase decodes
            t0 = time.time()
            self.best.assign(self.dev_scores(dev_feats, dev_refs)["bleu4"])
            self.elapsed.assign_add(time.time() - t0)  # part of the run's time budget too
            scores += f", {float(self.best):.2f} {_decoding(scst_beam)}"
        reward_name = "CIDEr-D" + (f" + {w:g} × BLEU-4" if (w := self.config.scst_bleu_weight) else "")
        log(f"self-critical training ({reward_name} reward) from the best epoch, dev BLEU-4 {scores} "
            "(the bar from here on)")  # fmt: skip

    def self_critical_phase(self, train_feats, reward: CaptionReward, dev_feats, dev_refs, log) -> None:
        """Self-critical epochs until `scst_epochs` or `patience`, or until the time budget stops the run."""
        while (
            int(self.epoch) - int(self.scst_start) < self.config.scst_epochs
            and int(self.bad_epochs) < self.config.patience
        ):
            t0, rng, bar = self._epoch_start()
            rewards = self.scst_epoch(train_feats, reward, rng, bar)
            if not self._end_epoch(f"scst: sampled reward {np.mean(rewards):.3f}", t0, dev_feats, dev_refs, log):
                return

    def _epoch_start(self):
        """The epoch's start time, its random generator (per epoch: a resumed run matches) and its progress bar."""
        from tqdm.auto import tqdm

        t0 = time.time()
        rng = np.random.default_rng(self.config.seed + int(self.epoch))
        bar = lambda items: tqdm(items, desc=f"epoch {int(self.epoch) + 1}", unit="batch", leave=False)  # noqa: E731
        return t0, rng, bar

    def _end_epoch(self, summary: str, t0: float, dev_feats, dev_refs, log) -> bool:
        """Score dev, keep the best weights, checkpoint and log; False when the time budget allows no further epoch."""
        with self.averaged_weights():
            scores = self.dev_scores(dev_feats, dev_refs)
            bleu4 = scores["bleu4"]
            improved = bleu4 > float(self.best)
            if improved:
                self.decoder.save_weights(self.run_dir / BEST_WEIGHTS)
                if self.top is not None:
                    self.top.save_weights(self.run_dir / BEST_TOP_WEIGHTS)
        self.epoch.assign_add(1)
        if improved:
            self.best.assign(bleu4)
            self.bad_epochs.assign(0)
        else:
            self.bad_epochs.assign_add(1)
        seconds = time.time() - t0
        self.elapsed.assign_add(seconds)
        self.manager.save()
        log(f"epoch {int(self.epoch)}: {summary}, dev BLEU-4 {bleu4:.2f}{' (best)' if improved else ''}, "
            f"CIDEr-D {scores['cider']:.3f}, {seconds:.0f}s")  # fmt: skip
        # Stop before an epoch as long as this one would end past the budget, not after it.
        if (float(self.elapsed) + seconds) / 60 > self.config.time_budget_minutes:
            log(f"time budget: {float(self.elapsed) / 60:.1f} of {self.config.time_budget_minutes:g} min used, "
                f"no time for another {seconds:.0f}s epoch")  # fmt: skip
            return False
        return True


def _decoding(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


@dataclass(frozen=True)
class Mirrored:
    """The training images mirrored left to right: their feature grids and their captions with sides swapped."""

    features: np.ndarray  # (N, H, W, C), rows as the training features
    tokens: np.ndarray  # (N, 5, L), as the training caption ids, "left" <-> "right"
