"""The model card: the `README.md` a model directory publishes, built with huggingface_hub's ModelCard."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.errors import ModelError
from captioner.files import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    IMAGENET_STAGES_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    sha256_file,
)
from captioner.hub.failures import brief

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

DATASET_ID = "jxie/flickr8k"  # Flickr8k on the Hub (official 6000/1000/1000 split), for the card's metadata
LICENSE = "apache-2.0"  # the package's and the backbone weights' license; Flickr8k's own terms are in Limitations
_CITATION = (
    'M. Hodosh, P. Young and J. Hockenmaier (2013), "Framing Image Description as a Ranking Task: Data, Models '
    'and Evaluation Metrics", Journal of Artificial Intelligence Research (JAIR) 47:853–899.'
)
_BIBTEX = """@article{hodosh2013framing,
  title   = {Framing Image Description as a Ranking Task: Data, Models and Evaluation Metrics},
  author  = {Hodosh, Micah and Young, Peter and Hockenmaier, Julia},
  journal = {Journal of Artificial Intelligence Research},
  volume  = {47},
  pages   = {853--899},
  year    = {2013}
}"""


def _labels() -> tuple[tuple[str, str], ...]:
    from captioner.metrics import METRIC_LABELS  # here: it imports nltk and numpy, which fetching a model never needs

    return tuple(METRIC_LABELS.items())


def _model_name(config: Mapping[str, object], repo_id: str | None) -> str:
    """The repository's name, else one built from the architecture (`captioner-efficientnet-lite2-lstm384`)."""
    if repo_id:
        return repo_id.split("/")[-1]
    return f"captioner-{config.get('backbone', 'unknown')}-lstm{config.get('units', '')}".replace("_", "-")


def _load_json(path: Path, *, required: bool) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        if not required:
            return None
        raise ModelError(f"Expected {path} (the model's JSON); it does not exist.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not readable JSON ({brief(e)}).") from e
    if not isinstance(data, dict):
        raise ModelError(f"Expected {path} to hold a JSON object. Received {type(data).__name__}.")
    return data


def _decoding_label(kind: str, decoding: Mapping[str, object]) -> str:
    blocked = ", repeated trigrams blocked" if decoding.get("block_repeats") else ""
    if kind == "greedy":
        return f"greedy{blocked}"
    if not kind.startswith("beam"):
        return kind
    size = decoding.get("beam_size", "?") if kind == "beam" else kind.removeprefix("beam")  # "beam3": beam size 3
    k = decoding.get("consensus")
    reranked = f", reranked by {k} similar training photos" if isinstance(k, int) and k > 0 else ""
    return f"beam {size}, length penalty {decoding.get('length_penalty', '?')}{blocked}{reranked}"


def _score(value: object, key: str) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.3f}" if key == "cider" else f"{value:.2f}"


def _eval_results(metrics: Mapping[str, object]) -> list[EvalResult]:
    from huggingface_hub import EvalResult

    decoding = metrics.get("decoding") if isinstance(metrics.get("decoding"), Mapping) else {}
    corpus = metrics.get("corpus") if isinstance(metrics.get("corpus"), Mapping) else {}
    return [
        EvalResult(
            task_type="image-to-text",
            task_name="Image captioning",
            dataset_type=DATASET_ID,
            dataset_name="Flickr8k",
            dataset_split="test",
            metric_type="cider" if key == "cider" else "bleu",
            metric_name=f"{label} ({_decoding_label(kind, decoding)})",
            metric_value=round(float(scores[key]), 3 if key == "cider" else 2),
        )
        for kind, scores in corpus.items()
        if isinstance(scores, Mapping)
        for key, label in _labels()
        if isinstance(scores.get(key), int | float)
    ]


def _score_table(block: Mapping[str, object], decoding: Mapping[str, object]) -> str:
    labels = _labels()
    rows = ["| Decoding | " + " | ".join(label for _, label in labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for kind, scores in block.items():
        if isinstance(scores, Mapping):
            cells = " | ".join(_score(scores.get(key), key) for key, _ in labels)
            rows.append(f"| {_decoding_label(kind, decoding)} | {cells} |")
    return "\n".join(rows)


def _cell(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|")


def _size(value: object) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}×{value[1]}"
    return f"{value}×{value}" if isinstance(value, int) else str(value)


_ATTENTION_NAMES = {"additive": "additive (Bahdanau)", "dot": "scaled dot-product", "multihead": "multi-head"}


def _decoder_text(config: Mapping[str, object]) -> str:
    units, attention = config.get("units", "?"), config.get("attention_units", "?")
    gate = ", gated" if config.get("attention_gate") else ""
    kind = _ATTENTION_NAMES.get(str(config.get("attention", "additive")), str(config.get("attention")))
    return (
        f"an attention LSTM ({units} units, started from the mean image region) queries {kind} "
        f"attention ({attention} units{gate}) over the grid regions; a language LSTM ({units} units) turns the "
        f"attended context into next-word probabilities over {config.get('vocab_size', '?')} words "
        f"({config.get('embed_dim', '?')}-d word embeddings)"
    )


def _ensemble_text(model_dir: Path, config: Mapping) -> str:
    """The card's line on an ensemble's further decoders and the stages each carries ("" for a single model)."""
    ensemble = _load_json(model_dir / ENSEMBLE_FILE, required=False) or {}
    members = ensemble.get("members") if isinstance(ensemble.get("members"), list) else []
    members = [m for m in members if isinstance(m, Mapping)]
    if not members:
        return ""
    stages = [_stages(config), *(_stages(m.get("config")) for m in members)]
    averaged = "beam search averages their next-word probabilities (and attention maps) at every step"
    if not any(stages):
        files = ", ".join(f"`{m.get('weights')}`" for m in members)
        return (
            f"- **Ensemble:** {len(members) + 1} decoders share the one backbone pass; {averaged}. The further "
            f"decoders are {files}, listed in `{ENSEMBLE_FILE}` with their configs.\n"
        )
    carries = [f"its own {n} fine-tuned top stage(s)" if n else "the ImageNet top stages" for n in stages]
    parts = [
        f"`{WEIGHTS_FILE}` holds the first decoder, over {carries[0]}",
        *(f"`{m.get('weights')}` a decoder and {c}" for m, c in zip(members, carries[1:], strict=True)),
    ]
    return (
        f"- **Ensemble:** {len(members) + 1} decoders; {averaged}. They share one backbone pass up to the cut "
        f"before its last {max(stages)} stage(s), and each runs its own top stages from there (ImageNet's where it "
        f"fine-tuned fewer, from `{IMAGENET_STAGES_FILE}`): {'; '.join(parts)}. `{ENSEMBLE_FILE}` lists the further "
        "members with their configs.\n"
    )


def _stages(config: object) -> int:
    """How many top stages a config says were fine-tuned (0 when it says nothing sensible)."""
    stages = config.get("tuned_stages") if isinstance(config, Mapping) else None
    return stages if isinstance(stages, int) and stages > 0 else 0


def _tuned_text(config: Mapping) -> str:
    """The card's words on fine-tuned backbone stages ("" for a backbone used as ImageNet trained it)."""
    stages = _stages(config)
    if not stages:
        return ""
    return (
        f" Its last {stages} stage(s) were fine-tuned on Flickr8k with the decoder (BatchNorm kept at ImageNet's "
        f"statistics); their original ImageNet weights ship as `{IMAGENET_STAGES_FILE}`, for the ImageNet view."
    )


def model_card(model_dir: str | os.PathLike[str], repo_id: str | None = None) -> str:
    """Build the model card (`README.md`: YAML metadata + Markdown) from config.json and metrics.json."""
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = _load_json(model_dir / CONFIG_FILE, required=True) or {}
    metrics = _load_json(model_dir / METRICS_FILE, required=False)
    name = _model_name(config, repo_id)
    repo = repo_id or "OWNER/REPO"
    decoding = (metrics or {}).get("decoding") if isinstance((metrics or {}).get("decoding"), Mapping) else {}
    results = _eval_results(metrics) if metrics else []
    data = ModelCardData(
        model_name=name if results else None,  # the card format names a model only with its results
        license=LICENSE,
        library_name="keras",
        pipeline_tag="image-to-text",
        language=["en"],
        tags=["image-captioning", "keras", "flickr8k", "lstm", "attention"],
        datasets=[DATASET_ID],
        metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=results or None,
    )

    backbone = config.get("backbone", "unknown")
    weights = model_dir / WEIGHTS_FILE
    weights_line = f"`{WEIGHTS_FILE}` sha256: `{sha256_file(weights)}`" if weights.is_file() else f"`{WEIGHTS_FILE}`"
    config_rows = "\n".join(
        f"| `{_cell(k)}` | {_cell(v)} |" for k, v in config.items() if not isinstance(v, dict) or len(str(v)) < 80
    )

    if metrics and isinstance(metrics.get("corpus"), Mapping):
        evaluation = (
            "Corpus BLEU (percent, all five references per image) and CIDEr on the 1,000-image Flickr8k **test** "
            f"split:\n\n{_score_table(metrics['corpus'], decoding)}"
        )
        if isinstance(metrics.get("dev"), Mapping):
            evaluation += f"\n\nOn the dev split (used for tuning):\n\n{_score_table(metrics['dev'], decoding)}"
    else:
        evaluation = (
            "**Not evaluated:** this model directory has no `metrics.json`, so no BLEU scores are reported. "
            "Evaluate it on the test split and push again."
        )

    beam = decoding.get("beam_size", 3)
    penalty = decoding.get("length_penalty", 0.7)
    block = decoding.get("block_repeats") is True
    k, weight = decoding.get("consensus"), decoding.get("consensus_weight", 1.0)
    consensus = k if isinstance(k, int) and k > 0 else 0
    max_length = config.get("max_length") or decoding.get("max_length")
    sections = [
        f"# {name}",
        "An image-captioning model: it writes one English sentence describing a photo, and shows where it "
        "looked for each word. Trained with the `captioner` package (Keras 3) on Flickr8k.",
        "## Architecture",
        f"- **Encoder:** the `{backbone}` convolutional backbone (EfficientNet-Lite, ImageNet-pretrained), input "
        f"{_size(config.get('image_size', '?'))} RGB, giving a {_size(config.get('grid', '?'))} grid of image "
        f"features.{_tuned_text(config)}\n"
        f"- **Decoder:** {_decoder_text(config)}; each caption comes with its per-word attention maps.\n"
        + _ensemble_text(model_dir, config)
        + f"- **Files:** `config.json` (hyper-parameters), `vocab.json` (word list), `{WEIGHTS_FILE}` (all Keras "
        f"weights, backbone included), `metrics.json` (scores), `{MANIFEST_FILE}` (sha256 of every file).",
        f"| Setting | Value |\n|---|---|\n{config_rows}" if config_rows else "",
        "## Training data and split",
        "[Flickr8k](https://huggingface.co/datasets/" + DATASET_ID + ") (Hodosh et al., 2013): 8,091 Flickr "
        "photos with five English captions each, official split — 6,000 train, 1,000 dev, 1,000 test images. "
        "The model was trained on the train split; hyper-parameters and decoding settings were tuned on dev "
        "only; the test split was used once, for the scores below.",
        "## Evaluation",
        evaluation,
        "## Decoding",
        f"Captions are decoded with beam search: beam size {beam}, length penalty {penalty} (finished captions "
        f"ranked by log-probability / length^{penalty})"
        + (f", at most {max_length} words" if max_length else "")
        + (", and no three-word phrase repeated within a caption (greedy too)" if block else "")
        + ". Beam size 1 is greedy decoding."
        + (
            f" The beam's finished captions are then reranked by consensus: each scores its CIDEr-D agreement with "
            f"the captions of the {consensus} most similar training photos (`consensus.npz`, found through "
            f"`familiarity.npz`) plus {weight} × its beam score."
            if consensus
            else ""
        )
        + " The settings were chosen on the dev split.",
        "## How to use",
        "Install the `captioner` package, then load this model by its Hub address. Pin a commit SHA — a branch "
        "or tag works but can move, and `captioner` says so:",
        f'```python\nfrom captioner import Captioner\n\ncap = Captioner.load("hf://{repo}@COMMIT_SHA")\n'
        f'print(cap.caption(["photo.jpg"], beam_size={beam}, length_penalty={penalty}'
        + (", block_repeats=True" if block else "")
        + (f", consensus={consensus}" if consensus else "")
        + ")[0].text)\nprint(cap.info)  # source, commit, "
        "weights sha256\n```",
        f"The command line and the app take the same address: `--model hf://{repo}@COMMIT_SHA`, or "
        f"`CAPTIONER_MODEL=hf://{repo}@COMMIT_SHA`. Files are downloaded once into the Hugging Face cache and "
        f"checked against `{MANIFEST_FILE}`; a mismatch is an error, never loaded. {weights_line}.",
        "## Limitations",
        "- Trained on 6,000 photos of everyday scenes (many people and dogs): it describes unfamiliar content "
        "with generic or wrong captions, and may name objects that are not there.\n"
        "- English only; the vocabulary is limited to words frequent in the training captions.\n"
        "- It inherits the biases of Flickr8k's photos and captions (e.g. gendered words guessed from "
        "appearance).\n"
        "- BLEU and CIDEr measure overlap with five reference captions, not correctness; do not rely on the "
        "captions where errors matter (e.g. accessibility) without human review.\n"
        "- Flickr8k's images come from Flickr; the dataset is meant for research and demonstration, not "
        "commercial use.",
        "## Citation",
        f"Dataset: {_CITATION}",
        f"```bibtex\n{_BIBTEX}\n```",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n")
    return str(card)
