"""The photo-library job on Ray Data: the file list as a dataset, mapped by a pool of actors each holding the model.

The driver resolves and verifies the model (bundled, directory or a pinned Hub commit from its cache) and puts its files
in Ray's object store, so workers need neither the Hub nor a shared model folder: each node fetches the files once,
each actor checks them against the manifest and loads them. Image paths must resolve on the workers (local Ray, or
the same mount on every node). Rows stream back to the driver, which writes them as they arrive.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from captioner.errors import CaptionerError

INSTALL_HINT = 'pip install -e ".[scale]"'


def import_ray():
    """Ray with Ray Data, or a one-line CaptionerError saying how to install them."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise CaptionerError(f"--engine ray needs Ray Data, an optional extra: {INSTALL_HINT}") from e
    return ray


class CaptionActor:
    """One loaded model on a Ray worker: a batch of image paths in, a batch of JSON result rows out."""

    def __init__(self, model_files: list, decoding: dict, threads: int):
        from captioner.features import use_onednn

        use_onednn()  # before TensorFlow loads: batched backbone ~2x faster on AVX2-only CPUs
        import ray
        import tensorflow as tf

        from captioner.pipeline import Captioner, Decoding

        try:  # as many TensorFlow threads as CPUs reserved for this actor, so actors on a node do not fight
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # a reused worker whose TensorFlow already started keeps its threads
        files = ray.get(model_files[0])  # fetched once per node, then shared by its actors
        self._dir = tempfile.TemporaryDirectory(prefix="captioner-model-")
        for name, data in files.items():
            (Path(self._dir.name) / name).write_bytes(data)
        self.model = Captioner.load(self._dir.name)  # checks the files against the model's manifest
        self.decoding = Decoding(**decoding)
        self.threads = threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from captioner.library import caption_paths

        paths = [str(p) for p in batch["image"]]
        rows = caption_paths(self.model, paths, self.decoding, batch_size=len(paths), threads=self.threads)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}


def caption_paths_ray(
    model_dir: str | Path,
    paths: Sequence[str],
    decoding,
    batch_size: int,
    workers: int | None = None,
    address: str | None = None,
    cpus_per_worker: int = 1,
) -> Iterator[dict]:
    """One result row per path (in no fixed order) from `workers` actors on Ray; starts a local Ray if none runs.

    `address`: None starts a local Ray for this job (stopped after it); "auto" or ray://HOST:PORT joins a cluster.
    `workers` None: as many actors as the cluster's CPUs allow at `cpus_per_worker` each.
    """
    from captioner.files import published_files

    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        _init(ray, address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command's own bar counts rows as they are written
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        model_dir = Path(model_dir)
        files_ref = ray.put({n: (model_dir / n).read_bytes() for n in published_files(model_dir)})
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
        dataset = ray.data.from_items([{"image": p} for p in paths]).map_batches(
            CaptionActor,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={
                # In a list, so the actor spec holds a reference, not a 20 MB argument (which Ray would also
                # warn cannot be rebuilt for an actor restart); the driver keeps it alive while the job runs.
                "model_files": [files_ref],
                "decoding": dataclasses.asdict(decoding),
                "threads": cpus_per_worker,
            },
            num_cpus=cpus_per_worker,
            runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}},
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield from (json.loads(r) for r in batch["row"])
    finally:
        if started:
            ray.shutdown()


def _init(ray, address: str | None) -> None:
    """Start a local Ray (tried twice: on a busy CPU its agents can miss their 30 s start-up deadline) or connect."""
    where = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
    for attempt in (1, 2):
        try:
            # Worker output (TensorFlow's start-up lines) stays in Ray's logs; actor errors still reach the driver.
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            return
        except Exception as e:  # Ray raises ConnectionError, RuntimeError or its own types, with long texts
            ray.shutdown()
            if address or attempt == 2:
                raise CaptionerError(f"Could not {where}: {str(e).strip().splitlines()[-1]}") from e
