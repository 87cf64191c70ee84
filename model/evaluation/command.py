"""`adaptiveclick evaluate`: the standard NoC protocol from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .datasets import DatasetError, InteractiveDataset, default_data_root, load_dataset
from .grabcut import GrabCutPredictor
from .report import (
    COMPARE_PLOT_FILE,
    PLOT_FILE,
    build_results,
    format_table,
    load_results,
    plot_mean_iou,
    write_results,
)
from .runner import InteractivePredictor, evaluate_dataset
from ..refine import DEFAULT_FLIP, DEFAULT_REFINE, REFINE_HELP, Refinement

METHODS = ("adaptiveclick", "grabcut")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the starter weights)")
    parser.add_argument(
        "--datasets",
        default="GrabCut,Berkeley",
        help="comma-separated dataset names or folders; NAME:val is a training folder's validation "
        "split (default %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"folder holding the datasets (default: $ADAPTIVECLICK_DATA or {default_data_root()})",
    )
    parser.add_argument("--max-clicks", type=int, default=20, help="clicks per instance at most (default %(default)s)")
    parser.add_argument(
        "--iou", default="0.85,0.90", help="IoU thresholds NoC is reported for: NoC@85, NoC@90 (default %(default)s)"
    )
    parser.add_argument(
        "--stop-iou",
        type=float,
        default=0.90,
        help="the robot stops clicking an instance once its IoU reaches this; keep it at the highest "
        "--iou threshold (default %(default)s)",
    )
    parser.add_argument("--pred-threshold", type=float, default=0.49, help="probability -> mask threshold")
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_FLIP,
        help="horizontal-flip test-time augmentation: a second forward per click (default: "
        "%(default)s, what serve uses)",
    )
    parser.add_argument("--no-zoom-in", action="store_true", help="disable the zoom-in crop")
    parser.add_argument("--refine", default=DEFAULT_REFINE, help=REFINE_HELP)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="inference precision")
    parser.add_argument(
        "--target-size",
        type=int,
        default=None,
        help="network input side (default: the model's own, e.g. 448; 672 for DAVIS)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="adaptiveclick",
        help="adaptiveclick, or grabcut: the OpenCV baseline (default %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N instances per dataset")
    parser.add_argument("--out", default="results", help="output folder for results.json and the plot")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        default=None,
        help="plot and tabulate two results files instead of evaluating",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `evaluate` sub-command on an `argparse` subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="NoC@85/90 evaluation with the robot clicker",
        description="Evaluate a click-based segmenter with the standard NoC protocol.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_evaluate)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptiveclick evaluate", description="Evaluate a click-based segmenter with the standard NoC protocol."
    )
    _add_arguments(parser)
    return parser


def parse_thresholds(text: str) -> list[float]:
    try:
        thresholds = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--iou: expected comma-separated numbers, got {text!r}") from error
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"--iou: thresholds must lie in (0, 1], got {text!r}")
    return thresholds


def build_predictor(args: argparse.Namespace) -> InteractivePredictor:
    if args.method == "grabcut":
        return GrabCutPredictor()
    import torch

    from model.checkpoint import load_model
    from model.predictor import Predictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_model(args.checkpoint, device=device)
    return Predictor(
        net,
        device=device,
        dtype=args.dtype,
        flip=args.flip,
        zoom_in=not args.no_zoom_in,
        target_size=args.target_size,
        refine=args.refine,
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "stop_iou": args.stop_iou,
        "pred_threshold": args.pred_threshold,
        "limit": args.limit,
        "data_root": str(args.data_root or default_data_root()),
    }
    if args.method == "adaptiveclick":
        settings.update(
            checkpoint=args.checkpoint or "default",
            flip=args.flip,
            zoom_in=not args.no_zoom_in,
            device=args.device or "auto",
            dtype=args.dtype,
            target_size=args.target_size or "native",
            refine=Refinement.parse(args.refine).spec,
        )
    return settings


def _run_compare(args: argparse.Namespace) -> int:
    runs = [load_results(path) for path in args.compare]
    sources = [str(path) for path in args.compare]
    plot_path = plot_mean_iou(runs, Path(args.out) / COMPARE_PLOT_FILE, sources)
    print(format_table(runs, sources))
    print(f"plot: {plot_path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate (or compare, with --compare) and write results.json, the plot and the table."""
    try:
        if args.compare:
            return _run_compare(args)
        thresholds = parse_thresholds(args.iou)
        if args.max_clicks < 1:
            raise ValueError(f"--max-clicks must be at least 1, got {args.max_clicks}")
        names = [name.strip() for name in args.datasets.split(",") if name.strip()]
        if not names:
            raise ValueError("--datasets: give at least one dataset name")
        datasets: dict[str, InteractiveDataset] = {name: load_dataset(name, args.data_root) for name in names}
    except (DatasetError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    try:
        predictor = build_predictor(args)
    except (FileNotFoundError, ValueError) as error:  # includes model.checkpoint.CheckpointError
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_dataset = {}
    for name, dataset in datasets.items():
        per_dataset[name] = evaluate_dataset(
            predictor,
            dataset,
            max_clicks=args.max_clicks,
            stop_iou=args.stop_iou,
            pred_threshold=args.pred_threshold,
            limit=args.limit,
            desc=f"{args.method} {name}",
            progress=not args.no_progress,
        )
    results = build_results(
        args.method,
        _settings(args),
        per_dataset,
        thresholds,
        args.max_clicks,
        dataset_paths={name: str(dataset.root) for name, dataset in datasets.items()},
    )
    results_path = write_results(results, args.out)
    plot_path = plot_mean_iou([results], Path(args.out) / PLOT_FILE)
    print(format_table([results]))
    print(f"results: {results_path}\nplot: {plot_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point without the sub-command name: `main(['--method', 'grabcut', ...])`."""
    return run_evaluate(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
