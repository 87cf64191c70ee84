"""``adaptiveclick evaluate``: the standard NoC protocol (``model.evaluation``) from the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from model.evaluation.datasets import InteractiveDataset, default_data_root, load_dataset
from model.evaluation.grabcut import GrabCutPredictor
from model.evaluation.report import (
    COMPARE_PLOT_FILE,
    PLOT_FILE,
    build_results,
    format_table,
    load_results,
    plot_mean_iou,
    write_results,
)
from model.evaluation.runner import FIRST_INTERACTIONS, evaluate_dataset
from model.interactive import BoxPromptPredictor, InteractivePredictor
from model.refine import Refinement

from .predictor_options import add_predictor_arguments, build_predictor, checkpoint

METHODS = ("adaptiveclick", "grabcut")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets",
        default="GrabCut,Berkeley",
        help="comma-separated dataset names or folders; NAME:val is a training folder's validation "
        "split, NAME:train the rest (default %(default)s)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"folder holding the datasets (default: $ADAPTIVECLICK_DATA, else {default_data_root()})",
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
    add_predictor_arguments(parser)
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="adaptiveclick",
        help="adaptiveclick, or grabcut: the OpenCV baseline (default %(default)s)",
    )
    parser.add_argument(
        "--first",
        default="click",
        help="the first interaction, comma-separated to run several protocols in one run: click (the standard "
        "protocol), box (the object's tight bounding box, then robot clicks; rows 'NAME [box first]') "
        "(default %(default)s)",
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


def data_root(args: argparse.Namespace) -> Path:
    return Path(args.data_root or os.environ.get("ADAPTIVECLICK_DATA", "").strip() or default_data_root())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `evaluate` sub-command on an `argparse` subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="NoC@85/90 evaluation with the robot clicker",
        description="Evaluate a click-based segmenter with the standard NoC protocol.",
    )
    _add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def parse_thresholds(text: str) -> list[float]:
    try:
        thresholds = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--iou: expected comma-separated numbers, got {text!r}") from error
    if not thresholds or not all(0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"--iou: thresholds must lie in (0, 1], got {text!r}")
    return thresholds


def parse_first(text: str) -> list[str]:
    firsts = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [first for first in firsts if first not in FIRST_INTERACTIONS]
    if not firsts or unknown:
        raise ValueError(f"--first: expected comma-separated {' / '.join(FIRST_INTERACTIONS)}, got {text!r}")
    return list(dict.fromkeys(firsts))


def build(args: argparse.Namespace) -> InteractivePredictor:
    if args.method == "adaptiveclick":
        return build_predictor(args)
    predictor = GrabCutPredictor()
    if args.threshold is not None:
        predictor.threshold = args.threshold
    return predictor


def _settings(args: argparse.Namespace, predictor: InteractivePredictor) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "stop_iou": args.stop_iou,
        "first": args.first,
        "threshold": predictor.threshold,
        "limit": args.limit,
        "data_root": str(data_root(args)),
    }
    if args.method == "adaptiveclick":
        settings.update(
            checkpoint=str(checkpoint(args)),
            flip=args.flip,
            zoom_in=not args.no_zoom_in,
            device=args.device or "auto",
            dtype=args.dtype,
            target_size=args.target_size or "native",
            refine=Refinement.parse(args.refine).spec,
            runtime=args.runtime,
        )
    return settings


def _run_compare(args: argparse.Namespace) -> int:
    runs = [load_results(path) for path in args.compare]
    sources = [str(path) for path in args.compare]
    plot_path = plot_mean_iou(runs, Path(args.out) / COMPARE_PLOT_FILE, sources)
    print(format_table(runs, sources))
    print(f"plot: {plot_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Evaluate (or compare, with --compare) and write results.json, the plot and the table."""
    if args.compare:
        return _run_compare(args)
    thresholds = parse_thresholds(args.iou)
    if args.max_clicks < 1:
        raise ValueError(f"--max-clicks must be at least 1, got {args.max_clicks}")
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    if not names:
        raise ValueError("--datasets: give at least one dataset name")
    firsts = parse_first(args.first)
    datasets: dict[str, InteractiveDataset] = {name: load_dataset(name, data_root(args)) for name in names}
    predictor = build(args)  # a bad checkpoint is reported before any work
    if "box" in firsts and not isinstance(predictor, BoxPromptPredictor):
        raise ValueError(f"--first box: the {args.method} method takes no box")
    per_dataset = {}
    for name, dataset in datasets.items():
        for first in firsts:
            key = name if first == "click" else f"{name} [{first} first]"
            per_dataset[key] = evaluate_dataset(
                predictor,
                dataset,
                max_clicks=args.max_clicks,
                stop_iou=args.stop_iou,
                limit=args.limit,
                desc=f"{args.method} {key}",
                progress=not args.no_progress,
                first=first,
            )
    results = build_results(
        args.method,
        _settings(args, predictor),
        per_dataset,
        thresholds,
        args.max_clicks,
        dataset_paths={key: str(datasets[key.split(" [")[0]].root) for key in per_dataset},
    )
    results_path = write_results(results, args.out)
    plot_path = plot_mean_iou([results], Path(args.out) / PLOT_FILE)
    print(format_table([results]))
    print(f"results: {results_path}\nplot: {plot_path}")
    return 0
