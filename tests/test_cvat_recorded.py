"""The CVAT loop replayed from a real CVAT 2.73.0 (``tests/e2e/recorded/cvat-2.73.0-finetune.json``, written by
``scripts/cvat_finetune_drive.py`` against the no-Docker CVAT of ``../shared/docs/cvat-real.md``).

Recorded there: the webhooks CVAT delivered (exact bytes and ``X-Signature-256``: a ping, two annotation saves that
only touch ``updated_date``, a job completed, a job moved to acceptance), what the worker read with a read-only
personal access token (the project's job list, each job, its annotations and media meta, its frames as stored),
and CVAT's own "COCO 1.0" import of ``adaptiveclick export --format coco-cvat`` read back from the task. Replayed
here: the same bytes at ``/cvat/webhook``, a stub CVAT serving the same replies to the real CVAT source, and the
exporter's output against what CVAT imported."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.cvat.annotations import FRAME_KEY, CvatSource
from ml_backend.finetuning.model_store import DONE, QUEUED, ModelStore
from ml_backend.finetuning.worker import JobConfig, JobSteps, worker_loop
from ml_backend.interactive.engine import Engine
from ml_backend.labelstudio.export import export_dataset, parse_export
from ml_backend.masks.polygons import polygons_to_mask
from ml_backend.masks.rle import mask2rle
from testkit.standins import DiskPredictor

from backend_helpers import StubCvat

RECORDING = json.loads((Path(__file__).parent / "e2e" / "recorded" / "cvat-2.73.0-finetune.json").read_text())
BLOB, BOX = (235, 225, 120), (30, 35, 140)  # the drive's synthetic frames paint the two objects in these colours


def settings_for(tmp_path, **overrides) -> Settings:
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"base weights")
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    settings.model_dir = str(tmp_path / "models")
    settings.finetune_worker = "external"
    settings.model_watch_s = 0
    settings.model_checkpoint = str(base)
    settings.cvat_webhook_secret = RECORDING["secret"]
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def frame(key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(RECORDING["frames"][key]))).convert("RGB"))


def painted(image: np.ndarray, colour) -> np.ndarray:
    return (image == np.array(colour, np.uint8)).all(-1)


def stub_cvat() -> StubCvat:
    api = RECORDING["api"]
    jobs = api["jobs"]["results"]
    annotations = {j["id"]: api[f"/api/jobs/{j['id']}/annotations"] for j in jobs}
    meta = {j["id"]: api[f"/api/jobs/{j['id']}/data/meta"] for j in jobs}
    frames = {}
    for key, data in RECORDING["frames"].items():
        job_id, number = key.split("/")
        frames[(int(job_id), int(number))] = base64.b64decode(data)
    return StubCvat(jobs, annotations, meta, frames)


def test_the_recorded_webhooks_replayed_byte_for_byte_get_the_recorded_answers(tmp_path):
    hooks = RECORDING["webhooks"]
    assert [json.loads(h["body"])["event"] for h in hooks] == ["ping"] + ["update:job"] * 4
    assert all(h["headers"]["X-Signature-256"].startswith("sha256=") for h in hooks)
    settings = settings_for(tmp_path)
    with TestClient(create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="d"))) as client:
        for hook in hooks:
            reply = client.post("/cvat/webhook", content=hook["body"].encode(), headers=hook["headers"])
            assert reply.status_code == hook["status"] == 200, reply.text
            got, recorded = reply.json(), hook["reply"]
            assert got.get("finetune") == recorded.get("finetune") and got.get("queued") == recorded.get("queued")
        # CVAT retries a delivery that failed: the same bytes again queue nothing.
        again = client.post("/cvat/webhook", content=hooks[3]["body"].encode(), headers=hooks[3]["headers"])
        assert again.json()["finetune"] == "duplicate"
        tampered = hooks[3]["body"].replace('"completed"', '"rejected"').encode()
        assert client.post("/cvat/webhook", content=tampered, headers=hooks[3]["headers"]).status_code == 403
    [job] = ModelStore(settings.model_dir).jobs()
    trigger = json.loads(hooks[3]["body"])["job"]
    assert job["state"] == QUEUED and job["platform"] == "cvat" and job["project"] == str(trigger["project_id"])
    assert job["source"]["job"] == trigger["id"] and job["source"]["change"] == "state -> completed"


def test_the_recorded_job_data_becomes_the_masks_painted_in_the_frames(tmp_path):
    stub = stub_cvat()
    try:
        settings = settings_for(tmp_path, cvat_url=stub.url, cvat_access_token="prefix.recorded")
        project = str(RECORDING["ids"]["project"])
        tasks, stats = CvatSource(settings, {"project": project, "platform": "cvat"}).collect(JobConfig())
    finally:
        stub.stop()
    assert len(tasks) == 6 and stats["other_shapes"] == 6 and stats["bad_shapes"] == 0  # rectangles left out
    for task in tasks:
        key = f"{task.annotation_id}/{task.task_id % FRAME_KEY}"
        image = frame(key)
        assert np.array_equal(task.image, image)
        blob, box = task.masks
        assert np.array_equal(blob, painted(image, BLOB))  # CVAT's mask RLE, decoded, is the painted object
        assert np.array_equal(box, painted(image, BOX))  # the polygon, rasterised, is the painted box
    assert {auth for _, auth in stub.requests} == {"Bearer prefix.recorded"}


def test_the_recorded_project_trains_through_the_same_gate(tmp_path):
    stub = stub_cvat()
    try:
        settings = settings_for(tmp_path, cvat_url=stub.url, cvat_access_token="prefix.recorded")
        hook = RECORDING["webhooks"][3]
        with TestClient(create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="d"))) as client:
            assert (
                client.post("/cvat/webhook", content=hook["body"].encode(), headers=hook["headers"]).status_code == 200
            )

        def evaluate(net, samples):
            return {"noc85": 1.0, "noc90": 1.0, "instances": len(samples)}

        def save(net, path, metadata):
            path.write_bytes(json.dumps(metadata).encode())

        steps = JobSteps(evaluate=evaluate, train=lambda init, data: ("net", {"step": 1, "stopped": False}), save=save)
        assert worker_loop(settings, JobConfig(), once=True, steps=steps) == 1
    finally:
        stub.stop()
    store = ModelStore(settings.model_dir)
    [job] = store.jobs()
    real = RECORDING["jobs"][0]  # what the real run's job did with the same data
    assert job["state"] == DONE == real["state"] and job["promoted"] is real["promoted"] is True
    assert job["data"] == real["data"] and job["split"] == real["split"]
    manifest = store.manifest(job["version"])
    assert (manifest["platform"], manifest["project"], manifest["source"]["job"]) == (
        RECORDING["manifest"]["platform"],
        RECORDING["manifest"]["project"],
        RECORDING["manifest"]["source"]["job"],
    )


def test_what_cvat_imported_is_what_the_exporter_writes_today(tmp_path):
    """The real CVAT's COCO 1.0 import of the export, read back: each object is a polygon (IoU with the export's
    segmentation 1.0 there) and a rectangle equal to its mask's box; today's exporter must still write that."""
    imported = RECORDING["cvat_import"]
    assert imported["comparison"]["objects"] == 12 == imported["comparison"]["boxes_equal_their_masks"]
    if imported["import_status"] != 202:  # this CVAT's REST import is broken (PyPI datumaro): CVAT's code, run apart
        assert imported["import_probe"]["returncode"] == 0
    frames = [frame(key) for key in sorted(RECORDING["frames"], key=lambda k: int(k.split("/")[1]))]
    tasks, folder = [], tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(frames):
        h, w = image.shape[:2]
        name = f"frame_{i:02d}.png"
        Image.fromarray(image).save(folder / name)
        blob, box = painted(image, BLOB), painted(image, BOX)
        rows, cols = np.nonzero(box)
        corners = [[cols.min(), rows.min()], [cols.max() + 1, rows.min()], [cols.max() + 1, rows.max() + 1]]
        corners.append([cols.min(), rows.max() + 1])
        results = [
            {
                "type": "brushlabels",
                "original_width": w,
                "original_height": h,
                "value": {"format": "rle", "rle": mask2rle(blob.astype(np.uint8) * 255), "brushlabels": ["blob"]},
            },
            {
                "type": "polygonlabels",
                "original_width": w,
                "original_height": h,
                "value": {"points": [[100 * x / w, 100 * y / h] for x, y in corners], "polygonlabels": ["box"]},
            },
        ]
        tasks.append({"id": i + 1, "data": {"image": name}, "annotations": [{"id": i + 1, "result": results}]})
    out = tmp_path / "export"
    export_dataset(
        parse_export(json.dumps(tasks).encode()),
        out,
        fmt="coco-cvat",
        settings=Settings.from_env({}),
        read_image=lambda t: (folder / t.image_ref).read_bytes(),
    )
    coco = json.loads((out / "annotations" / "instances_default.json").read_text())
    shapes = imported["annotations"]["shapes"]
    polygons = [s for s in shapes if s["type"] == "polygon"]
    rectangles = {(s["frame"], s["group"]): s["points"] for s in shapes if s["type"] == "rectangle"}
    assert len(polygons) == len(coco["annotations"]) == 12
    h, w = frames[0].shape[:2]
    for ann in coco["annotations"]:
        exported = polygons_to_mask([np.array(p).reshape(-1, 2) for p in ann["segmentation"]], h, w)
        candidates = [s for s in polygons if s["frame"] == ann["image_id"] - 1]
        best = max(candidates, key=lambda s: _iou(_polygon_mask(s, h, w), exported))
        held = _polygon_mask(best, h, w)
        assert _iou(held, exported) >= 0.99
        rows, cols = np.nonzero(held)
        box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
        x, y, bw, bh = ann["bbox"]
        assert pytest.approx(rectangles[(best["frame"], best["group"])]) == box == [x, y, x + bw, y + bh]


def _polygon_mask(shape: dict, h: int, w: int) -> np.ndarray:
    return polygons_to_mask([np.array(shape["points"], float).reshape(-1, 2)], h, w)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))
