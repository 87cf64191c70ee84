"""``adaptiveclick predict``: clicks on an image file -> mask PNG (and optionally the probabilities, an overlay)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CommandError
from .predictor_options import add_predictor_arguments, build_predictor, checkpoint


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


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` (left, top, right, bottom edges in pixels) -> the four numbers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} must be four numbers X0,Y0,X1,Y1") from None
    return x0, y0, x1, y1


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


def add_parser(subparsers: Any) -> None:
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
        default=[],
        metavar="ROW,COL[,neg]",
        help="a click in pixels; repeat for more; ',neg' marks a background click",
    )
    parser.add_argument(
        "--box",
        type=parse_box,
        default=None,
        metavar="X0,Y0,X1,Y1",
        help="a box around the object (left, top, right, bottom edges in pixels) as the first prompt; "
        "--click then refines it",
    )
    add_predictor_arguments(parser)
    parser.add_argument("--out", required=True, help="output mask PNG (0/255)")
    parser.add_argument("--prob", help="also save the final float32 probability map (.npy)")
    parser.add_argument("--overlay", help="also save the image with the mask and clicks drawn on it")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import cv2

    from model.images import read_rgb

    if not args.click and args.box is None:
        raise CommandError("give at least one --click or a --box")
    image = read_rgb(args.image)
    predictor = build_predictor(args)
    predictor.set_image(image)
    if args.box is not None:
        predictor.set_box(*args.box)
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
    prompt = f"{len(args.click)} click(s)" if args.box is None else f"a box and {len(args.click)} click(s)"
    print(f"{out}: {int(mask.sum())} of {mask.size} pixels after {prompt} ({checkpoint(args)})")
    return 0
