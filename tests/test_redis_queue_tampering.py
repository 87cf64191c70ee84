"""Whoever can write to the Redis of SESSION_STORE cannot run code in ``serve`` or in the fine-tuning worker
(issue 37, item 1): the RQ queue serialises as JSON (a planted pickled ``meta`` or ``result`` is never unpickled
by the server's reconcile), and the worker runs only the one job function, with one job record id."""

from __future__ import annotations

import json
import os
import pickle
import zlib

import pytest

from ml_backend.config import Settings
from ml_backend.finetuning.job_queue import QUEUE_NAME, RQ_FUNCTION, RefusedJob, RQJobs, rq_job_id, valid_job_id
from ml_backend.finetuning.model_store import ModelStore


class _Plant:
    """Unpickling this creates ``path``: the marker of code run from Redis."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def planted_callback(job, connection, result, *args):
    """What a planted ``on_success`` names: it must never run."""
    open(os.environ["PLANTED_MARKER"], "w").close()


def _settings(redis_server, tmp_path) -> Settings:
    return Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "SESSION_STORE": redis_server.url})


def test_reconcile_never_unpickles_a_planted_job_hash(redis_server, tmp_path):
    marker = tmp_path / "ran-from-meta"
    store = ModelStore(tmp_path / "models")
    job, _ = store.enqueue("1", "test")  # a queued record: reconcile looks its RQ job up (Job.fetch)
    redis = redis_server.client()
    jobs = RQJobs(_settings(redis_server, tmp_path))
    jobs.reconcile(store)  # the record is on the queue; now someone with Redis access edits its job hash
    planted = pickle.dumps(_Plant(str(marker)))
    redis.hset(f"rq:job:{rq_job_id(job['id'])}", mapping={"meta": planted, "result": planted, "status": "finished"})
    jobs.reconcile(store)  # what the server does every 30 s
    assert not marker.exists(), "a pickled meta planted in Redis ran in the server"
    assert redis.lrange(f"rq:queue:{QUEUE_NAME}", 0, -1)  # the record went back on the queue, as JSON
    data = zlib.decompress(redis.hget(f"rq:job:{rq_job_id(job['id'])}", "data"))
    assert json.loads(data)[0] == RQ_FUNCTION and json.loads(data)[2] == [job["id"]]  # JSON, not a pickle


def test_the_worker_runs_no_other_function_and_no_other_argument(redis_server, tmp_path):
    from rq import Queue
    from rq.job import Job

    marker = tmp_path / "ran-from-queue"
    settings = _settings(redis_server, tmp_path)
    ModelStore(settings.model_dir)
    redis = redis_server.client()
    as_json = Queue(QUEUE_NAME, connection=redis, serializer="json")
    planted = [
        as_json.enqueue_call("os.system", args=(f"touch {marker}",)),
        as_json.enqueue_call("builtins.open", args=(str(marker), "w")),
        as_json.enqueue_call(RQ_FUNCTION, args=("../../etc/passwd",)),
        as_json.enqueue_call(RQ_FUNCTION, args=("job-000001",), kwargs={"x": 1}),
        as_json.enqueue_call(RQ_FUNCTION, args=("job-000001",), on_success=f"{__name__}.planted_callback"),
        Queue(QUEUE_NAME, connection=redis).enqueue_call("os.system", args=(f"touch {marker}",)),  # pickled
    ]
    os.environ.update(MODEL_DIR=str(settings.model_dir), PLANTED_MARKER=str(marker))
    try:
        RQJobs(settings).work(once=True)  # a burst worker: takes every job on the queue, then returns
    finally:
        os.environ.pop("MODEL_DIR", None)
        os.environ.pop("PLANTED_MARKER", None)
    assert not marker.exists(), "the worker ran a function planted in Redis"
    for job in planted[:4]:
        status = Job.fetch(job.id, connection=redis, serializer="json").get_status()
        assert str(getattr(status, "value", status)) == "failed", (job.func_name, status)


def test_a_job_record_id_is_the_only_argument():
    assert valid_job_id("job-000012") == "job-000012"
    for bad in ("../x", "job-1; rm", 12, None, ["job-000001"], "job-" + "1" * 40):
        with pytest.raises(RefusedJob):
            valid_job_id(bad)
