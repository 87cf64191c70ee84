"""Active-learning fine-tuning (ml_backend/finetuning/server.py, ml_backend/finetuning/worker.py,
model/training/finetune.py):
webhooks only record, the N-updates rule, the job state machine on disk, the promotion rule, manifests, rollback,
hot swap, and a worker SIGKILLed while it writes a checkpoint."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.finetuning.model_store import (
    BASE,
    DONE,
    FAILED,
    HOLD_PARTIAL_WRITE_ENV,
    INTERRUPTED,
    QUEUED,
    SKIPPED,
    ModelStore,
    served_checkpoint,
)
from ml_backend.finetuning.worker import (
    JobConfig,
    JobSteps,
    LabelStudioAPI,
    TaskData,
    collect_annotations,
    run_job,
    split_tasks,
    worker_loop,
)
from ml_backend.interactive.engine import Engine
from ml_backend.masks.rle import mask2rle
from testkit.standins import DiskPredictor

from backend_helpers import StubLabelStudio, recorded

REPO = Path(__file__).resolve().parents[1]


def settings_for(model_dir: Path, **overrides) -> Settings:
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    settings.model_dir = str(model_dir)
    settings.finetune_worker = "external"  # no worker process unless a test starts one
    settings.model_watch_s = 0
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def disk_app(model_dir: Path, **overrides):
    settings = settings_for(model_dir, **overrides)
    return create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# --- webhooks ------------------------------------------------------------------------------------


def test_webhook_answers_fast_and_only_records(tmp_path):
    with TestClient(disk_app(tmp_path)) as client:
        for name in ("webhook_annotation_created", "webhook_annotation_updated", "webhook_annotations_deleted"):
            t0 = time.perf_counter()
            reply = client.post("/webhook", json=recorded(name))
            assert time.perf_counter() - t0 < 1.0  # Label Studio's webhook timeout
            assert reply.status_code == 200 and reply.json()["finetune"] == "recorded", reply.text
        assert "job" not in reply.json()  # START_TRAINING_EACH_N_UPDATES=0: no job from updates
    events = [json.loads(line) for line in (tmp_path / "finetune" / "events.jsonl").read_text().splitlines()]
    assert [e["action"] for e in events] == ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    assert events[0]["project"] == "1" and events[0]["annotation"] == 1 and events[2]["annotations"] == [1]
    assert "token" not in json.dumps(events)  # ids only, never the payload (which carries the project token)
    assert ModelStore(tmp_path).counters()["1"]["updates"] == 3
    assert ModelStore(tmp_path).jobs() == [] and not (tmp_path / "versions").exists()


def test_start_training_enqueues_and_starts_the_worker_off_the_request_path(tmp_path, monkeypatch):
    from ml_backend.finetuning.server import FinetuneServer

    started = threading.Event()

    def slow_spawn(self):  # starting a process may be slow: the webhook must not wait for it
        time.sleep(1.5)
        started.set()

    monkeypatch.setattr(FinetuneServer, "_spawn", slow_spawn)
    with TestClient(disk_app(tmp_path, finetune_worker="spawn")) as client:
        t0 = time.perf_counter()
        reply = client.post("/webhook", json=recorded("webhook_start_training")).json()
        assert time.perf_counter() - t0 < 1.0
        assert reply["queued"] is True and reply["job_state"] == QUEUED
        again = client.post("/train", json={"project": 1}).json()  # older LS: /train = START_TRAINING
        assert again["job"] == reply["job"] and again["queued"] is False  # coalesced with the queued job
        assert started.wait(10)
    [job] = ModelStore(tmp_path).jobs()
    assert job["state"] == QUEUED and job["project"] == "1" and job["reason"] == "START_TRAINING"


def test_every_n_updates_rule_per_project_and_project_checks(tmp_path):
    with TestClient(disk_app(tmp_path, start_training_each_n_updates=3, finetune_projects=("1", "2"))) as client:
        created = recorded("webhook_annotation_created")
        replies = [client.post("/webhook", json=created).json() for _ in range(3)]
        assert [("job" in r) for r in replies] == [False, False, True]
        assert replies[2]["queued"] is True and replies[2]["updates_since_last_job"] == 0
        other = copy.deepcopy(created)
        other["project"]["id"] = 2
        assert "job" not in client.post("/webhook", json=other).json()  # counted per project
        more = [client.post("/webhook", json=recorded("webhook_annotations_deleted")).json() for _ in range(3)]
        assert more[2]["job"] == replies[2]["job"] and more[2]["queued"] is False  # one queued job per project
        foreign = copy.deepcopy(created)
        foreign["project"]["id"] = 7
        assert client.post("/webhook", json=foreign).json()["finetune"] == "ignored"  # not in FINETUNE_PROJECTS
        no_brush = copy.deepcopy(created)
        no_brush["project"]["label_config"] = (
            '<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
        )
        assert "BrushLabels or PolygonLabels" in client.post("/webhook", json=no_brush).json()["reason"]
        nameless = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}
        assert client.post("/webhook", json=nameless).json()["finetune"] == "ignored"
    assert [j["project"] for j in ModelStore(tmp_path).jobs()] == ["1"]


def test_finetune_webhooks_with_malformed_parts_never_5xx(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.recursive(
        # integers within 64 bits: longer ones are a 400 for any body (ml_backend/jsonbody.py)
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=8,
    )
    bodies = st.fixed_dictionaries(
        {
            "action": st.sampled_from(
                ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"]
            )
        },
        optional={
            "project": st.one_of(values, st.fixed_dictionaries({"id": values, "label_config": values})),
            "annotation": st.one_of(values, st.fixed_dictionaries({"id": values, "task": values, "project": values})),
            "annotations": values,
        },
    )
    with TestClient(disk_app(tmp_path, start_training_each_n_updates=2), raise_server_exceptions=False) as client:

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies)
        def check(body):
            reply = client.post("/webhook", json=body)
            assert reply.status_code == 200, reply.text

        check()


def test_an_unusable_model_dir_is_reported_not_a_500(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with TestClient(disk_app(not_a_dir)) as client:
        reply = client.post("/webhook", json=recorded("webhook_start_training"))
        assert reply.status_code == 200 and reply.json()["finetune"] == "error"


def test_without_model_dir_training_stays_off(tmp_path):
    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    app = create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))
    with TestClient(app) as client:
        assert (
            client.post("/webhook", json=recorded("webhook_start_training")).json()["training"]
            == "not supported online"
        )
        assert client.get("/versions").json()["versions"] == ["disk"]


# --- jobs: state machine, promotion rule, manifest -------------------------------------------------------


def _tasks(n: int = 4) -> list[TaskData]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mask = np.zeros((40, 50), bool)
        mask[5 + i : 25 + i, 10:30] = True
        out.append(TaskData(100 + i, 10 + i, rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), [mask, ~mask]))
    return out


def fake_steps(before: float, after: float, tasks: list[TaskData] | None = None, seen: dict | None = None) -> JobSteps:
    seen = seen if seen is not None else {}

    def collect(project, cfg):
        return (list(tasks) if tasks is not None else _tasks()), {"tasks": 4, "cancelled": 1, "empty": 2}

    def evaluate(net, samples):
        noc = before if net == "parent" or isinstance(net, Path) else after
        return {"noc85": noc, "noc90": noc + 1, "instances": len(samples)}

    def train(init, data):
        seen["init"], seen["train_tasks"] = init, [t.task_id for t in data]
        return "trained", {"step": 5, "loss": 0.5, "wall_time": 1.0, "stopped": False}

    def save(net, path, metadata):
        path.write_bytes(b"weights of " + str(net).encode() + json.dumps(metadata).encode())

    return JobSteps(collect=collect, evaluate=evaluate, train=train, save=save)


@pytest.fixture()
def base_settings(tmp_path):
    """MODEL_DIR with a (fake) base checkpoint file for the jobs that never load a network."""
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"base weights")
    return settings_for(tmp_path / "models", model_checkpoint=str(base))


def test_job_state_machine_is_persisted(base_settings):
    store = ModelStore(base_settings.model_dir)
    job, created = store.enqueue("1", "START_TRAINING")
    assert created and store.read_job(job["id"])["state"] == QUEUED
    seen = {}
    assert worker_loop(base_settings, JobConfig(), once=True, steps=fake_steps(5, 4, seen=seen)) == 1
    record = ModelStore(base_settings.model_dir).read_job(job["id"])  # as a restarted process reads it
    assert [h["state"] for h in record["history"]] == ["queued", "running", "done"]
    assert record["promoted"] is True and record["parent"].startswith("adaptiveclick-base-")
    assert record["metrics"]["before"]["noc85"] == 5 and record["metrics"]["after"]["noc85"] == 4
    assert set(record["split"]["val_tasks"]).isdisjoint(record["split"]["train_tasks"])
    assert seen["train_tasks"] == record["split"]["train_tasks"] and Path(seen["init"]).name == "base.safetensors"
    assert (Path(base_settings.model_dir) / "jobs" / f"{job['id']}.log").is_file()
    # A job left "running" by a worker that died is marked interrupted by the next worker; the queue goes on.
    stale, _ = store.enqueue("1", "START_TRAINING")
    store.update_job(stale["id"], state="running", pid=999999)
    nxt, _ = store.enqueue("1", "START_TRAINING")
    worker_loop(base_settings, JobConfig(), once=True, steps=fake_steps(5, 5))
    assert (
        store.read_job(stale["id"])["state"] == INTERRUPTED and "not changed" in store.read_job(stale["id"])["message"]
    )
    assert store.read_job(nxt["id"])["state"] == DONE


def test_promotion_rule_worse_is_not_promoted_and_ties_are(base_settings):
    store = ModelStore(base_settings.model_dir)
    worse, _ = store.enqueue("1", "START_TRAINING")
    record = run_job(store, worse, base_settings, JobConfig(), fake_steps(before=3.0, after=3.5))
    assert record["state"] == DONE and record["promoted"] is False and "worse" in record["message"]
    assert store.current() == "base" and store.versions() == []
    tie, _ = store.enqueue("1", "START_TRAINING")
    record = run_job(store, tie, base_settings, JobConfig(), fake_steps(before=3.0, after=3.0))
    assert record["promoted"] is True and store.current() == record["version"]
    assert served_checkpoint(base_settings)[0] == record["version"]


def test_manifest_contents(base_settings):
    store = ModelStore(base_settings.model_dir)
    job, _ = store.enqueue("1", "START_TRAINING")
    record = run_job(store, job, base_settings, JobConfig(), fake_steps(before=6.0, after=4.5))
    version = record["version"]
    folder = Path(base_settings.model_dir) / "versions" / version
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == version and version.startswith("adaptiveclick-ft0001-")
    assert manifest["parent"] == record["parent"] and manifest["job"] == job["id"] and manifest["project"] == "1"
    assert manifest["metrics"]["before"]["noc85"] == 6.0 and manifest["metrics"]["after"]["noc85"] == 4.5
    assert manifest["data"]["tasks"] == 4 and manifest["data"]["val_tasks"] >= 1
    assert manifest["data"]["train_tasks"] + manifest["data"]["val_tasks"] == 4
    assert manifest["data"]["ls_cancelled"] == 1 and manifest["data"]["ls_empty"] == 2
    assert manifest["created"] and manifest["sha256"] == sha(folder / "model.safetensors")
    assert manifest["training"]["steps"] == 5
    assert not list((Path(base_settings.model_dir) / "versions").glob(".staging-*"))
    # The second version's parent is the first.
    job2, _ = store.enqueue("1", "START_TRAINING")
    record2 = run_job(store, job2, base_settings, JobConfig(), fake_steps(before=4.5, after=4.0))
    assert store.manifest(record2["version"])["parent"] == version
    assert record2["version"].startswith("adaptiveclick-ft0002-")


def test_empty_project_and_too_few_tasks_end_cleanly(base_settings):
    store = ModelStore(base_settings.model_dir)
    job, _ = store.enqueue("1", "START_TRAINING")
    record = run_job(store, job, base_settings, JobConfig(), fake_steps(1, 1, tasks=[]))
    assert record["state"] == SKIPPED and "no usable annotations" in record["message"]
    job, _ = store.enqueue("1", "START_TRAINING")
    record = run_job(store, job, base_settings, JobConfig(), fake_steps(1, 1, tasks=_tasks(1)))
    assert record["state"] == SKIPPED and "FINETUNE_MIN_TASKS" in record["message"]
    assert store.current() == "base"


def test_a_crashing_job_fails_and_the_next_one_runs(base_settings):
    store = ModelStore(base_settings.model_dir)
    job, _ = store.enqueue("1", "START_TRAINING")
    steps = fake_steps(2, 1)

    def boom(init, data):
        raise RuntimeError("simulated crash")

    steps.train = boom
    record = run_job(store, job, base_settings, JobConfig(), steps)
    assert record["state"] == FAILED and "simulated crash" in record["message"] and store.current() == "base"
    job2, _ = store.enqueue("1", "START_TRAINING")
    assert run_job(store, job2, base_settings, JobConfig(), fake_steps(2, 1))["promoted"] is True


def test_validation_split_is_deterministic_by_task_id():
    tasks = _tasks(10)
    train, val = split_tasks("3", tasks, 0.3)
    again_train, again_val = split_tasks("3", list(reversed(tasks)), 0.3)
    assert {t.task_id for t in val} == {t.task_id for t in again_val} and val and train
    assert len(train) + len(val) == 10
    assert len(val) == 3  # round(0.3 * 10), whatever the hashes say for so few tasks
    train2, val2 = split_tasks("3", tasks[:2], 0.0)  # at least one task on each side
    assert len(train2) == 1 and len(val2) == 1
    many = [TaskData(i, None, tasks[0].image, tasks[0].masks) for i in range(1, 25)]
    assert len(split_tasks("1", many, 0.2)[1]) == 5
    # Adding tasks never moves a held-out task whose hash is below the fraction into training.
    bigger = many + [TaskData(i, None, tasks[0].image, tasks[0].masks) for i in range(25, 200)]
    held_big = {t.task_id for t in split_tasks("1", bigger, 0.2)[1]}
    from ml_backend.finetuning.worker import _task_hash

    assert {i for i in range(1, 200) if _task_hash("1", i) < int(0.2 * (1 << 48))} <= held_big


# --- Label Studio export -> instances (against a stub Label Studio) ----------------------------------------


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _brush(mask: np.ndarray, rid: str) -> dict:
    h, w = mask.shape
    return {
        "id": rid,
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]},
    }


def _polygon(corners: list[tuple[int, int]], w: int, h: int, rid: str) -> dict:
    """A polygonlabels result with the (x, y) pixel corners, in the export's percent."""
    return {
        "id": rid,
        "from_name": "poly",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": w,
        "original_height": h,
        "value": {"points": [[100 * x / w, 100 * y / h] for x, y in corners], "polygonlabels": ["Object"]},
    }


def _stub_project(n_tasks: int = 2) -> StubLabelStudio:
    rng = np.random.default_rng(3)
    tasks, images = [], {}
    for i in range(n_tasks):
        h, w = 96, 128
        image = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        a = np.zeros((h, w), bool)
        a[10:50, 10:60] = True
        b = np.zeros((h, w), bool)
        b[40:90, 70:120] = True
        image[a] = 220
        image[b] = (30, 200, 60)
        url = f"/data/upload/1/img{i}.png"
        images[url] = _png(image)
        tasks.append(
            {
                "id": i + 1,
                "data": {"image": url},
                "annotations": [
                    {"id": 10 * i + 1, "was_cancelled": True, "result": [_brush(a, "c")], "updated_at": "2026-01-03"},
                    {"id": 10 * i + 2, "was_cancelled": False, "result": [], "updated_at": "2026-01-04"},
                    {
                        "id": 10 * i + 3,
                        "was_cancelled": False,
                        "ground_truth": False,
                        "updated_at": "2026-01-02",
                        "result": [
                            _brush(a, "a"),
                            _polygon([(70, 40), (120, 40), (120, 90), (70, 90)], w, h, "b"),  # region b's outline
                            _brush(np.zeros((h, w), bool), "z"),
                            dict(_polygon([(1, 1), (5, 1), (5, 5)], w, h, "bad"), value={"polygonlabels": ["Object"]}),
                        ],
                    },
                ],
            }
        )
    return StubLabelStudio({1: tasks, 2: []}, images)


def test_collect_annotations_from_the_label_studio_api():
    from ml_backend.media.fetcher import MediaFetcher

    stub = _stub_project()
    try:
        settings = Settings.from_env({})
        settings.label_studio_url, settings.label_studio_api_key = stub.url, "legacy-token-123"
        fetcher = MediaFetcher(settings)
        tasks, stats = collect_annotations(LabelStudioAPI(fetcher), fetcher, "1", JobConfig())
        assert [t.task_id for t in tasks] == [1, 2] and [t.annotation_id for t in tasks] == [3, 13]
        assert all(len(t.masks) == 2 and t.image.shape == (96, 128, 3) for t in tasks)  # two regions, empty dropped
        assert tasks[0].masks[0][20, 20] and not tasks[0].masks[0][60, 100] and tasks[0].masks[1][60, 100]
        assert abs(int(tasks[0].masks[1].sum()) - 50 * 50) < 2 * 50 + 2 * 50  # the polygon, within its outline
        assert stats["cancelled"] == 2 and stats["empty"] == 2 and stats["empty_regions"] == 2
        assert all(auth == "Token legacy-token-123" for _, auth in stub.requests)
        assert collect_annotations(LabelStudioAPI(fetcher), fetcher, "2", JobConfig())[0] == []
    finally:
        stub.stop()


def test_memory_source_feeds_the_training_dataset():
    from model.training.data import AugmentConfig, ClickTrainDataset
    from model.training.finetune import memory_source, pack_instances

    tasks = _tasks(2)
    layers, objects = pack_instances(tasks[0].masks + [tasks[0].masks[0]])  # an overlapping third instance
    assert layers.shape[2] == 2 and objects == [(0, 1), (0, 2), (1, 1)]
    source = memory_source([(t.image, t.masks) for t in tasks])
    dataset = ClickTrainDataset([source], AugmentConfig(crop_size=32, min_object_px=10))
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 32) and sample["gt"].sum() > 0 and sample["points"].shape[1] == 3


def test_finetune_amp_setting_is_parsed_and_checked():
    assert JobConfig.from_env({}).train.amp == "auto"
    assert JobConfig.from_env({"FINETUNE_AMP": " BF16 "}).train.amp == "bf16"
    with pytest.raises(ValueError, match="FINETUNE_AMP='fp8' must be one of auto, fp32, bf16, fp16"):
        JobConfig.from_env({"FINETUNE_AMP": "fp8"})


def test_finetune_zoom_in_share_is_parsed_and_checked():
    assert JobConfig.from_env({"FINETUNE_ZOOM_IN_PROB": "0.25"}).train.zoom_in_prob == 0.25
    assert JobConfig.from_env({"FINETUNE_ZOOM_IN_PROB": "0"}).train.zoom_in_prob == 0.0
    for bad, message in (("1.5", "must be a probability"), ("half", "must be a number")):
        with pytest.raises(ValueError, match=f"FINETUNE_ZOOM_IN_PROB.*{message}"):
            JobConfig.from_env({"FINETUNE_ZOOM_IN_PROB": bad})


def test_finetune_with_bf16_autocast_trains_fp32_weights(tmp_path, tiny_model):
    import torch

    from model.checkpoint import save_checkpoint
    from model.training.finetune import finetune, finetune_config, memory_source

    init = save_checkpoint(tiny_model, tmp_path / "init.safetensors")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, (240, 240, 3), dtype=np.uint8)
    mask = np.zeros((240, 240), bool)
    mask[60:170, 70:190] = True
    image[mask] += 150
    source = memory_source([(image, [mask])])
    net, info = finetune(
        init,
        source,
        finetune_config(steps=2, batch_size=1, lr=1e-3, threads=1, device="cpu", amp="bf16", zoom_in_prob=1.0),
        out=tmp_path / "run",
    )
    assert info["step"] == 2 and info["finished"] and np.isfinite(info["loss"]) and info["autocast"] == "bfloat16"
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["zoom_in_prob"] == 1.0  # reaches the data
    before = dict(tiny_model.named_parameters())
    changed = [n for n, p in net.named_parameters() if not torch.equal(p, before[n].cpu())]
    assert all(p.dtype == torch.float32 for p in net.parameters()) and changed


# --- versions: hot swap, rollback ------------------------------------------------------------------------


@pytest.fixture()
def tiny_store(tmp_path, tiny_model):
    """MODEL_DIR + a base checkpoint (the golden tiny model) + two promoted versions (perturbed copies)."""
    import torch

    from model.checkpoint import save_checkpoint

    base = save_checkpoint(tiny_model, tmp_path / "base.safetensors")
    store = ModelStore(tmp_path / "models")
    versions = []
    for k in (1, 2):
        net = copy.deepcopy(tiny_model)
        with torch.no_grad():
            for param in net.parameters():
                param.add_(0.01 * k)
        job, _ = store.enqueue("1", "test")
        versions.append(
            store.write_version(
                job["id"], lambda p, n=net: save_checkpoint(n, p), {"parent": "x", "metrics": {}}, make_current=False
            )
        )
    return base, store, versions


class OneImageFetcher:
    """Any URL -> one synthetic 481x321 image (the recorded clicks' size)."""

    def __new__(cls, settings):
        from ml_backend.media.fetcher import MediaFetcher

        rng = np.random.default_rng(1)
        image = rng.integers(0, 60, (321, 481, 3), dtype=np.uint8)
        image[80:240, 150:350] = 220
        data = _png(image)

        class Fetcher(MediaFetcher):
            def fetch(self, url, task_id=None):
                return data

        return Fetcher(settings)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_hot_swap_without_restart(tiny_store):
    base, store, (v1, v2) = tiny_store
    settings = settings_for(store.root, model_checkpoint=str(base), device="cpu", model_watch_s=0.2)
    app = create_app(settings, fetcher=OneImageFetcher(settings))
    click = recorded("predict_interactive_1click")
    with TestClient(app) as client:
        backend = app.state.backend
        assert backend.engine.ready.wait(120) and backend.engine.error is None
        base_version = client.post("/setup", json=recorded("setup")).json()["model_version"]
        assert base_version.startswith("adaptiveclick-base-") and base_version == backend.engine.base_version
        first = client.post("/predict", json=click)
        assert first.status_code == 200 and first.json()["results"][0]["model_version"] == base_version
        assert backend.cache.stats()["sessions"] == 1

        store.set_current(v1)  # what a promoting job does
        with backend.engine.lock:  # a click in progress: the swap waits for the inference lock
            time.sleep(3)
            assert backend.engine.model_version == base_version
        assert _wait(lambda: backend.engine.model_version == v1, 60)
        assert client.post("/setup", json=recorded("setup")).json()["model_version"] == v1
        assert client.get("/health").json()["model_version"] == v1
        assert client.get("/versions").json() == {"versions": [base_version, v1, v2], "model_version": v1}
        assert backend.cache.stats()["sessions"] == 0  # sessions of the old model were dropped
        second = client.post("/predict", json=click)
        assert second.json()["results"][0]["model_version"] == v1 and "session" not in second.headers["x-cache"]

        store.set_current("base")  # rollback, still without a restart
        assert _wait(lambda: backend.engine.model_version == base_version, 60)
        assert client.post("/predict", json=click).json()["model_version"] == base_version


def test_rollback_and_pin(tiny_store, capsys):
    from cli import main

    base, store, (v1, v2) = tiny_store
    settings = settings_for(store.root, model_checkpoint=str(base))
    assert served_checkpoint(settings)[0] == BASE  # no pointer: the base model
    store.set_current(v2)
    assert served_checkpoint(settings)[0] == v2
    assert main(["versions", "rollback", v1, "--model-dir", str(store.root)]) == 0
    assert store.current() == v1 and served_checkpoint(settings)[0] == v1
    assert main(["versions", "rollback", "nope", "--model-dir", str(store.root)]) == 2  # unknown: refused
    assert store.current() == v1
    settings.model_version_pin = v2
    assert served_checkpoint(settings)[0] == v2  # the pin wins over current
    settings.model_version_pin = "base"
    assert served_checkpoint(settings)[0] == BASE
    settings.model_version_pin = "missing-version"
    assert served_checkpoint(settings)[0] == v1  # an unknown pin is reported and ignored
    assert main(["versions", "rollback", "base", "--model-dir", str(store.root)]) == 0
    assert store.current() == "base"
    capsys.readouterr()
    assert main(["versions", "list", "--model-dir", str(store.root)]) == 0
    listing = capsys.readouterr().out
    assert "* base" in listing and v1 in listing and v2 in listing


# --- failure isolation: SIGKILL while the worker writes its checkpoint --------------------------------------


def test_worker_killed_mid_write_leaves_the_served_model_intact(tiny_store, tmp_path):
    base, store, (v1, _v2) = tiny_store
    store.set_current(v1)
    served_files = tree_digest(store.versions_dir)
    stub = _stub_project(3)
    job, _ = store.enqueue("1", "START_TRAINING")
    env = dict(
        os.environ,
        MODEL_DIR=str(store.root),
        MODEL_CHECKPOINT=str(base),
        LABEL_STUDIO_URL=stub.url,
        LABEL_STUDIO_API_KEY="legacy-token-123",
        DEVICE="cpu",
        FINETUNE_STEPS="1",
        FINETUNE_BATCH_SIZE="1",
        FINETUNE_MAX_CLICKS="1",
        FINETUNE_THREADS="1",
        FINETUNE_NICE="0",
        FINETUNE_MIN_INSTANCE_PX="10",
        PYTHONPATH=str(REPO),
        **{HOLD_PARTIAL_WRITE_ENV: "300"},
    )
    log_path = tmp_path / "worker.log"
    partial = store.versions_dir / f".staging-{job['id']}" / ".model.safetensors.partial"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--once"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert _wait(lambda: partial.exists() or proc.poll() is not None, 240), log_path.read_text()[-3000:]
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert store.read_job(job["id"])["state"] == "running"
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: the partial file is on disk, the version not yet complete
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        stub.stop()
    settings = settings_for(store.root, model_checkpoint=str(base))
    # The served version, its files and the pointer are untouched; the job record says "running" until a restart.
    assert store.current() == v1 and served_checkpoint(settings)[0] == v1
    assert {k: v for k, v in tree_digest(store.versions_dir).items() if not k.startswith(".staging-")} == served_files
    assert len(store.versions()) == 2  # the half-written one is not listed
    assert store.read_job(job["id"])["state"] == "running"
    # The next worker marks it interrupted, removes the half-written folder, and runs the next job.
    job2, _ = store.enqueue("1", "START_TRAINING")
    assert worker_loop(settings, JobConfig(), once=True, steps=fake_steps(2, 1)) == 1
    record = store.read_job(job["id"])
    assert record["state"] == INTERRUPTED and "not changed" in record["message"]
    assert [h["state"] for h in record["history"]] == ["queued", "running", "interrupted"]
    assert not list(store.versions_dir.glob(".staging-*"))
    assert store.read_job(job2["id"])["state"] == DONE and store.read_job(job2["id"])["promoted"] is True


def test_every_consumer_gets_the_same_served_checkpoint(tiny_store, tmp_path, monkeypatch, capsys):
    """One answer to "which checkpoint": the server, the worker and `predict` agree, for the base and a version."""
    import shutil

    import cv2

    from cli import main
    from ml_backend.finetuning.worker import _served

    base, store, (v1, _) = tiny_store
    base = Path(shutil.copy(base, store.root / "base.safetensors"))
    settings = settings_for(store.root, model_checkpoint=base.name)  # relative: found in MODEL_DIR
    assert settings.base_checkpoint == base
    assert served_checkpoint(settings) == (BASE, base)
    store.set_current(v1)
    assert served_checkpoint(settings) == (v1, store.version_path(v1))
    assert Engine(settings)._checkpoint_path() == store.version_path(v1)
    assert _served(settings, store) == (v1, store.version_path(v1))  # the worker fine-tunes what is served
    monkeypatch.setenv("MODEL_DIR", str(store.root))
    monkeypatch.setenv("MODEL_CHECKPOINT", base.name)
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 128, np.uint8))
    assert main(["predict", str(image), "--click", "20,30", "--out", str(tmp_path / "m.png")]) == 0
    assert str(store.version_path(v1)) in capsys.readouterr().out  # predict measures what serve serves


def test_a_jobs_training_settings_are_a_train_config_with_the_fine_tuning_defaults():
    from dataclasses import fields

    from model.training.finetune import FINETUNE_DEFAULTS, finetune_config
    from model.training.trainer import TrainConfig

    cfg = JobConfig.from_env({"FINETUNE_STEPS": "7", "FINETUNE_LR": "1e-4", "FINETUNE_THREADS": "1"}).train
    assert isinstance(cfg, TrainConfig) and (cfg.steps, cfg.lr, cfg.threads) == (7, 1e-4, 1)
    assert cfg.batch_size == TrainConfig().batch_size and JobConfig().train == finetune_config()
    # The fine-tuning defaults are declared once: where finetune_config() departs from TrainConfig is exactly
    # FINETUNE_DEFAULTS (and the in-memory data).
    plain, tuned = TrainConfig(), finetune_config()
    departs = {f.name for f in fields(TrainConfig) if getattr(plain, f.name) != getattr(tuned, f.name)}
    assert departs == set(FINETUNE_DEFAULTS) | {"data"}


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
def test_the_worker_yields_the_cpu_to_serving():
    """The job's process is niced and in the idle scheduling class, its torch threads as configured (in a child
    process: a test process must not lower its own priority)."""
    probe = (
        "import os, torch\n"
        "from ml_backend.finetuning.worker import JobConfig, yield_to_serving\n"
        "cfg = JobConfig.from_env({'FINETUNE_NICE': '7', 'FINETUNE_THREADS': '1'})\n"
        "before = os.nice(0)\n"
        "yield_to_serving(cfg)\n"
        "print(os.nice(0) - before, os.sched_getscheduler(0) == os.SCHED_IDLE, torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["7", "True", "1"]
