"""``adaptiveclick export``: a Label Studio JSON export -> a YOLO segmentation or COCO instance dataset.

    adaptiveclick export --from-json LS_EXPORT.json | --project ID  --format yolo-seg|coco|coco-cvat  --out DIR
        [--images DIR | --download] [--classes A,B] [--image-key KEY] [--tolerance PX]

The conversion is ``ml_backend/labelstudio/export.py``; this module parses the arguments and prints the summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import CommandError

SHOWN = 50  # lines naming what was left out, at most (then a count)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="convert Label Studio brush and polygon annotations to YOLO segmentation or COCO",
        description="Convert a Label Studio 'JSON' export (brushlabels and polygonlabels results) into a YOLO "
        "segmentation dataset (labels/, images/, data.yaml) or COCO instance segmentation (annotations.json, "
        "images/). See docs/export.md.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-json", metavar="FILE", help="Label Studio's JSON export of a project")
    source.add_argument(
        "--project", type=int, metavar="ID", help="download the export of project ID (LABEL_STUDIO_URL/_API_KEY)"
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=("yolo-seg", "coco", "coco-cvat"),
        dest="fmt",
        help="output format (coco-cvat: COCO laid out as CVAT's 'COCO 1.0' import reads it)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--images", metavar="DIR", help="copy images found by file name in DIR (only there)")
    images.add_argument(
        "--download", action="store_true", help="download images from Label Studio (default with --project)"
    )
    parser.add_argument("--classes", metavar="A,B", help="class order, comma-separated (default: label names sorted)")
    parser.add_argument(
        "--image-key", metavar="KEY", help="the task data key of the image (default: 'image' or the only one)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        metavar="PX",
        help="polygon simplification in pixels for brush masks (default POLYGON_TOLERANCE_PX)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ml_backend.config import Settings
    from ml_backend.labelstudio.export import (
        download_project_export,
        export_dataset,
        fetched_images,
        local_images,
        parse_export,
    )

    settings = Settings.from_env()
    if args.tolerance is not None and not args.tolerance >= 0:
        raise CommandError(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.from_json:
        try:
            data = Path(args.from_json).read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read --from-json {args.from_json}: {exc.strerror or exc}") from None
    else:
        data = download_project_export(settings, args.project)
    tasks = parse_export(data, image_key=args.image_key)
    if args.images:
        read_image = local_images(args.images, settings.max_image_bytes)
    elif args.download or args.project is not None:
        read_image = fetched_images(settings)
    else:
        read_image = None
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    summary = export_dataset(
        tasks,
        args.out,
        fmt=args.fmt,
        settings=settings,
        classes=classes,
        read_image=read_image,
        tolerance_px=args.tolerance,
    )
    what = "lines" if args.fmt == "yolo-seg" else "annotations"
    print(
        f"{args.out}: {summary.tasks} task(s), {summary.objects} {what}, {summary.images} image(s) copied; "
        f"classes {summary.classes}"
    )
    if args.fmt == "coco-cvat":
        print(f"for CVAT: zip what is inside {args.out} and upload it as 'COCO 1.0' (docs/cvat.md)")
    if read_image is None:
        print("images not copied: give --images DIR (files named as in the export) or --download")
    if summary.missing_images:
        print(f"{len(summary.missing_images)} image(s) missing, first: {summary.missing_images[0]}")
    for line in summary.missing_images[:SHOWN]:  # one line per image left out, naming it and why
        print(f"image not copied: {line}")
    for line in summary.skipped_regions[:SHOWN]:
        print(f"region left out: {line}")
    for count, what in ((len(summary.missing_images), "image(s)"), (len(summary.skipped_regions), "region(s)")):
        if count > SHOWN:
            print(f"... {count - SHOWN} more {what} left out")
    if summary.skipped_results:
        print("left out (not brush or polygon): " + ", ".join(f"{n} {t}" for t, n in summary.skipped_results.items()))
    return 0
