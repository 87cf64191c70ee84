"""``adaptiveclick export`` (ml_backend/labelstudio/export.py, cli/export.py): hand-made Label Studio JSON exports
with brush
and polygon results -> YOLO segmentation and COCO, rasterised back against the masks; hostile image paths and
malformed files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli import main
from ml_backend.config import Settings
from ml_backend.labelstudio.export import ExportError, export_dataset, parse_export, uncompressed_rle
from ml_backend.masks.polygons import polygons_to_mask
from ml_backend.masks.rle import mask2rle

from prerequisites import missing

H, W = 120, 160


def _disc(centre: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def _brush(mask: np.ndarray, label: str) -> dict:
    return {
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def _polygon(points_px: list[tuple[float, float]], label: str) -> dict:
    return {
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {
            "points": [[x / W * 100, y / H * 100] for x, y in points_px],
            "closed": True,
            "polygonlabels": [label],
        },
    }


def _task(task_id: int, image: str, results: list[dict], **annotation) -> dict:
    return {"id": task_id, "data": {"image": image}, "annotations": [{"id": task_id, "result": results, **annotation}]}


def _write_export(tmp_path: Path, tasks: list) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def _image_dir(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.full((H, W, 3), 128, np.uint8))
    return folder


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def _read_yolo(path: Path) -> list[tuple[int, np.ndarray]]:
    """YOLO segmentation lines as (class, mask): normalised polygons back to pixels, rasterised."""
    objects = []
    for line in path.read_text().splitlines():
        fields = line.split()
        coords = np.array(fields[1:], float).reshape(-1, 2) * [W, H]
        assert ((coords >= 0) & (coords <= [W, H])).all()
        objects.append((int(fields[0]), polygons_to_mask([coords], H, W)))
    return objects


def _decode_coco_rle(segmentation: dict) -> np.ndarray:
    height, width = segmentation["size"]
    values = np.arange(len(segmentation["counts"])) % 2
    return np.repeat(values, segmentation["counts"]).reshape(width, height).T.astype(bool)


BRUSH_MASK = _disc((50, 60), 30)
POLYGON = [(100.0, 20.0), (150.0, 20.0), (150.0, 80.0), (100.0, 80.0)]


def _two_tasks() -> list:
    return [
        _task(1, "/data/upload/3/8f3a2b1c-cat.png", [_brush(BRUSH_MASK, "Cat")]),
        _task(2, "/data/local-files/?d=photos/dog.png", [_polygon(POLYGON, "Dog")]),
    ]


def test_yolo_export_of_brush_and_polygon_results_rasterises_back(tmp_path, capsys):
    export = _write_export(tmp_path, _two_tasks())
    images = _image_dir(tmp_path, "cat.png", "dog.png")
    out = tmp_path / "yolo"
    assert (
        main(["export", "--from-json", str(export), "--format", "yolo-seg", "--out", str(out), "--images", str(images)])
        == 0
    )
    assert "2 task(s), 2 lines, 2 image(s) copied" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images/train").iterdir()) == ["1_cat.png", "2_dog.png"]
    [(cat_class, cat)] = _read_yolo(out / "labels/train/1_cat.txt")
    [(dog_class, dog)] = _read_yolo(out / "labels/train/2_dog.txt")
    assert (cat_class, dog_class) == (0, 1)  # label names sorted
    assert _iou(cat, BRUSH_MASK) >= 0.98
    assert _iou(dog, polygons_to_mask([np.array(POLYGON)], H, W)) >= 0.99
    data_yaml = (out / "data.yaml").read_text()
    assert 'names:\n  0: "Cat"\n  1: "Dog"\n' in data_yaml and "train: images/train" in data_yaml


def test_class_order_can_be_given_and_must_cover_every_label(tmp_path, capsys):
    export = _write_export(tmp_path, _two_tasks())
    out = tmp_path / "yolo"
    assert (
        main(["export", "--from-json", str(export), "--format", "yolo-seg", "--out", str(out), "--classes", "Dog,Cat"])
        == 0
    )
    assert _read_yolo(out / "labels/train/1_cat.txt")[0][0] == 1
    assert "images not copied" in capsys.readouterr().out
    code = main(
        ["export", "--from-json", str(export), "--format", "yolo-seg", "--out", str(tmp_path / "b"), "--classes", "Dog"]
    )
    assert code == 2 and "['Cat'] are not in the class list" in capsys.readouterr().err


def test_two_part_brush_gives_one_line_per_part_and_a_hole_is_filled_in_yolo_but_kept_in_coco(tmp_path):
    two_parts = _disc((30, 30), 20) | _disc((120, 80), 24)
    ring = _disc((80, 60), 40) & ~_disc((80, 60), 16)
    tasks = parse_export(json.dumps([_task(7, "a.png", [_brush(two_parts, "A"), _brush(ring, "B")])]).encode())
    settings = Settings.from_env({})
    export_dataset(tasks, tmp_path / "yolo", fmt="yolo-seg", settings=settings)
    lines = _read_yolo(tmp_path / "yolo/labels/train/7_a.txt")
    assert [c for c, _ in lines] == [0, 0, 1]
    assert _iou(lines[0][1] | lines[1][1], two_parts) >= 0.98
    assert _iou(lines[2][1], _disc((80, 60), 40)) >= 0.98  # the ring's hole is filled

    export_dataset(tasks, tmp_path / "coco", fmt="coco", settings=settings)
    coco = json.loads((tmp_path / "coco/annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["A", "B"]
    parts, ring_annotation = coco["annotations"]
    back = polygons_to_mask([np.array(p).reshape(-1, 2) for p in parts["segmentation"]], H, W)
    assert len(parts["segmentation"]) == 2 and parts["area"] == int(back.sum())  # what the polygons cover
    assert _iou(back, two_parts) >= 0.98
    assert np.array_equal(_decode_coco_rle(ring_annotation["segmentation"]), ring)  # holes kept exactly
    assert ring_annotation["bbox"] == [40, 20, 81, 81] and ring_annotation["category_id"] == 2
    assert coco["images"] == [{"id": 7, "file_name": "7_a.png", "width": W, "height": H}]


def test_uncompressed_rle_is_column_major_and_starts_with_background():
    mask = np.array([[1, 0], [1, 1]], bool)  # column-major: 1 1 0 1
    assert uncompressed_rle(mask) == [0, 2, 1, 1]
    assert uncompressed_rle(~mask) == [2, 1, 1]


def test_the_newest_annotation_that_was_not_cancelled_is_exported():
    task = {
        "id": 4,
        "data": {"picture": "x.jpg", "note": 3},
        "annotations": [
            {"id": 1, "updated_at": "2026-01-02T00:00:00Z", "result": [_polygon(POLYGON, "Old")]},
            {"id": 2, "updated_at": "2026-01-03T00:00:00Z", "result": [_polygon(POLYGON, "New")]},
            {"id": 3, "updated_at": "2026-01-04T00:00:00Z", "was_cancelled": True, "result": []},
        ],
    }
    skipped = {"id": 5, "data": {"image": "y.jpg"}, "annotations": [{"was_cancelled": True, "result": []}]}
    [parsed] = parse_export(json.dumps([task, skipped]).encode())
    assert parsed.image_ref == "x.jpg"  # the only string in data
    assert parsed.results[0]["value"]["polygonlabels"] == ["New"]


def test_keypoints_and_other_results_are_counted_not_exported(tmp_path, capsys):
    keypoint = {"type": "keypointlabels", "value": {"x": 5, "y": 5, "keypointlabels": ["Cat"]}}
    export = _write_export(tmp_path, [_task(1, "c.png", [_brush(BRUSH_MASK, "Cat"), keypoint])])
    assert main(["export", "--from-json", str(export), "--format", "coco", "--out", str(tmp_path / "o")]) == 0
    assert "left out (not brush or polygon): 1 keypointlabels" in capsys.readouterr().out


def test_image_paths_in_the_export_never_reach_outside_the_given_folders(tmp_path, capsys):
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.zeros((H, W, 3), np.uint8))
    images = _image_dir(tmp_path, "ok.png")
    os.symlink(secret, images / "link.png")  # a link inside --images that points out of it
    hostile = [
        "../secret.png",
        str(secret),
        "/data/local-files/?d=../secret.png",
        "file:///" + str(secret),
        "link.png",
        "http://169.254.169.254/latest/../../secret.png",
        "imgs/../../secret.png",
    ]
    tasks = [_task(i + 1, ref, [_polygon(POLYGON, "X")]) for i, ref in enumerate(hostile)]
    tasks.append(_task(99, "/data/upload/1/../../ok.png;rm -rf ~.png", [_polygon(POLYGON, "X")]))
    tasks.append(_task(100, "ok.png", [_polygon(POLYGON, "X")]))
    export = _write_export(tmp_path, tasks)
    out = tmp_path / "out"
    assert (
        main(["export", "--from-json", str(export), "--format", "yolo-seg", "--out", str(out), "--images", str(images)])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"{len(hostile) + 1} image(s) missing" in printed and "1 image(s) copied" in printed
    written = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert sorted(p.name for p in written) == [
        "export.json",
        "link.png",
        "ok.png",
        "secret.png",
    ]  # nothing new outside --out
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert all(c.isalnum() or c in "._-" for c in path.name), path.name
    assert [p.name for p in (out / "images/train").iterdir()] == ["100_ok.png"]


def test_urls_in_the_export_go_through_the_hardened_fetcher(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDIA_ALLOWED_HOSTS", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    export = _write_export(
        tmp_path, [_task(1, "http://169.254.169.254/latest/meta-data/x.png", [_brush(BRUSH_MASK, "C")])]
    )
    out = tmp_path / "out"
    assert main(["export", "--from-json", str(export), "--format", "coco", "--out", str(out), "--download"]) == 0
    printed = capsys.readouterr().out
    assert "1 image(s) missing, first: task 1 (x.png): refusing to fetch the image from '169.254.169.254'" in printed
    assert not any((out / "images").iterdir())


def test_project_export_is_downloaded_with_the_label_studio_token(tmp_path, capsys, monkeypatch, requests_mock):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.test:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "legacy-token-123")
    url = "http://ls.test:8080/api/projects/5/export?exportType=JSON&download_all_tasks=false"
    requests_mock.get(url, json=_two_tasks())
    requests_mock.get(
        "http://ls.test:8080/data/upload/3/8f3a2b1c-cat.png",
        content=cv2.imencode(".png", np.zeros((H, W, 3), np.uint8))[1].tobytes(),
    )
    requests_mock.get("http://ls.test:8080/data/local-files/?d=photos/dog.png", status_code=404)
    out = tmp_path / "out"
    assert main(["export", "--project", "5", "--format", "yolo-seg", "--out", str(out)]) == 0
    assert requests_mock.request_history[0].headers["Authorization"] == "Token legacy-token-123"
    printed = capsys.readouterr().out
    assert "2 task(s), 2 lines, 1 image(s) copied" in printed and "1 image(s) missing, first: task 2" in printed
    requests_mock.get(url, status_code=401)
    assert main(["export", "--project", "5", "--format", "coco", "--out", str(tmp_path / "o2")]) == 2
    assert "Label Studio refused LABEL_STUDIO_API_KEY (401)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG not json", "the export is not JSON"),
        (b'{"id": 1}', "must be a list of tasks"),
        (b"[[" * 100000, "nested too deeply"),
        (json.dumps([{"data": {"image": "a.png"}}]).encode(), "task at position 0 has no integer 'id'"),
        (json.dumps([_task(1, "a.png", []), _task(1, "b.png", [])]).encode(), "task 1 appears twice"),
        (
            json.dumps([{"id": 1, "data": {"a": "x", "b": "y"}, "annotations": [{"result": []}]}]).encode(),
            "--image-key",
        ),
        (json.dumps([_task(1, "a.png", "nope")]).encode(), "task 1: annotations[0].result must be a list"),
        (
            json.dumps([_task(1, "a.png", [{**_brush(BRUSH_MASK, "C"), "original_width": "80"}])]).encode(),
            "original_width must be a positive integer",
        ),
        (
            json.dumps(  # after a good task: the failure comes half-way through writing
                [
                    _task(1, "a.png", [_brush(BRUSH_MASK, "C")]),
                    _task(2, "b.png", [{**_brush(BRUSH_MASK, "C"), "original_width": 161}]),
                ]
            ).encode(),
            "value.rle holds 19200 pixels",
        ),
        (
            json.dumps(
                [
                    _task(
                        1,
                        "a.png",
                        [{**_brush(BRUSH_MASK, "C"), "value": {"format": "rle", "rle": [300], "brushlabels": ["C"]}}],
                    )
                ]
            ).encode(),
            "list of bytes",
        ),
        (
            json.dumps(
                [
                    _task(
                        1,
                        "a.png",
                        [
                            {
                                **_brush(BRUSH_MASK, "C"),
                                "value": {"format": "rle", "rle": [1, 2, 3], "brushlabels": ["C"]},
                            }
                        ],
                    )
                ]
            ).encode(),
            "not a valid brush RLE",
        ),
        (
            json.dumps(
                [
                    _task(
                        1,
                        "a.png",
                        [{**_polygon(POLYGON, "C"), "value": {"points": [[1, 2], [3]], "polygonlabels": ["C"]}}],
                    )
                ]
            ).encode(),
            "value.points must be",
        ),
        (
            json.dumps(
                [_task(1, "a.png", [{**_polygon(POLYGON, "C"), "original_width": 10**6, "original_height": 10**6}])]
            ).encode(),
            "above the limit",
        ),
        (
            json.dumps([_task(1, "a.png", [{**_polygon(POLYGON, "C"), "value": {"points": [[1, 2]] * 3}}])]).encode(),
            "value.polygonlabels must be",
        ),
    ],
)
def test_malformed_exports_get_one_clear_line(tmp_path, capsys, content, expected):
    path = tmp_path / "export.json"
    path.write_bytes(content)
    assert main(["export", "--from-json", str(path), "--format", "yolo-seg", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adaptiveclick export: error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json"]  # no partial output, no staging folder


def test_bad_options_get_one_clear_line(tmp_path, capsys):
    export = _write_export(tmp_path, _two_tasks())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    cases = [
        (["--from-json", str(tmp_path / "nope.json")], "cannot read --from-json"),
        (["--from-json", str(export), "--out", str(tmp_path / "full")], "is not an empty folder"),
        (["--from-json", str(export), "--images", str(tmp_path / "none")], "not a folder"),
        (["--from-json", str(export), "--tolerance", "-1"], "--tolerance must be >= 0"),
    ]
    for args, expected in cases:
        full = ["export", "--format", "coco", "--out", str(tmp_path / "o"), *args]
        assert main(full) == 2, args
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    with pytest.raises(ExportError, match="unknown format"):
        export_dataset([], tmp_path / "f", fmt="voc", settings=Settings.from_env({}))


def test_coco_output_reads_back_in_pycocotools(tmp_path):
    """The reference COCO reader: loads the file, and its own rasteriser gives the masks back."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        missing("pycocotools is not installed (pip install -e '.[test]')")
    two_parts = _disc((30, 30), 20) | _disc((120, 80), 24)
    ring = _disc((80, 60), 40) & ~_disc((80, 60), 16)
    polygon_mask = polygons_to_mask([np.array(POLYGON)], H, W)
    results = [_brush(two_parts, "A"), _brush(ring, "B"), _polygon(POLYGON, "C")]
    tasks = parse_export(json.dumps([_task(3, "a.png", results)]).encode())
    export_dataset(tasks, tmp_path / "coco", fmt="coco", settings=Settings.from_env({}))
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[3]))]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["A", "B", "C"]
    assert _iou(masks[0], two_parts) >= 0.98
    assert np.array_equal(masks[1], ring)
    assert _iou(masks[2], polygon_mask) >= 0.99


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def test_coco_bbox_and_area_are_those_of_the_segmentation_not_of_dropped_specks(tmp_path):
    """A speck under POLYGON_MIN_AREA_PX is dropped from the polygons; it must not stretch the box (it made one box
    17.6x its segmentation's) or count in the area. pycocotools decodes each segmentation: its mask's box and
    pixel count are the annotation's."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        missing("pycocotools is not installed (pip install -e '.[test]')")
    speck = np.zeros((H, W), bool)
    speck[110:113, 150:153] = True  # 9 px, far from the object
    small = _disc((20, 20), 8)
    ring = _disc((80, 60), 40) & ~_disc((80, 60), 16)
    results = [_brush(small | speck, "A"), _brush(ring | speck, "B"), _polygon(POLYGON, "C")]
    tasks = parse_export(json.dumps([_task(4, "a.png", results)]).encode())
    export_dataset(tasks, tmp_path / "coco", fmt="coco", settings=Settings.from_env({}))
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[4]))
    assert len(annotations) == 3
    for annotation in annotations:
        decoded = coco.annToMask(annotation).astype(bool)
        assert annotation["bbox"] == _bbox(decoded), annotation["category_id"]
        # Rasterisers differ along the outline (pycocotools' vs our pixel centres): a few pixels, never a speck's 9.
        assert abs(annotation["area"] - int(decoded.sum())) <= max(0.01 * decoded.sum(), 6)
    assert annotations[0]["bbox"][2] < 20 and not coco.annToMask(annotations[0])[111, 151]  # no speck
    assert coco.annToMask(annotations[1])[111, 151]  # RLE (the ring's hole) keeps the speck, and so does its box


def test_coco_cvat_layout_is_what_cvat_and_datumaro_import(tmp_path, capsys):
    export = _write_export(tmp_path, _two_tasks())
    images = _image_dir(tmp_path, "cat.png", "dog.png")
    out = tmp_path / "cvat"
    assert (
        main(
            ["export", "--from-json", str(export), "--format", "coco-cvat", "--out", str(out), "--images", str(images)]
        )
        == 0
    )
    assert "COCO 1.0" in capsys.readouterr().out
    coco = json.loads((out / "annotations" / "instances_default.json").read_text())
    assert sorted(p.name for p in (out / "images" / "default").iterdir()) == [i["file_name"] for i in coco["images"]]
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "images"]


def test_data_yaml_reads_back_with_odd_label_names(tmp_path):
    yaml = pytest.importorskip("yaml")
    names = ['person: "adult"', "#tag", "Ünïcode"]
    tasks = parse_export(json.dumps([_task(1, "a.png", [_polygon(POLYGON, n) for n in names])]).encode())
    export_dataset(tasks, tmp_path / "y", fmt="yolo-seg", settings=Settings.from_env({}), classes=names)
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(names)) and data["train"] == data["val"] == "images/train"
    assert data["path"] == str((tmp_path / "y").resolve())
