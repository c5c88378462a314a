"""The decoding options `captioner caption` and `captioner evaluate` share: their flags and their checked values."""

from __future__ import annotations

import argparse

# Not via captioner.pipeline: TensorFlow must not load before `captioner caption` picks its oneDNN setting.
from captioner.consensus import MAX_CONSENSUS
from captioner.errors import CaptionerError

TUNED = "default: as the model was tuned on dev"


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Beam size, α, repeat blocking and consensus reranking; each left out is the model's tuned value."""
    parser.add_argument("--beam", type=int, default=None, help=f"beam size ({TUNED})")
    parser.add_argument("--length-penalty", type=float, default=None, help=f"α ({TUNED})")
    parser.add_argument(
        "--block-repeats",
        action=argparse.BooleanOptionalAction,
        help=f"never repeat a three-word phrase within a caption ({TUNED})",
    )
    parser.add_argument(
        "--consensus",
        type=int,
        default=None,
        metavar="K",
        help="rerank the beam's n-best by agreement with the captions of the K most similar training photos; "
        f"0 turns it off ({TUNED})",
    )
    parser.add_argument(
        "--consensus-weight",
        type=float,
        default=None,
        metavar="W",
        help=f"weight of the beam score beside that agreement ({TUNED})",
    )


def decoding_overrides(args: argparse.Namespace) -> dict:
    """The decoding settings given on the command line (None: the model's tuned one), checked."""
    if args.consensus is not None and not 0 <= args.consensus <= MAX_CONSENSUS:
        raise CaptionerError(f"Expected --consensus between 0 and {MAX_CONSENSUS} photos. Received: {args.consensus}.")
    if args.consensus_weight is not None and args.consensus_weight < 0:
        raise CaptionerError(f"Expected a --consensus-weight of at least 0. Received: {args.consensus_weight}.")
    return {
        "beam_size": args.beam, "length_penalty": args.length_penalty, "block_repeats": args.block_repeats,
        "consensus": args.consensus, "consensus_weight": args.consensus_weight,
    }  # fmt: skip
