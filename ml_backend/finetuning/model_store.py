"""The model store: fine-tuned versions, the ``current`` pointer and the job queue under ``MODEL_DIR``.

Layout of ``MODEL_DIR`` (every JSON file is written atomically: temp file, fsync, ``os.replace``)::

    current                         the served version's name (a one-line pointer file, atomically replaced;
                                    absent or "base" = the MODEL_CHECKPOINT / starter weights)
    versions/<version>/model.safetensors + manifest.json   promoted versions (a folder appears complete or not at
                                    all: it is written as versions/.staging-<job>/ and renamed)
    jobs/<job id>.json              one record per fine-tuning job (queued -> running -> done | skipped | failed |
                                    interrupted); jobs/<job id>.log is the worker's output for it
    finetune/events.jsonl           the webhook events received (ids only, never payloads)
    finetune/counters.json          per project: annotation updates in total and since the last job

Which checkpoint is served is decided here once, for the server, the worker and the command line:
:func:`served_checkpoint`. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.files import atomic_write_text, fsync_dir
from model.weights import sha256_file

from ..config import Settings
from .sources import LABEL_STUDIO, job_platform

log = logging.getLogger("adaptiveclick.finetune")

UPDATE_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
TRAIN_EVENT = "START_TRAINING"
QUEUED, RUNNING, DONE, SKIPPED, FAILED, INTERRUPTED = "queued", "running", "done", "skipped", "failed", "interrupted"
TERMINAL_STATES = (DONE, SKIPPED, FAILED, INTERRUPTED)
BASE = "base"
MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
# Test hook: seconds the worker sleeps after writing a partial checkpoint into the staging folder (so a test can
# SIGKILL it mid-write). Never set in production.
HOLD_PARTIAL_WRITE_ENV = "ADAPTIVECLICK_TEST_HOLD_PARTIAL_WRITE_S"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path: Path, data: Any, fsync: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", fsync)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.error("unreadable %s (%s): ignored", path, exc)
        return default


class ModelStore:
    """The fine-tuning state under ``MODEL_DIR`` (see the module docstring); safe across processes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.state_dir = self.root / "finetune"
        self.jobs_dir = self.root / "jobs"
        self.versions_dir = self.root / "versions"
        self.current_path = self.root / "current"
        self.events_path = self.state_dir / "events.jsonl"
        self.counters_path = self.state_dir / "counters.json"

    # --- locks ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive advisory lock (``flock``) shared by every process using this MODEL_DIR."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / f".{name}.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def worker_lock(self) -> Iterator[bool]:
        """Held by the one worker that runs jobs; yields False (at once) when another process holds it.

        The kernel drops the lock when its holder dies however it dies, so "running" jobs found while holding
        it belong to a dead worker."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.jobs_dir / ".worker.lock", "a+")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            fh.close()

    def worker_running(self) -> bool:
        with self.worker_lock() as got:
            return not got

    # --- events ---------------------------------------------------------------------------------

    def record_event(self, action: str, project: str, every_n: int, **ids: Any) -> dict[str, Any]:
        """Append the event to the log and count it; returns the project's counters and whether the
        ``START_TRAINING_EACH_N_UPDATES`` rule fires now (the counter since the last job is then reset)."""
        event = {"time": now_iso(), "action": action, "project": project}
        event.update({k: v for k, v in ids.items() if v is not None})
        with self.lock("events"):
            with open(self.events_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event, sort_keys=True) + "\n")
            counters = read_json(self.counters_path, {}) or {}
            entry = counters.setdefault(project, {"updates": 0, "since_last_job": 0})
            fire = False
            if action in UPDATE_EVENTS:
                entry["updates"] = int(entry.get("updates", 0)) + 1
                entry["since_last_job"] = int(entry.get("since_last_job", 0)) + 1
                if every_n > 0 and entry["since_last_job"] >= every_n:
                    fire = True
            if action == TRAIN_EVENT or fire:
                entry["since_last_job"] = 0
            entry["last_event"] = event["time"]
            atomic_write_json(self.counters_path, counters, fsync=False)
        return {"updates": entry["updates"], "since_last_job": entry["since_last_job"], "rule_fired": fire}

    def counters(self) -> dict[str, Any]:
        return read_json(self.counters_path, {}) or {}

    # --- jobs -----------------------------------------------------------------------------------

    def job_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def read_job(self, job_id: str) -> dict[str, Any] | None:
        return read_json(self.job_path(job_id))

    def jobs(self) -> list[dict[str, Any]]:
        """All job records, oldest first (job ids sort by creation)."""
        if not self.jobs_dir.is_dir():
            return []
        out = []
        for path in sorted(self.jobs_dir.glob("job-*.json")):
            job = read_json(path)
            if isinstance(job, dict):
                out.append(job)
        return out

    def enqueue(
        self, project: str, reason: str, platform: str = LABEL_STUDIO, **extra: Any
    ) -> tuple[dict[str, Any], bool]:
        """A queued job for ``project`` of ``platform``; (job, created). A job already queued for it is reused: it
        will read the project's annotations when it starts, so it sees the newer ones too."""
        with self.lock("jobs"):
            for job in self.jobs():
                if job.get("state") == QUEUED and job_platform(job) == platform and job.get("project") == project:
                    return job, False
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            numbers = [
                int(p.stem.split("-")[1]) for p in self.jobs_dir.glob("job-*.json") if p.stem.split("-")[1].isdigit()
            ]
            job_id = f"job-{max(numbers, default=0) + 1:06d}"
            job = {
                "id": job_id,
                "platform": platform,
                "project": project,
                "state": QUEUED,
                "reason": reason,
                "created": now_iso(),
                "history": [{"state": QUEUED, "time": now_iso()}],
            }
            job.update(extra)
            atomic_write_json(self.job_path(job_id), job)
        return job, True

    def update_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        with self.lock("jobs"):
            job = self.read_job(job_id) or {"id": job_id}
            if "state" in fields and fields["state"] != job.get("state"):
                job.setdefault("history", []).append({"state": fields["state"], "time": now_iso()})
            job.update(fields)
            atomic_write_json(self.job_path(job_id), job)
        return job

    def next_queued(self) -> dict[str, Any] | None:
        return next((j for j in self.jobs() if j.get("state") == QUEUED), None)

    def recover(self) -> list[str]:
        """Call only while holding :meth:`worker_lock`: jobs left "running" by a dead worker become
        "interrupted", and half-written version folders are removed. Returns the interrupted job ids."""
        interrupted = []
        for job in self.jobs():
            if job.get("state") == RUNNING:
                self.update_job(
                    job["id"],
                    state=INTERRUPTED,
                    finished=now_iso(),
                    message=(
                        "the worker stopped while this job ran (killed, out of memory or crashed); the served model "
                        "and its files were not changed"
                    ),
                )
                interrupted.append(job["id"])
        if self.versions_dir.is_dir():
            for staging in self.versions_dir.glob(".staging-*"):
                shutil.rmtree(staging, ignore_errors=True)
                log.warning("removed the half-written version folder %s", staging)
        for work in self.jobs_dir.glob("job-*.work") if self.jobs_dir.is_dir() else ():
            shutil.rmtree(work, ignore_errors=True)
        return interrupted

    # --- versions -------------------------------------------------------------------------------

    def manifest(self, version: str) -> dict[str, Any] | None:
        return read_json(self.versions_dir / version / MANIFEST_FILE)

    def versions(self) -> list[dict[str, Any]]:
        """Manifests of the complete versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for folder in self.versions_dir.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            manifest = read_json(folder / MANIFEST_FILE)
            if isinstance(manifest, dict) and (folder / MODEL_FILE).is_file():
                found.append(manifest)
        return sorted(found, key=lambda m: (str(m.get("created", "")), str(m.get("version", ""))))

    def version_path(self, version: str) -> Path | None:
        if not version or version == BASE or "/" in version or version.startswith("."):
            return None
        path = self.versions_dir / version / MODEL_FILE
        return path if path.is_file() and (self.versions_dir / version / MANIFEST_FILE).is_file() else None

    def current(self) -> str:
        """The version ``current`` points at ("base" when none)."""
        try:
            name = self.current_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return BASE
        except OSError as exc:
            log.error("cannot read %s (%s): serving the base model", self.current_path, exc)
            return BASE
        return name or BASE

    def set_current(self, version: str) -> None:
        if version != BASE and self.version_path(version) is None:
            raise ValueError(f"unknown version {version!r}: not a complete folder under {self.versions_dir}")
        atomic_write_text(self.current_path, version + "\n")

    def next_version_name(self, tag: str) -> str:
        numbers = []
        for folder in self.versions_dir.glob("adaptiveclick-ft*") if self.versions_dir.is_dir() else ():
            digits = folder.name[len("adaptiveclick-ft") :].split("-", 1)[0]
            if digits.isdigit():
                numbers.append(int(digits))
        return f"adaptiveclick-ft{max(numbers, default=0) + 1:04d}-{tag}"

    def write_version(self, job_id: str, write_model, manifest: dict[str, Any], make_current: bool = True) -> str:
        """Write a version atomically: ``write_model(path)`` and the manifest into ``versions/.staging-<job>/``,
        fsync, rename the folder to ``versions/<version>/``, then replace ``current``. Returns the version."""
        staging = self.versions_dir / f".staging-{job_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        hold = os.environ.get(HOLD_PARTIAL_WRITE_ENV, "").strip()
        if hold:  # test hook: a half-written file, then time for the test to SIGKILL this process
            with open(staging / f".{MODEL_FILE}.partial", "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
            log.warning("%s=%s: holding a partial checkpoint write", HOLD_PARTIAL_WRITE_ENV, hold)
            time.sleep(float(hold))
        model_path = staging / MODEL_FILE
        write_model(model_path)
        tag = sha256_file(model_path)[:8]
        version = self.next_version_name(tag)
        manifest = dict(manifest, version=version, sha256=sha256_file(model_path), created=now_iso(), job=job_id)
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        fsync_dir(staging)
        os.rename(staging, self.versions_dir / version)
        fsync_dir(self.versions_dir)
        if make_current:
            self.set_current(version)
        return version


def served_checkpoint(settings: Settings, store: ModelStore | None = None) -> tuple[str, Path]:
    """(version, checkpoint) that ``serve`` serves with these settings: MODEL_DIR's pinned or ``current``
    fine-tuned version, else :data:`BASE` and ``Settings.base_checkpoint`` (MODEL_CHECKPOINT, else the starter).

    The one answer to "which checkpoint" for the server, the fine-tuning worker and the command line."""
    served = _fine_tuned_version(settings, store)
    return served if served is not None else (BASE, settings.base_checkpoint)


def _fine_tuned_version(settings: Settings, store: ModelStore | None = None) -> tuple[str, Path] | None:
    """(version, checkpoint) of the fine-tuned version to serve, or None for the base model.

    ``MODEL_VERSION_PIN`` wins over ``current`` ("base" pins the base model); an unknown pin is reported and
    ignored."""
    if not getattr(settings, "model_dir", "") or getattr(settings, "model_engine", "adaptiveclick") != "adaptiveclick":
        return None
    store = store or ModelStore(settings.model_dir)
    pin = (getattr(settings, "model_version_pin", "") or "").strip()
    if pin:
        if pin == BASE:
            return None
        path = store.version_path(pin)
        if path is not None:
            return pin, path
        _log_once(
            f"pin:{pin}",
            "MODEL_VERSION_PIN=%s is not a version under %s (adaptiveclick versions list): ignored",
            pin,
            store.versions_dir,
        )
    name = store.current()
    if name == BASE:
        return None
    path = store.version_path(name)
    if path is None:
        _log_once(
            f"current:{name}",
            "%s names version %r, which is missing or incomplete: serving the base model",
            store.current_path,
            name,
        )
        return None
    return name, path


_logged: set[str] = set()


def _log_once(key: str, message: str, *args: Any) -> None:
    if key not in _logged:
        _logged.add(key)
        log.error(message, *args)
