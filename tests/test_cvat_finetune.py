"""CVAT teaches the model too: the signed webhook (``POST /cvat/webhook``), CVAT's annotations as training masks
(``ml_backend/cvat/annotations.py`` through ``ml_backend/masks/regions.py``), and a CVAT-triggered job gated, promoted
and recorded exactly like a Label Studio one.

The bodies here are built the way CVAT 2.73 builds them (``cvat/apps/webhooks/signals.py``: the job serialised as
``GET /api/jobs/{id}`` returns it, ``changes`` and ``before_update``; ``utils.py``: ``X-Signature-256: sha256=`` HMAC of
``json.dumps(payload)``, which is also the body ``requests`` sends); ``test_cvat_recorded.py`` replays a real CVAT's."""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.cvat.annotations import FRAME_KEY, CvatSource, decode_box_rle, read_shape
from ml_backend.cvat.api import auth_header
from ml_backend.cvat.interactor import encode_cvat_mask
from ml_backend.finetuning.model_store import DONE, QUEUED, SKIPPED, ModelStore
from ml_backend.finetuning.worker import JobConfig, JobSteps, run_job, worker_loop
from ml_backend.interactive.engine import Engine
from ml_backend.masks.regions import RegionError
from testkit.standins import DiskPredictor

from backend_helpers import StubCvat

SECRET = "s3cret-webhook"
H, W = 60, 80


def settings_for(model_dir, **overrides) -> Settings:
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    settings.model_dir = str(model_dir)
    settings.finetune_worker = "external"
    settings.model_watch_s = 0
    settings.cvat_webhook_secret = SECRET
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def app_for(model_dir, **overrides):
    settings = settings_for(model_dir, **overrides)
    return create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))


def cvat_job(job_id: int, stage: str, state: str, *, task: int = 5, project: int | None = 3, frames=(0, 1)) -> dict:
    """A job as CVAT 2.73's JobReadSerializer writes it (the fields a webhook and /api/jobs carry)."""
    return {
        "url": f"http://localhost:8080/api/jobs/{job_id}",
        "id": job_id,
        "task_id": task,
        "task_name": "frames",
        "project_id": project,
        "project_name": "roads" if project else None,
        "assignee": None,
        "guide_id": None,
        "dimension": "2d",
        "mode": "annotation",
        "media_type": "image",
        "bug_tracker": None,
        "status": stage,
        "stage": stage,
        "state": state,
        "frame_count": len(frames),
        "start_frame": frames[0],
        "stop_frame": frames[-1],
        "data_chunk_size": 72,
        "data_compressed_chunk_type": "imageset",
        "data_original_chunk_type": "imageset",
        "created_date": "2026-12-07T10:00:00.000000Z",
        "updated_date": "2026-12-07T10:05:00.000000Z",
        "issues": {"url": f"http://localhost:8080/api/issues?job_id={job_id}", "count": 0},
        "labels": {"url": f"http://localhost:8080/api/labels?job_id={job_id}"},
        "type": "annotation",
        "organization": None,
        "target_storage": None,
        "source_storage": None,
        "assignee_updated_date": None,
        "parent_job_id": None,
        "consensus_replicas": 0,
        "replicas_count": 0,
    }


def webhook(job: dict, field: str = "state", old: str = "in progress", new: str = "completed") -> dict:
    job = dict(job, **{field: new})
    return {
        "event": "update:job",
        "webhook_id": 1,
        "job": job,
        "sender": {"url": "http://localhost:8080/api/users/1", "id": 1, "username": "admin"},
        "before_update": {field: old},
        "changes": {field: {"from": old, "to": new}},
    }


def signed(payload: dict, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """The body and headers CVAT sends: requests' ``json=`` body is ``json.dumps(payload)``, signed as such."""
    body = json.dumps(payload).encode("utf-8")
    digest = hmac.new(secret.encode(), json.dumps(payload).encode("utf-8"), hashlib.sha256).hexdigest()
    return body, {"X-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def post(client, payload: dict, secret: str = SECRET, **headers):
    body, sign = signed(payload, secret)
    return client.post("/cvat/webhook", content=body, headers=dict(sign, **headers))


# --- the webhook ---------------------------------------------------------------------------------------------------


def test_a_completed_job_queues_a_cvat_job_and_repeats_or_late_deliveries_queue_nothing(tmp_path):
    with TestClient(app_for(tmp_path)) as client:
        reply = post(client, webhook(cvat_job(11, "annotation", "completed")))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["finetune"] == "recorded" and body["queued"] is True and body["change"] == "state -> completed"
        again = post(client, webhook(cvat_job(11, "annotation", "completed")))  # CVAT's retry of the same save
        assert again.status_code == 200 and again.json()["finetune"] == "duplicate"
        # Job 12 was completed, then reopened; the reopening arrives first: the late "completed" queues nothing.
        reopened = webhook(cvat_job(12, "annotation", "in progress"), old="completed", new="in progress")
        reopened["job"]["updated_date"] = "2026-12-07T11:00:00Z"
        assert post(client, reopened).json()["finetune"] == "ignored"
        late = webhook(cvat_job(12, "annotation", "completed"))
        assert post(client, late).json()["finetune"] == "duplicate"
        accepted = webhook(cvat_job(13, "acceptance", "new"), field="stage", old="validation", new="acceptance")
        joined = post(client, accepted).json()
        assert joined["job"] == body["job"] and joined["queued"] is False  # one queued job per project
    store = ModelStore(tmp_path)
    [job] = store.jobs()
    assert job["state"] == QUEUED and job["platform"] == "cvat" and job["project"] == "3"
    assert job["source"] == {"job": 11, "task": 5, "change": "state -> completed"}
    events = [json.loads(line) for line in store.events_path.read_text().splitlines()]
    assert [(e["action"], e["project"], e["job"]) for e in events] == [
        ("cvat:update:job", "cvat:3", 11),
        ("cvat:update:job", "cvat:3", 13),
    ]
    assert "admin" not in store.events_path.read_text()  # ids only, never the payload


def test_a_cvat_project_and_a_label_studio_project_with_the_same_id_get_their_own_jobs(tmp_path):
    store = ModelStore(tmp_path)
    ls, _ = store.enqueue("3", "START_TRAINING")
    cvat, created = store.enqueue("3", "CVAT job 1", platform="cvat")
    assert created and cvat["id"] != ls["id"] and ls["platform"] == "labelstudio"


@pytest.mark.parametrize(
    "headers, status, words",
    [
        ({}, 401, "no X-Signature-256"),
        ({"X-Signature-256": "sha256=" + "0" * 64}, 403, "does not match"),
        ({"X-Signature-256": "garbage"}, 403, "does not match"),
    ],
)
def test_unsigned_or_wrongly_signed_webhooks_are_refused_and_record_nothing(tmp_path, caplog, headers, status, words):
    body = json.dumps(webhook(cvat_job(11, "annotation", "completed"))).encode()
    with TestClient(app_for(tmp_path)) as client, caplog.at_level(logging.WARNING, "adaptiveclick"):
        reply = client.post("/cvat/webhook", content=body, headers=headers)
    assert reply.status_code == status and words in reply.json()["error"]
    assert words in caplog.text  # one clear line in the server's log
    assert ModelStore(tmp_path).jobs() == []


def test_a_body_signed_with_another_secret_or_changed_after_signing_is_refused(tmp_path):
    payload = webhook(cvat_job(11, "annotation", "completed"))
    with TestClient(app_for(tmp_path)) as client:
        assert post(client, payload, secret="other").status_code == 403
        body, headers = signed(payload)
        tampered = body.replace(b'"project_id": 3', b'"project_id": 4')
        assert client.post("/cvat/webhook", content=tampered, headers=headers).status_code == 403
    assert ModelStore(tmp_path).jobs() == []


def test_without_a_secret_cvat_webhooks_are_off(tmp_path):
    with TestClient(app_for(tmp_path, cvat_webhook_secret="")) as client:
        reply = post(client, webhook(cvat_job(11, "annotation", "completed")))
    assert reply.status_code == 403 and "CVAT_WEBHOOK_SECRET" in reply.json()["error"]


def test_events_ping_unknown_and_malformed(tmp_path):
    with TestClient(app_for(tmp_path)) as client:
        assert post(client, {"event": "ping", "webhook": {"id": 1}}).json() == {"status": "ok", "event": "ping"}
        task = post(client, {"event": "update:task", "task": {"id": 5}}).json()
        assert task["finetune"] == "ignored" and "update:job" in task["reason"]
        unknown = post(client, {"event": "ANNOTATION_CREATED"})
        assert unknown.status_code == 422 and "unknown CVAT webhook event" in unknown.json()["error"]
        no_job = post(client, {"event": "update:job", "job": {"id": "12"}})
        assert no_job.status_code == 422 and "integer id" in no_job.json()["error"]
        body = b"not json"
        digest = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        garbage = client.post("/cvat/webhook", content=body, headers={"X-Signature-256": digest})
        assert garbage.status_code == 400 and "not valid JSON" in garbage.json()["error"]
        big = client.post("/cvat/webhook", content=b"{" + b" " * (2 << 20) + b"}", headers={"X-Signature-256": "x"})
        assert big.status_code == 413
        stage = webhook(cvat_job(11, "validation", "new"), field="stage", old="annotation", new="validation")
        assert post(client, stage).json()["finetune"] == "ignored"  # not in CVAT_FINETUNE_ON
    assert ModelStore(tmp_path).jobs() == []


def test_projects_outside_finetune_cvat_projects_and_tasks_without_a_project(tmp_path):
    with TestClient(app_for(tmp_path, finetune_cvat_projects=("4", "task-9"))) as client:
        assert post(client, webhook(cvat_job(11, "annotation", "completed"))).json()["finetune"] == "ignored"
        lone = post(client, webhook(cvat_job(21, "annotation", "completed", task=9, project=None))).json()
        assert lone["finetune"] == "recorded" and lone["project"] == "task-9"
    [job] = ModelStore(tmp_path).jobs()
    assert job["project"] == "task-9"


def test_the_signed_webhook_passes_basic_auth_which_still_guards_the_rest(tmp_path):
    with TestClient(app_for(tmp_path, basic_auth_user="u", basic_auth_pass="p")) as client:
        assert post(client, webhook(cvat_job(11, "annotation", "completed"))).status_code == 200
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": 1}).status_code == 401
    with TestClient(app_for(tmp_path / "off", basic_auth_user="u", basic_auth_pass="p", cvat_webhook_secret="")) as c:
        assert post(c, webhook(cvat_job(11, "annotation", "completed"))).status_code == 401


def test_without_model_dir_a_signed_webhook_is_answered_and_nothing_is_queued(tmp_path):
    settings = Settings.from_env({})
    settings.no_traffic_warning_s, settings.cvat_webhook_secret = 0, SECRET
    with TestClient(create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="d"))) as client:
        reply = post(client, webhook(cvat_job(11, "annotation", "completed")))
        assert reply.status_code == 200 and reply.json()["finetune"] == "off"
        assert post(client, webhook(cvat_job(11, "annotation", "completed")), secret="x").status_code == 403


def test_an_unwritable_model_dir_is_a_503_so_cvat_delivers_again(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with TestClient(app_for(not_a_dir)) as client:
        reply = post(client, webhook(cvat_job(11, "annotation", "completed")))
    assert reply.status_code == 503 and "deliver the event again" in reply.json()["error"]


def test_signed_webhooks_with_malformed_parts_never_5xx(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.recursive(
        st.none() | st.booleans() | st.integers(-2, 2**40) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=8,
    )
    job = st.fixed_dictionaries(
        {"id": values | st.integers(1, 50)},
        optional={
            "task_id": values,
            "project_id": values,
            "stage": values,
            "state": values,
            "updated_date": values | st.sampled_from(["2026-12-07T10:05:00Z", "yesterday"]),
            "organization": values,
        },
    )
    bodies = st.fixed_dictionaries(
        {"event": st.sampled_from(["update:job", "ping", "create:job", "nonsense"]) | values},
        optional={"job": job | values, "changes": values, "before_update": values, "webhook_id": values},
    )
    with TestClient(app_for(tmp_path), raise_server_exceptions=False) as client:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies)
        def check(body):
            reply = post(client, body)
            assert reply.status_code in (200, 400, 422), reply.text

        check()


# --- CVAT's shapes as masks ----------------------------------------------------------------------------------------


def test_cvat_mask_rle_decodes_cvat_core_examples_and_the_interactors_encoding():
    # cvat-core rle-utils: [0, 0, 0, 1] -> [3, 1]; [1, 1, 0, 0] -> [0, 2, 2] (box 4x1 at 2, 1 on a 6x3 frame)
    assert decode_box_rle([3, 1, 2, 1, 5, 1], 6, 3, "t")[1, 2:6].tolist() == [False, False, False, True]
    assert decode_box_rle([0, 2, 2, 2, 1, 5, 1], 6, 3, "t")[1, 2:6].tolist() == [True, True, False, False]
    assert decode_box_rle([3.0, 1.0, 2.0, 1.0, 5.0, 1.0], 6, 3, "t").sum() == 1  # CVAT's API returns floats
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((H, W), bool)
        y, x = rng.integers(0, H - 10), rng.integers(0, W - 10)
        mask[y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = True
        mask &= rng.random((H, W)) > 0.3
        if mask.any():
            points = encode_cvat_mask(mask).tolist()
            assert np.array_equal(decode_box_rle(points, W, H, "t"), mask)


@pytest.mark.parametrize(
    "shape, words",
    [
        ({"type": "mask", "points": [1, 2, 0, 0]}, "run lengths then left"),
        ({"type": "mask", "points": [0, 5, 0, 0, 1, 1]}, "runs cover 5 pixels"),
        ({"type": "mask", "points": [1, 1, 70, 0, 90, 0]}, "not inside"),
        ({"type": "mask", "points": [-1, 2, 0, 0, 1, 0]}, "non-negative integers"),
        ({"type": "mask", "points": [0.5, 1.5, 0, 0, 1, 0]}, "non-negative integers"),
        ({"type": "mask", "points": [True, 1, 0, 0, 1, 0]}, "(numbers)"),
        ({"type": "mask", "points": [1, float("nan"), 0, 0, 1, 0]}, "(numbers)"),
        ({"type": "polygon", "points": [1, 2, 3]}, "flat list"),
        ({"type": "polygon", "points": [1, 2, 3, 4]}, "at least 3"),
        ({"type": "polygon", "points": [1, 2, 3, 4, 5, "6"]}, "at least 3"),
        ({"type": "rectangle", "points": [1, 2, 3, 4]}, "not one of mask, polygon"),
    ],
)
def test_malformed_shapes_get_a_region_error_naming_the_problem(shape, words):
    with pytest.raises(RegionError, match="shape 7") as info:
        read_shape(shape, W, H, "shape 7")
    assert words in str(info.value)


def test_a_cvat_polygon_is_read_like_a_label_studio_polygon():
    from ml_backend.labelstudio.regions import read_region

    corners = [(10, 5), (50, 5), (50, 40), (10, 40)]
    cvat = read_shape({"type": "polygon", "points": [c for p in corners for c in p]}, W, H, "s").mask
    ls_result = {
        "type": "polygonlabels",
        "original_width": W,
        "original_height": H,
        "value": {"points": [[100 * x / W, 100 * y / H] for x, y in corners], "polygonlabels": ["car"]},
    }
    assert np.array_equal(cvat, read_region(ls_result, "r").mask) and cvat.sum() == 40 * 35


def test_auth_header_tells_a_personal_access_token_from_a_legacy_key():
    assert auth_header("AbCd1234.secretpart") == {"Authorization": "Bearer AbCd1234.secretpart"}
    assert auth_header("0123456789abcdef0123456789abcdef01234567") == {
        "Authorization": "Token 0123456789abcdef0123456789abcdef01234567"
    }


# --- a CVAT project as training data (a stub CVAT serving hand-built replies) ----------------------------------------


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _shape(kind: str, frame: int, points: list, shape_id: int) -> dict:
    """A shape as ``GET /api/jobs/{id}/annotations`` returns it (points as floats)."""
    return {
        "type": kind,
        "occluded": False,
        "outside": False,
        "z_order": 0,
        "rotation": 0.0,
        "points": [float(p) for p in points],
        "id": shape_id,
        "frame": frame,
        "label_id": 7,
        "group": 0,
        "source": "manual",
        "attributes": [],
        "elements": [],
    }


def stub_project(page_size: int = 100):
    """Project 3, task 5: job 11 (frames 0-1, accepted), 12 (frames 2-3, completed), 13 (frames 4-5, in
    progress); each frame a bright square (a mask shape) and a green rectangle (a polygon shape)."""
    rng = np.random.default_rng(4)
    jobs = [
        cvat_job(11, "acceptance", "new", frames=(0, 1)),
        cvat_job(12, "annotation", "completed", frames=(2, 3)),
        cvat_job(13, "annotation", "in progress", frames=(4, 5)),
        dict(cvat_job(14, "acceptance", "completed", frames=(0, 1)), type="ground_truth"),
    ]
    annotations, meta, frames, truth = {}, {}, {}, {}
    for job in jobs:
        shapes = []
        for frame in range(job["start_frame"], job["stop_frame"] + 1):
            image = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
            square = np.zeros((H, W), bool)
            square[5 + frame : 30 + frame, 8:33] = True
            image[square] = 230
            image[35:55, 45:75] = (20, 200, 40)
            frames[(job["id"], frame)] = _png(image)
            shapes.append(_shape("mask", frame, encode_cvat_mask(square).tolist(), 100 * job["id"] + 2 * frame))
            shapes.append(_shape("polygon", frame, [45, 35, 75, 35, 75, 55, 45, 55], 100 * job["id"] + 2 * frame + 1))
            truth[5 * FRAME_KEY + frame] = square
        shapes.append(_shape("rectangle", job["start_frame"], [1, 1, 5, 5], 9000 + job["id"]))
        annotations[job["id"]] = {"version": 3, "tags": [], "shapes": shapes, "tracks": []}
        meta[job["id"]] = {"start_frame": job["start_frame"], "stop_frame": job["stop_frame"], "deleted_frames": []}
    # Job 12: one malformed shape (box outside the frame) and its frame 3 deleted from the task.
    annotations[12]["shapes"].append(_shape("mask", 2, [0, 4, 70, 50, 90, 50], 9999))
    meta[12]["deleted_frames"] = [3]
    return StubCvat(jobs, annotations, meta, frames, page_size=page_size), truth


def cvat_settings(tmp_path, stub: StubCvat, **overrides) -> Settings:
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"base weights")
    defaults = {"cvat_url": stub.url, "cvat_access_token": "AbCd1234.pat-secret", "model_checkpoint": str(base)}
    return settings_for(tmp_path / "models", **dict(defaults, **overrides))


def test_collect_reads_the_finished_jobs_masks_and_polygons(tmp_path, caplog):
    stub, truth = stub_project(page_size=2)  # two pages of jobs
    try:
        settings = cvat_settings(tmp_path, stub)
        source = CvatSource(settings, {"project": "3", "platform": "cvat", "source": {"job": 12, "organization": 2}})
        with caplog.at_level(logging.WARNING, "adaptiveclick"):
            tasks, stats = source.collect(JobConfig())
    finally:
        stub.stop()
    assert [t.task_id for t in tasks] == [5 * FRAME_KEY + f for f in (0, 1, 2)]  # 13 open, frame 3 deleted
    assert [t.annotation_id for t in tasks] == [11, 11, 12]  # the ground-truth job 14 repeats frames: left out
    for task in tasks:
        square, rectangle = task.masks
        assert np.array_equal(square, truth[task.task_id]) and rectangle.sum() == 30 * 20 and rectangle[40, 60]
        assert task.image.shape == (H, W, 3)
    assert stats["jobs_seen"] == 4 and stats["jobs"] == 2 and stats["other_shapes"] == 2
    assert stats["bad_shapes"] == 1 and stats["deleted_frames"] == 2 and stats["instances"] == 6
    assert "CVAT job 12 shapes[" in caplog.text and "not inside the 80x60 frame" in caplog.text
    assert {auth for _, auth in stub.requests} == {"Bearer AbCd1234.pat-secret"}
    assert any("quality=original" in path for path, _ in stub.requests)
    assert all("org_id=2" in path for path, _ in stub.requests if path.startswith("/api/jobs?"))  # the job's org


def test_a_job_deleted_between_the_list_and_its_annotations_is_left_out_with_a_log_line(tmp_path, caplog):
    stub, _ = stub_project()
    del stub.annotations[12]  # CVAT answers 404 for it now
    try:
        source = CvatSource(cvat_settings(tmp_path, stub), {"project": "3", "platform": "cvat"})
        with caplog.at_level(logging.WARNING, "adaptiveclick"):
            tasks, stats = source.collect(JobConfig())
    finally:
        stub.stop()
    assert [t.annotation_id for t in tasks] == [11, 11] and stats["jobs"] == 2
    assert "CVAT job 12 is gone" in caplog.text


def fake_steps(before: float, after: float) -> JobSteps:
    """The real collection (the CVAT source); the gate's measurements and the training faked."""

    def evaluate(net, samples):
        noc = after if net == "trained" else before
        return {"noc85": noc, "noc90": noc + 1, "instances": len(samples)}

    def train(init, data):
        return "trained", {"step": 3, "loss": 0.4, "wall_time": 0.5, "stopped": False}

    def save(net, path, metadata):
        path.write_bytes(json.dumps(metadata).encode())

    return JobSteps(evaluate=evaluate, train=train, save=save)


def test_a_cvat_triggered_job_is_promoted_or_refused_by_the_same_gate_and_says_where_it_learned(tmp_path, capsys):
    from cli import main as cli_main

    stub, _ = stub_project()
    try:
        settings = cvat_settings(tmp_path, stub)
        with TestClient(create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="d"))) as client:
            assert post(client, webhook(cvat_job(12, "annotation", "completed"))).json()["queued"] is True
        assert worker_loop(settings, JobConfig(), once=True, steps=fake_steps(5.0, 4.0)) == 1
        store = ModelStore(settings.model_dir)
        [job] = store.jobs()
        assert job["state"] == DONE and job["promoted"] is True and job["data"]["annotated_tasks"] == 3
        manifest = store.manifest(job["version"])
        assert manifest["platform"] == "cvat" and manifest["project"] == "3" and manifest["source"]["job"] == 12
        assert manifest["data"]["cvat_instances"] == 6 and store.current() == job["version"]
        worse, _ = store.enqueue("3", "CVAT job 11: stage -> acceptance", platform="cvat", source={"job": 11})
        refused = run_job(store, worse, settings, JobConfig(), fake_steps(4.0, 4.5))
        assert refused["promoted"] is False and "worse" in refused["message"] and store.current() == job["version"]
    finally:
        stub.stop()
    assert cli_main(["versions", "list", "--model-dir", settings.model_dir]) == 0
    listing = capsys.readouterr().out
    assert f"* {job['version']}" in listing and "data=cvat project 3 (job 12)" in listing
    assert cli_main(["versions", "jobs", "--model-dir", settings.model_dir]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["platform"], r["project"], r["source"]["job"]) for r in rows] == [("cvat", "3", 12), ("cvat", "3", 11)]


@pytest.mark.parametrize(
    "misbehave, words",
    [
        ({"delay_s": 1.5}, "did not answer GET /api/jobs within FETCH_TIMEOUT_S=0.5"),
        ({"garbage": "/api/jobs"}, "not JSON"),
        ({"redirect": "/api/jobs"}, "redirect"),
        ({"project": "99"}, None),  # a project deleted since the webhook: its jobs list is empty
        ({"token": ""}, "CVAT_ACCESS_TOKEN is not set"),
        ({"url": "http://127.0.0.1:1"}, "cannot reach CVAT"),
    ],
)
def test_a_cvat_that_is_slow_gone_or_answers_garbage_skips_the_job_and_the_queue_goes_on(tmp_path, misbehave, words):
    stub, _ = stub_project()
    try:
        overrides = {"fetch_timeout_s": 0.5}
        if "token" in misbehave:
            overrides["cvat_access_token"] = misbehave["token"]
        if "url" in misbehave:
            overrides["cvat_url"] = misbehave["url"]
        settings = cvat_settings(tmp_path, stub, **overrides)
        for key in ("delay_s", "garbage", "redirect"):
            if key in misbehave:
                setattr(stub, key, misbehave[key])
        store = ModelStore(settings.model_dir)
        bad, _ = store.enqueue(misbehave.get("project", "3"), "CVAT job 12", platform="cvat", source={"job": 12})
        good, _ = store.enqueue("1", "START_TRAINING")
        steps = fake_steps(5.0, 4.0)
        steps.collect = None
        record = run_job(store, bad, settings, JobConfig(), steps)
        assert record["state"] == SKIPPED and store.current() == "base", record
        assert words is None or words in record["message"], record["message"]
        assert words is not None or "no usable annotations" in record["message"]
        log_text = (store.jobs_dir / f"{bad['id']}.log").read_text()
        assert words is None or words in log_text  # the job's log says it too
        ls_steps = copy.copy(steps)
        ls_steps.collect = lambda project, cfg: ([], {"tasks": 0})
        assert run_job(store, good, settings, JobConfig(), ls_steps)["state"] == SKIPPED  # the next job ran
    finally:
        stub.stop()
    assert not any("169.254" in path for path, _ in stub.requests)  # the redirect was never followed
