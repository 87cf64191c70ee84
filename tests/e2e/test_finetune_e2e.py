"""Active-learning fine-tuning end to end against a real Label Studio 1.23.2.

Annotations are created through the API (brush RLE from the GrabCut ground truth), Label Studio's webhooks reach
the backend, "Start Training" (``POST /api/ml/{id}/train``) queues a job that the backend's worker process runs
(tiny golden model, a few steps), the promoted version is served without a restart and carried by predictions;
a job on a project without annotations ends cleanly with a message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from ml_backend.masks.rle import mask2rle
from testkit.ls_harness import E2E_IMAGES, LS_LEGACY_TOKEN, Backend, keypoint

pytestmark = pytest.mark.slow


def _brush_region(mask: np.ndarray, rid: str) -> dict:
    h, w = mask.shape
    return {
        "id": rid,
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]},
    }


def _jobs(model_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((model_dir / "jobs").glob("job-*.json"))]


def _wait_job(model_dir: Path, project: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [
            j
            for j in _jobs(model_dir)
            if j["project"] == str(project) and j["state"] in ("done", "skipped", "failed", "interrupted")
        ]
        if done:
            return done[-1]
        time.sleep(0.5)
    raise TimeoutError(f"no finished job for project {project}: {_jobs(model_dir)}")


@pytest.fixture(scope="module")
def ft_backend(label_studio, e2e_root, golden_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")
    backend = Backend(
        {
            "MODEL_ENGINE": "adaptiveclick",
            "MODEL_CHECKPOINT": str(golden_dir / "tiny_official.pth"),  # random tiny weights: fast, not accurate
            "MODEL_DIR": str(model_dir),
            "DEVICE": "cpu",
            "LABEL_STUDIO_URL": label_studio.url,
            # The legacy token: the session's Label Studio gives its user one personal access token, which the
            # other e2e module creates (a second POST /api/token/ answers 409).
            "LABEL_STUDIO_API_KEY": LS_LEGACY_TOKEN,
            "LOCAL_FILES_DOCUMENT_ROOT": str(e2e_root),
            "FINETUNE_STEPS": "2",
            "FINETUNE_BATCH_SIZE": "1",
            "FINETUNE_MAX_CLICKS": "2",
            "FINETUNE_NICE": "0",
            "FINETUNE_THREADS": "1",
            "MODEL_WATCH_S": "0.5",
            "WORKERS": "1",
            "THREADS": "4",
            "NO_TRAFFIC_WARNING_S": "0",
        },
        model_dir / "backend.log",
    ).start()
    try:
        yield backend, model_dir
    finally:
        backend.stop()


def test_a_job_on_an_empty_project_ends_cleanly(label_studio, ft_backend):
    backend, model_dir = ft_backend
    client = label_studio.client()
    project = client.create_project("fine-tune: empty")
    ml = client.connect_backend(project, backend.url)
    client.call("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
    job = _wait_job(model_dir, project, 90)
    assert job["state"] == "skipped" and "no usable annotations" in job["message"], job
    assert not (model_dir / "versions").exists() or not list((model_dir / "versions").iterdir())


def test_annotations_train_and_the_new_version_is_served(label_studio, ft_backend, e2e_root, shared_dir):
    backend, model_dir = ft_backend
    client = label_studio.client()
    project = client.create_project("fine-tune: annotated")
    client.upload(project, e2e_root / "images" / E2E_IMAGES["upload"])
    client.add_local_storage(project, e2e_root / "images")
    client.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=images/{E2E_IMAGES['local']}"}}])
    ml = client.connect_backend(project, backend.url)
    base_version = ml["model_version"]
    assert base_version.startswith("adaptiveclick-tiny_official-")

    tasks = client.tasks(project)
    assert len(tasks) == 2
    masks_dir = shared_dir / "datasets" / "GrabCut" / "masks"
    for task in tasks:
        name = next(n for n in E2E_IMAGES.values() if task["data"]["image"].endswith(n))
        gt = np.asarray(Image.open(masks_dir / (name.rsplit(".", 1)[0] + ".png"))) == 1
        client.call(
            "POST",
            f"/api/tasks/{task['id']}/annotations",
            json={"task": task["id"], "result": [_brush_region(gt, "obj")]},
        )
    # A skipped task's annotation (cancelled) is ignored by the job.
    client.call(
        "POST",
        f"/api/tasks/{tasks[0]['id']}/annotations",
        json={"task": tasks[0]["id"], "result": [], "was_cancelled": True},
    )
    events = (model_dir / "finetune" / "events.jsonl").read_text().splitlines()
    created = [json.loads(e) for e in events if '"ANNOTATION_CREATED"' in e]
    assert len([e for e in created if e["project"] == str(project)]) >= 2, events

    t0 = time.monotonic()
    client.call("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
    job = _wait_job(model_dir, project, 150)
    assert job["state"] == "done" and job["promoted"], job
    assert job["data"]["annotations_used"] == 2 and job["data"]["cancelled"] == 1 and job["parent"] == base_version
    version = job["version"]
    manifest = json.loads((model_dir / "versions" / version / "manifest.json").read_text())
    assert manifest["parent"] == base_version and manifest["data"]["tasks"] == 2
    assert set(manifest["metrics"]) >= {"before", "after"}

    deadline = time.monotonic() + 30
    while requests.get(backend.url + "/health", timeout=5).json()["model_version"] != version:
        assert time.monotonic() < deadline, "the backend did not switch to the promoted version"
        time.sleep(0.5)
    print(f"train -> served new version in {time.monotonic() - t0:.1f} s")
    versions = client.call("GET", f"/api/ml/{ml['id']}/versions")
    assert versions["versions"] == [base_version, version]
    upload = next(t for t in tasks if t["data"]["image"].startswith("/data/upload/"))
    reply = client.interactive(ml["id"], upload["id"], [keypoint(160, 250, True, 481, 321)])
    assert reply["data"]["model_version"] == version
    assert (
        requests.post(backend.url + "/setup", json={"project": f"{project}.1", "schema": None}, timeout=5).json()[
            "model_version"
        ]
        == version
    )
