"""Model-side commands of ``adaptiveclick`` (``predict``, ``evaluate``, ``train``, ...).

``ml_backend.cli`` adds ``serve`` on top of :func:`build_parser`; this module never imports web code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .refine import DEFAULT_FLIP, DEFAULT_REFINE, REFINE_HELP


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_click(text: str) -> tuple[int, int, bool]:
    """``ROW,COL`` or ``ROW,COL,neg`` (also ``pos``) -> (row, col, positive)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"click {text!r} must be ROW,COL or ROW,COL,neg")
    try:
        row, col = int(float(parts[0])), int(float(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"click {text!r}: ROW and COL must be numbers") from None
    kind = parts[2].lower() if len(parts) == 3 else "pos"
    if kind not in ("pos", "neg", "+", "-"):
        raise argparse.ArgumentTypeError(f"click {text!r}: the third field must be 'pos' or 'neg'")
    return row, col, kind in ("pos", "+")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB (8- or 16-bit, grayscale and alpha handled by the predictor)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise CommandError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CommandError(f"cannot decode {path} as an image")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def overlay(image: np.ndarray, mask: np.ndarray, clicks: list[tuple[int, int, bool]]) -> np.ndarray:
    """Mask tinted over the image with click markers (green positive, red negative); RGB uint8."""
    import cv2

    out = image.astype(np.float32)
    tint = np.array([30, 144, 255], dtype=np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * tint
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    radius = max(3, round(max(image.shape[:2]) / 150))
    for row, col, positive in clicks:
        color = (40, 220, 40) if positive else (230, 40, 40)
        cv2.circle(out, (col, row), radius, color, -1)
        cv2.circle(out, (col, row), radius, (0, 0, 0), 1)
    return out


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment an object from clicks",
        description="Apply clicks one after another, as an annotator would (each click sees the previous mask).",
    )
    parser.add_argument("image", help="input image (any format OpenCV reads)")
    parser.add_argument(
        "--click",
        action="append",
        type=parse_click,
        required=True,
        metavar="ROW,COL[,neg]",
        help="a click in pixels; repeat for more; ',neg' marks a background click",
    )
    parser.add_argument("--checkpoint", help="weights file (default: the starter model in weights/)")
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_FLIP,
        help="horizontal-flip test-time augmentation: a second forward per click (default: "
        "%(default)s, what serve uses)",
    )
    parser.add_argument(
        "--no-zoom-in",
        "--no-zoom",
        dest="no_zoom",
        action="store_true",
        help="always run on the whole image (no zoom-in crop)",
    )
    parser.add_argument("--refine", default=DEFAULT_REFINE, help=REFINE_HELP)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="inference precision")
    parser.add_argument("--threshold", type=float, default=0.49, help="probability threshold of the mask")
    parser.add_argument("--out", required=True, help="output mask PNG (0/255)")
    parser.add_argument("--prob", help="also save the final float32 probability map (.npy)")
    parser.add_argument("--overlay", help="also save the image with the mask and clicks drawn on it")
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    import cv2

    from .checkpoint import load_model
    from .predictor import Predictor

    image = read_image(args.image)
    model = load_model(args.checkpoint, args.device)
    predictor = Predictor(
        model,
        device=args.device,
        dtype=args.dtype,
        flip=args.flip,
        zoom_in=not args.no_zoom,
        threshold=args.threshold,
        refine=args.refine,
    )
    predictor.set_image(image)
    for row, col, positive in args.click:
        predictor.add_click(row, col, positive)
    mask = predictor.mask
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), mask.astype(np.uint8) * 255):
        raise CommandError(f"could not write {out} (is the extension an image format?)")
    if args.prob:
        np.save(args.prob, predictor.probs.astype(np.float32))
    if args.overlay:
        drawn = overlay(predictor.image, mask, args.click)
        cv2.imwrite(str(args.overlay), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    print(f"{out}: {int(mask.sum())} of {mask.size} pixels after {len(args.click)} click(s)")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The ``adaptiveclick`` parser with the model commands; callers may add more subcommands."""
    from .evaluation.command import add_evaluate_parser
    from .training import add_train_parser
    from .weights import add_weights_parser

    parser = argparse.ArgumentParser(prog="adaptiveclick", description="AdaptiveClick interactive segmentation")
    parser.add_argument("--version", action="version", version=f"adaptiveclick {_package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_predict_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_train_parser(subparsers)
    add_weights_parser(subparsers)
    return parser, subparsers


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen command, and turn user errors into one-line messages (exit 2)."""
    from .checkpoint import CheckpointError

    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except (CommandError, CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"adaptiveclick {args.command}: error: {error}", file=sys.stderr)
        return 2


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adaptiveclick")
    except PackageNotFoundError:
        return "0+unknown"


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--click -5,100`` -> ``--click=-5,100``: argparse takes a value that starts with '-' for an option."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if (
            out
            and out[-1] == "--click"
            and arg.startswith("-")
            and len(arg) > 1
            and (arg[1].isdigit() or arg[1] == ".")
        ):
            out[-1] = f"--click={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
