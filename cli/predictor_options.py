"""The AdaptiveClick predictor's options, shared by ``predict`` and ``evaluate`` with the defaults ``serve`` uses,
so that what a user measures is what they serve."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from model.refine import DEFAULT_FLIP, DEFAULT_REFINE, REFINE_HELP
from model.runtime import DEFAULT_RUNTIME, RUNTIME_HELP, RUNTIMES

if TYPE_CHECKING:  # model.predictor imports torch: only when a command runs
    from model.predictor import Predictor


def add_predictor_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--checkpoint",
        default=None,
        help="weights file (default: what serve serves: MODEL_CHECKPOINT or "
        "MODEL_DIR's current version, else the starter in weights/)",
    )
    add(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_FLIP,
        help="horizontal-flip test-time augmentation: a second forward per click (default: %(default)s, what serve "
        "uses)",
    )
    add(
        "--no-zoom-in",
        "--no-zoom",
        dest="no_zoom_in",
        action="store_true",
        help="always run on the whole image (no zoom-in crop from the second click)",
    )
    add("--refine", default=DEFAULT_REFINE, help=REFINE_HELP)
    add("--runtime", default=DEFAULT_RUNTIME, choices=RUNTIMES, help=RUNTIME_HELP)
    add("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    add("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="inference precision (default fp32)")
    add(
        "--target-size",
        type=int,
        default=None,
        help="network input side (default: the model's own, e.g. 448; 672 for DAVIS)",
    )
    add(
        "--threshold",
        "--pred-threshold",
        dest="threshold",
        type=float,
        default=None,
        help="probability -> mask threshold (default: the predictor's own, 0.49 for AdaptiveClick)",
    )


def checkpoint(args: argparse.Namespace) -> Path:
    """``--checkpoint``, else what ``serve`` would serve with this environment."""
    if args.checkpoint:
        return Path(args.checkpoint)
    from ml_backend.config import Settings
    from ml_backend.finetuning.model_store import served_checkpoint

    return served_checkpoint(Settings.from_env())[1]


def build_predictor(args: argparse.Namespace) -> Predictor:
    """The AdaptiveClick predictor these options describe (a bad checkpoint fails here, before any work)."""
    from model.checkpoint import load_model
    from model.device import resolve_device
    from model.predictor import Predictor

    device = resolve_device(args.device)
    predictor = Predictor(
        load_model(checkpoint(args), device),
        device=device,
        dtype=args.dtype,
        flip=args.flip,
        zoom_in=not args.no_zoom_in,
        target_size=args.target_size,
        refine=args.refine,
        runtime=args.runtime,
    )
    if args.threshold is not None:
        predictor.threshold = args.threshold
    return predictor
