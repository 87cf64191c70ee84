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
import difflib
import sys
from collections.abc import Sequence

from .errors import CommandError


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adaptiveclick")
    except PackageNotFoundError:
        return "0+unknown"


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose commands report a misspelled option by name, with its nearest match, in their
    own usage. ``add_subparsers`` gives every command parser its parent's class, so each command gets this.

    Plain argparse reports ``--clik`` as a missing ``--click`` (its required check runs first), and an unknown
    option after a command in the top-level usage (the command passes unknown arguments up)."""

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._subparsers is not None:  # the options after a subcommand are its parser's to judge
            return super().parse_known_args(args, namespace)
        tokens = list(sys.argv[1:] if args is None else args)
        for token in tokens[: tokens.index("--")] if "--" in tokens else tokens:
            self._reject_unknown_option(token)
        namespace, extras = super().parse_known_args(tokens, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def _reject_unknown_option(self, token: str) -> None:
        if not token.startswith("-") or token == "-" or self._negative_number_matcher.match(token):
            return
        name = token.split("=", 1)[0]
        known = list(self._option_string_actions)
        if name in known or (name.startswith("--") and any(option.startswith(name) for option in known)):
            return  # argparse accepts a unique prefix of a long option (and reports an ambiguous one itself)
        near = difflib.get_close_matches(name, known, n=1)
        self.error(f"unrecognized option {name}" + (f" (did you mean {near[0]}?)" if near else ""))


def build_parser() -> argparse.ArgumentParser:
    """The ``adaptiveclick`` parser with every command registered."""
    from . import backend, evaluate, export, predict, train, weights

    parser = CommandParser(prog="adaptiveclick", description="AdaptiveClick interactive segmentation")
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
