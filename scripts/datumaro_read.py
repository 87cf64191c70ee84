"""Read a COCO dataset the way CVAT's "COCO 1.0" import does (datumaro's ``coco_instances``) and print what it
found as JSON: per item its image path and size, and per annotation its type, label name, group (the COCO
annotation it came from), box and mask (COCO compressed RLE).

Runs in the datumaro environment (``make datumaro``: PyPI ``datumaro`` 1.11, not this project's venv), e.g.
``.cache/datumaro-venv/bin/python scripts/datumaro_read.py DATASET_DIR``; ``tests/test_export_datumaro.py`` calls it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import StreamDataset
from pycocotools import mask as mask_utils


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def main(path: str) -> None:
    dataset = StreamDataset.import_from(path, "coco_instances")  # the streaming reader, as CVAT's import uses
    labels = dataset.categories()[AnnotationType.label]
    items = []
    for item in dataset:
        height, width = item.media.size if item.media is not None and item.media.has_size else (0, 0)
        found = []
        for ann in item.annotations:
            entry = {"type": ann.type.name, "label": labels[ann.label].name if ann.label is not None else None}
            entry["group"] = ann.group  # the COCO annotation's id: its parts and its box share it
            entry["bbox"] = [float(v) for v in ann.get_bbox()]
            if ann.type == AnnotationType.polygon:
                rle = mask_utils.frPyObjects([list(map(float, ann.points))], height, width)
                entry["mask"] = _rle(mask_utils.decode(mask_utils.merge(rle)).astype(bool))
            elif ann.type == AnnotationType.mask:
                entry["mask"] = _rle(ann.image.astype(bool))
            found.append(entry)
        media = item.media.path if item.media is not None else None
        items.append({"id": item.id, "subset": item.subset, "media": media, "size": [height, width], "anns": found})
    json.dump({"items": items}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
