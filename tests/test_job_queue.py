"""Fine-tuning jobs on RQ (FINETUNE_QUEUE=rq, ml_backend/finetuning/job_queue.py): a job queued through a server runs
on a
worker process started separately, records and versions stay in MODEL_DIR, and a Redis that comes back empty
loses no job."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.finetuning.job_queue import QUEUE_NAME, SERIALIZER, queue_kind, rq_job_id
from ml_backend.finetuning.model_store import QUEUED, SKIPPED, ModelStore
from ml_backend.interactive.engine import Engine
from testkit.standins import DiskPredictor

from backend_helpers import StubLabelStudio, recorded

REPO = Path(__file__).resolve().parents[1]
START_TRAINING = recorded("webhook_start_training")


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_queue_kind_follows_the_session_store():
    assert queue_kind(Settings.from_env({})) == "file"  # the default: the file queue under MODEL_DIR
    assert queue_kind(Settings.from_env({"SESSION_STORE": "redis://r:6379/0"})) == "rq"
    assert queue_kind(Settings.from_env({"SESSION_STORE": "redis://r:6379/0", "FINETUNE_QUEUE": "file"})) == "file"
    with pytest.raises(ValueError, match="SESSION_STORE"):
        queue_kind(Settings.from_env({"FINETUNE_QUEUE": "rq"}))


def test_a_job_queued_through_the_server_runs_on_a_separate_worker_and_survives_an_empty_redis(redis_server, tmp_path):
    from rq import Queue
    from rq.job import Job

    model_dir = tmp_path / "models"
    settings = Settings.from_env(
        {
            "MODEL_DIR": str(model_dir),
            "SESSION_STORE": redis_server.url,
            "FINETUNE_WORKER": "external",
            "MODEL_WATCH_S": "0",
        }
    )
    settings.no_traffic_warning_s = 0
    app = create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))
    store = ModelStore(model_dir)
    redis = redis_server.client()
    queue = Queue(QUEUE_NAME, connection=redis, serializer=SERIALIZER)
    stub = StubLabelStudio({1: []}, {})  # project 1 has no annotations: the job ends skipped, untrained
    env = dict(
        os.environ,
        MODEL_DIR=str(model_dir),
        SESSION_STORE=redis_server.url,
        LABEL_STUDIO_URL=stub.url,
        LABEL_STUDIO_API_KEY="legacy-token-123",
        FINETUNE_NICE="0",
        FINETUNE_THREADS="1",
        PYTHONPATH=str(REPO),
    )

    def run_worker(log: Path) -> str:
        with open(log, "wb") as out:  # a separate process, as on another machine with the same Redis/MODEL_DIR
            done = subprocess.run(
                [sys.executable, "-m", "cli", "worker", "--once"],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=240,
            )
        text = log.read_text()
        assert done.returncode == 0, text[-3000:]
        return text

    try:
        with TestClient(app) as client:
            assert app.state.backend.finetune.queue is not None
            t0 = time.perf_counter()
            reply = client.post("/webhook", json=copy.deepcopy(START_TRAINING)).json()
            assert time.perf_counter() - t0 < 1.0  # Label Studio's webhook timeout
            first = reply["job"]
            assert reply["queued"] is True and store.read_job(first)["state"] == QUEUED
            assert _wait(lambda: queue.count == 1, 10), "the server did not put the job on the RQ queue"
            assert queue.job_ids == [rq_job_id(first)]

            log = run_worker(tmp_path / "worker1.log")
            record = store.read_job(first)
            assert record["state"] == SKIPPED and "no usable annotations" in record["message"], log[-2000:]
            assert [h["state"] for h in record["history"]] == ["queued", "running", "skipped"]
            assert record["pid"] != os.getpid()  # run by the worker's process, not the server's
            rq_job = Job.fetch(rq_job_id(first), connection=redis, serializer=SERIALIZER)
            assert rq_job.get_status() == "finished" and rq_job.return_value() == SKIPPED
            assert queue.count == 0

            second = client.post("/webhook", json=copy.deepcopy(START_TRAINING)).json()["job"]
            assert second != first and _wait(lambda: queue.count == 1, 10)
        # The server is gone and Redis restarts empty (no persistence): the record in MODEL_DIR is the source of
        # truth, and the worker puts it back on the queue before it works.
        redis.flushall()
        assert queue.count == 0 and store.read_job(second)["state"] == QUEUED
        log = run_worker(tmp_path / "worker2.log")
        assert f"{second} put on the RQ queue" in log
        assert store.read_job(second)["state"] == SKIPPED
        assert store.current() == "base" and store.versions() == []
    finally:
        stub.stop()
