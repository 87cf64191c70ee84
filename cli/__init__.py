"""The ``adaptiveclick`` command line: one parser for every command, above both libraries.

    adaptiveclick predict | evaluate | train | weights     model commands (cli/predict.py, evaluate.py, train.py,
                                                          weights.py): the library in model/
    adaptiveclick serve | worker | versions               the Label Studio ML backend (cli/backend.py): ml_backend/
    adaptiveclick export                                  Label Studio exports -> YOLO / COCO (cli/export.py)

This package is the only place that parses arguments; ``model/`` and ``ml_backend/`` never import it, and
``model/`` reads no environment variable (the backend's settings come from ``ml_backend.config``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import CommandError


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adaptiveclick")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``adaptiveclick`` parser with every command registered."""
    from . import backend, evaluate, export, predict, train, weights

    parser = argparse.ArgumentParser(prog="adaptiveclick", description="AdaptiveClick interactive segmentation")
    parser.add_argument("--version", action="version", version=f"adaptiveclick {_package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    predict.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    train.add_parser(subparsers)
    weights.add_parser(subparsers)
    backend.add_parsers(subparsers)
    export.add_parser(subparsers)
    return parser


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--click -5,100`` -> ``--click=-5,100``: argparse takes a value that starts with '-' for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--click" and len(arg) > 1 and arg[0] == "-" and (arg[1].isdigit() or arg[1] == "."):
            out[-1] = f"--click={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the chosen command, and turn user errors into one-line messages (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"adaptiveclick {args.command}: error: {error}", file=sys.stderr)
        return 2


def _is_user_error(error: Exception) -> bool:
    """Errors whose message tells the user what to fix (imported only now: ``serve`` never imports torch)."""
    from model.checkpoint import CheckpointError
    from model.weights import DownloadError

    return isinstance(error, (CommandError, CheckpointError, DownloadError, ValueError, FileNotFoundError))
