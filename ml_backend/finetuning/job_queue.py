"""Where fine-tuning jobs wait for a worker: the file queue under ``MODEL_DIR`` (default) or RQ on Redis.

Redis holds data only: jobs are serialised as JSON (never pickle), name the one job function with one job record
id as their argument, and a worker refuses any other job it finds (``FinetuneJob``); docs/security.md says what
write access to that Redis still allows.

The job *records* always stay in ``MODEL_DIR/jobs`` (``model_store.ModelStore``: states, history, metrics), and
versions and the ``current`` pointer keep their atomic rules there, so ``adaptiveclick versions``, recovery of
a dead worker's job and the hot swap work the same with either queue. What RQ adds (``FINETUNE_QUEUE=rq``, or
``auto`` with ``SESSION_STORE`` on Redis) is delivery: the server puts each queued job on the RQ queue
``adaptiveclick-finetune`` of that Redis, and ``adaptiveclick worker`` on any machine that sees the same Redis
and the same ``MODEL_DIR`` (a GPU box with the shared volume) takes it.

Nothing is lost when Redis restarts empty: the records are the source of truth, and queued records missing from
RQ are put back (:meth:`RQJobs.reconcile`) when the server starts, on every Start Training, every
``RECONCILE_S`` seconds in the server, and when a worker starts. A record delivered twice runs once: the RQ job
takes the ``MODEL_DIR`` worker lock (one job at a time, as with the file queue) and runs the record only while
it is still ``queued``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from ..config import Settings
from .model_store import QUEUED, ModelStore

log = logging.getLogger("adaptiveclick.finetune")
QUEUE_NAME = "adaptiveclick-finetune"
RQ_FUNCTION = "ml_backend.finetuning.worker.run_rq_job"  # by name: this module never imports the worker
RECONCILE_S = 30.0
RESULT_TTL_S = 7 * 24 * 3600  # RQ's own bookkeeping of finished jobs; the records in MODEL_DIR stay forever
JOB_ID = re.compile(r"^job-[0-9]{6,12}$")  # what ModelStore names its records; the only argument a job takes
SERIALIZER = "json"  # RQ's JSONSerializer: nothing read from Redis is unpickled (RQ's default is pickle)
# RQ statuses under which a job will still run (anything else: finished, failed, stopped, canceled, gone).
_PENDING = ("created", "queued", "started", "deferred", "scheduled", "rate_limited")


def queue_kind(settings: Settings) -> str:
    """``rq`` or ``file``: ``FINETUNE_QUEUE``, where ``auto`` means RQ exactly when ``SESSION_STORE`` is Redis."""
    mode = settings.finetune_queue or "auto"
    if mode == "auto":
        return "rq" if settings.session_store else "file"
    if mode == "rq" and not settings.session_store:
        raise ValueError("FINETUNE_QUEUE=rq needs SESSION_STORE=redis://... (the Redis the queue lives in)")
    return mode


def rq_job_id(job_id: str) -> str:
    return f"adaptiveclick-{job_id}"


class RefusedJob(Exception):
    """An RQ job this queue never enqueues (another function, arguments or callbacks): planted in Redis."""


def valid_job_id(value: object) -> str:
    """``value`` when it names a job record (``job-000123``), else :class:`RefusedJob`."""
    if not isinstance(value, str) or not JOB_ID.match(value):
        raise RefusedJob(f"not a job record id: {str(value)[:40]!r}")
    return value


def _finetune_job_class() -> type:
    """RQ's Job, restricted to what :meth:`RQJobs.submit` enqueues: ``RQ_FUNCTION`` by name with one job record id,
    no instance, no keyword arguments, no callbacks. Anything else in a job hash (written by whoever can write to
    Redis) is refused before a single name is imported, so the worker runs nothing else (callbacks are ignored)."""
    from rq.job import Job

    class FinetuneJob(Job):
        @property
        def func(self):  # what RQ imports and calls: only ever the one job function
            if self.func_name != RQ_FUNCTION or self.instance is not None or self.kwargs:
                raise RefusedJob(f"refusing RQ job {self.id}: it names {str(self.func_name)[:80]!r}, not {RQ_FUNCTION}")
            if not isinstance(self.args, (list, tuple)) or len(self.args) != 1:
                raise RefusedJob(f"refusing RQ job {self.id}: it takes one job record id")
            valid_job_id(self.args[0])
            return super().func

        def _no_callback(self, name: str) -> None:
            # Not raised: RQ calls these while handling a failure. This queue sets none, so none is ever run.
            if getattr(self, f"_{name}_name", None):
                log.warning("RQ job %s names a %s, which this queue never sets: not run", self.id, name)

        @property
        def success_callback(self):
            self._no_callback("success_callback")
            return None

        @property
        def failure_callback(self):
            self._no_callback("failure_callback")
            return None

        @property
        def stopped_callback(self):
            self._no_callback("stopped_callback")
            return None

    return FinetuneJob


class RQJobs:
    """The server's and the worker's side of the RQ queue (``redis`` and ``rq`` are imported here only)."""

    def __init__(self, settings: Settings, connection: Any = None):
        import redis
        from rq import Queue

        self.settings = settings
        # Longer timeouts than the click store's: these calls are off the click path and must not give up early.
        self.connection = connection or redis.Redis.from_url(
            settings.session_store, socket_timeout=5, socket_connect_timeout=5
        )
        self.job_class = _finetune_job_class()
        self.queue = Queue(QUEUE_NAME, connection=self.connection, job_class=self.job_class, serializer=SERIALIZER)
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def submit(self, job_id: str) -> bool:
        """Put the record ``job_id`` on the queue unless RQ already has it pending; True when added."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        rq_id = rq_job_id(valid_job_id(job_id))
        try:  # JSON: a job hash planted with pickled meta or result reads as data, never as code
            status = Job.fetch(rq_id, connection=self.connection, serializer=SERIALIZER).get_status(refresh=False)
        except NoSuchJobError:
            status = None
        if status is not None and str(getattr(status, "value", status)) in _PENDING:
            return False
        if status is not None:  # finished or failed in RQ while the record says queued: run it again
            Job.fetch(rq_id, connection=self.connection, serializer=SERIALIZER).delete()
        self.queue.enqueue_call(
            RQ_FUNCTION,
            args=(job_id,),
            job_id=rq_id,
            timeout=-1,  # FINETUNE_MAX_MINUTES bounds it
            result_ttl=RESULT_TTL_S,
            failure_ttl=RESULT_TTL_S,
            description=f"adaptiveclick fine-tuning {job_id}",
        )
        log.info("fine-tuning job %s put on the RQ queue %s", job_id, QUEUE_NAME)
        return True

    def reconcile(self, store: ModelStore) -> list[str]:
        """Submit every queued record RQ does not hold (after a Redis restart, or a submit that failed)."""
        with self._lock:
            return [job["id"] for job in store.jobs() if job.get("state") == QUEUED and self.submit(job["id"])]

    def reconcile_soon(self, store: ModelStore, then: Callable[[], None] | None = None) -> None:
        """:meth:`reconcile` on a thread (a webhook must answer within Label Studio's 1 s), then ``then()``."""

        def run() -> None:
            try:
                self.reconcile(store)
            except Exception as exc:  # Redis down: the record stays queued; the next reconcile submits it
                log.error(
                    "could not put fine-tuning jobs on the RQ queue (%s: %s); retrying within %.0f s",
                    type(exc).__name__,
                    exc,
                    RECONCILE_S,
                )
            if then is not None:
                then()

        threading.Thread(target=run, name="rq-submit", daemon=True).start()

    def watch(self, store: ModelStore, interval_s: float = RECONCILE_S) -> None:
        """Reconcile every ``interval_s`` in the background until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reconcile(store)
                except Exception as exc:
                    log.debug("RQ reconcile failed: %s", exc)

        threading.Thread(target=loop, name="rq-reconcile", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def work(self, once: bool) -> int:
        """Run an RQ worker on the queue (``once``: until it is empty). Returns the number of jobs it ran."""
        from rq import Worker

        try:
            self.reconcile(ModelStore(self.settings.model_dir))
        except Exception as exc:
            log.error("could not reconcile the RQ queue with %s/jobs: %s", self.settings.model_dir, exc)
        worker = Worker([self.queue], connection=self.connection, job_class=self.job_class, serializer=SERIALIZER)
        worker.work(burst=once, with_scheduler=False)
        return int(getattr(worker, "successful_job_count", 0) or 0)


def job_queue(settings: Settings) -> RQJobs | None:
    """The RQ queue when ``FINETUNE_QUEUE`` resolves to ``rq``; None for the file queue."""
    if queue_kind(settings) != "rq":
        return None
    try:
        return RQJobs(settings)
    except ImportError:
        log.error(
            "FINETUNE_QUEUE=%s with SESSION_STORE needs the rq and redis packages (pip install "
            "'adaptiveclick[redis]'): using the file queue under MODEL_DIR",
            settings.finetune_queue,
        )
        return None
