"""``adaptiveclick export`` on Label Studio's own JSON export (a real 1.23.2): a PolygonLabels and a BrushLabels
project, each with smart KeyPointLabels (the configs whose YOLO export Label Studio leaves empty), annotated
through the API with the regions the backend builds (``polygon_regions``, ``brush_region``), exported by Label
Studio, converted, and rasterised back against the ground-truth mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli import main
from ml_backend.config import POLYGON_MIN_AREA_PX, POLYGON_TOLERANCE_PX
from ml_backend.labelstudio.labeling_config import brush_region
from ml_backend.masks.polygons import polygon_regions, polygons_to_mask
from ml_backend.masks.rle import mask2rle
from testkit.ls_harness import E2E_IMAGES, LS_LEGACY_TOKEN

pytestmark = pytest.mark.slow

CONFIGS = {
    "polygon": """<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>""",
    "brush": """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>""",
}


def _regions(kind: str, mask: np.ndarray) -> list[dict]:
    height, width = mask.shape
    if kind == "polygon":
        return polygon_regions(
            mask=mask,
            from_name="poly",
            to_name="image",
            label="Object",
            rotation=0,
            score=1.0,
            tolerance_px=POLYGON_TOLERANCE_PX,
            min_area_px=POLYGON_MIN_AREA_PX,
        )
    rle = mask2rle(mask.astype(np.uint8) * 255)
    return [
        brush_region(
            rle=rle, from_name="tag", to_name="image", label="Object", width=width, height=height, rotation=0, score=1
        )
    ]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


@pytest.mark.parametrize("kind", ["polygon", "brush"])
def test_label_studio_json_export_converts_to_yolo_and_coco(label_studio, e2e_root, shared_dir, tmp_path, kind):
    client = label_studio.client()
    name = E2E_IMAGES["upload"]
    gt = np.asarray(Image.open(shared_dir / "datasets" / "GrabCut" / "masks" / (name.rsplit(".", 1)[0] + ".png")))
    mask = gt == 1
    height, width = mask.shape

    project = client.create_project(title=f"export {kind}", config=CONFIGS[kind])
    client.upload(project, e2e_root / "images" / name)
    [task] = client.tasks(project)
    regions = _regions(kind, mask)
    client.call("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": regions})
    # Label Studio accepted the regions as they are: the stored annotation holds them unchanged.
    [annotation] = client.call("GET", f"/api/tasks/{task['id']}/annotations/")
    assert [r["type"] for r in annotation["result"]] == [f"{kind}labels"] * len(regions)

    exported = client.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(exported))
    images = e2e_root / "images"
    yolo = tmp_path / "yolo"
    args = [
        "export",
        "--from-json",
        str(export_file),
        "--format",
        "yolo-seg",
        "--out",
        str(yolo),
        "--images",
        str(images),
    ]
    assert main(args) == 0
    [label_file] = (yolo / "labels" / "train").iterdir()
    [image_file] = (yolo / "images" / "train").iterdir()
    assert image_file.stem == label_file.stem and image_file.read_bytes() == (images / name).read_bytes()
    lines = [line.split() for line in label_file.read_text().splitlines()]
    assert lines and {line[0] for line in lines} == {"0"}
    polygons = [np.array(line[1:], float).reshape(-1, 2) * [width, height] for line in lines]
    assert _iou(polygons_to_mask(polygons, height, width), mask) >= 0.97

    # --project: the same export downloaded from Label Studio's API, images through the hardened fetcher.
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LS_LEGACY_TOKEN}
    coco_dir = tmp_path / "coco"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert main(["export", "--project", str(project), "--format", "coco", "--out", str(coco_dir)]) == 0
    coco = json.loads((coco_dir / "annotations.json").read_text())
    [image] = coco["images"]
    assert (image["width"], image["height"]) == (width, height)
    assert (coco_dir / "images" / image["file_name"]).read_bytes() == (images / name).read_bytes()
    segmentation_masks = []
    for annotation in coco["annotations"]:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, dict):  # RLE: a brush mask with holes
            runs = np.repeat(np.arange(len(segmentation["counts"])) % 2, segmentation["counts"])
            segmentation_masks.append(runs.reshape(width, height).T.astype(bool))
        else:
            parts = [np.array(p).reshape(-1, 2) for p in segmentation]
            segmentation_masks.append(polygons_to_mask(parts, height, width))
    assert _iou(np.logical_or.reduce(segmentation_masks), mask) >= 0.97
