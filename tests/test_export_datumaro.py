"""``adaptiveclick export --format coco-cvat`` read by datumaro, the library behind CVAT's "COCO 1.0" import: every
exported mask comes back (IoU >= 0.99 with what the export encodes) and every box is its mask's.

Opt-in: needs PyPI ``datumaro`` in its own environment (``make datumaro`` builds ``.cache/datumaro-venv``; its
pins conflict with this project's numpy), else it skips. ``tests/test_cvat_recorded.py`` replays the real CVAT's
import of such an export."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from ml_backend.config import Settings
from ml_backend.labelstudio.export import export_dataset, parse_export
from ml_backend.masks.rle import mask2rle

REPO = Path(__file__).resolve().parents[1]
DATUMARO_PYTHON = Path(os.environ.get("DATUMARO_PYTHON", REPO / ".cache" / "datumaro-venv" / "bin" / "python"))
H, W = 120, 160


def _disc(centre, radius):
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def _brush(mask, label):
    return {
        "type": "brushlabels",
        "original_width": W,
        "original_height": H,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def _polygon(points, label):
    return {
        "type": "polygonlabels",
        "original_width": W,
        "original_height": H,
        "value": {"points": [[100 * x / W, 100 * y / H] for x, y in points], "polygonlabels": [label]},
    }


def _iou(a, b):
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


def test_the_cvat_layout_reads_back_in_datumaro_with_every_mask_and_box(tmp_path):
    if not DATUMARO_PYTHON.is_file():
        pytest.skip(f"no datumaro environment at {DATUMARO_PYTHON}: run `make datumaro` (opt-in)")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    speck = np.zeros((H, W), bool)
    speck[110:113, 150:153] = True
    ring = _disc((80, 60), 40) & ~_disc((80, 60), 16)
    tasks = [
        {
            "id": 1,
            "data": {"image": "a.png"},
            "annotations": [
                {
                    "id": 1,
                    "result": [
                        _brush(_disc((40, 50), 25) | speck, "cat"),
                        _polygon([(100, 20), (150, 20), (150, 80), (100, 80)], "dog"),
                    ],
                }
            ],
        },
        {
            "id": 2,
            "data": {"image": "b.png"},
            "annotations": [
                {"id": 2, "result": [_brush(ring, "cat"), _brush(_disc((20, 20), 12) | _disc((130, 90), 20), "dog")]}
            ],
        },
    ]
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.full((H, W, 3), 90, np.uint8))
    out = tmp_path / "cvat"
    parsed = parse_export(json.dumps(tasks).encode())
    export_dataset(
        parsed,
        out,
        fmt="coco-cvat",
        settings=Settings.from_env({}),
        read_image=lambda t: (images / t.image_ref).read_bytes(),
    )
    run = subprocess.run(
        [str(DATUMARO_PYTHON), str(REPO / "scripts" / "datumaro_read.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    items = {item["id"]: item for item in json.loads(run.stdout)["items"]}
    coco = COCO(str(out / "annotations" / "instances_default.json"))
    assert sorted(items) == ["1_a", "2_b"] and all(Path(i["media"]).is_file() for i in items.values())
    read = 0
    for image in coco.loadImgs(coco.getImgIds()):
        item = items[Path(image["file_name"]).stem]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
            exported = coco.annToMask(ann).astype(bool)  # what the export encodes
            parts = [a for a in item["anns"] if a["group"] == ann["id"] and "mask" in a]
            boxes = [a for a in item["anns"] if a["group"] == ann["id"] and a["type"] == "bbox"]
            imported = np.zeros((H, W), bool)
            for part in parts:
                imported |= mask_utils.decode(dict(part["mask"], counts=part["mask"]["counts"].encode())).astype(bool)
            assert _iou(imported, exported) >= 0.99, (image["file_name"], ann["id"])
            rows, cols = np.nonzero(imported)
            box = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
            assert [round(v) for v in boxes[0]["bbox"]] == box == ann["bbox"]
            assert parts[0]["label"] == coco.loadCats(ann["category_id"])[0]["name"]
            read += 1
    assert read == 4
