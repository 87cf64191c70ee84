"""Active-learning fine-tuning: the state under ``MODEL_DIR`` and what the serving process does with it.

Layout of ``MODEL_DIR`` (every JSON file is written atomically: temp file, fsync, ``os.replace``)::

    current                         the served version's name (a one-line pointer file, atomically replaced;
                                    absent or "base" = the MODEL_CHECKPOINT / starter weights)
    versions/<version>/model.safetensors + manifest.json   promoted versions (a folder appears complete or not at
                                    all: it is written as versions/.staging-<job>/ and renamed)
    jobs/<job id>.json              one record per fine-tuning job (queued -> running -> done | skipped | failed |
                                    interrupted); jobs/<job id>.log is the worker's output for it
    finetune/events.jsonl           the webhook events received (ids only, never payloads)
    finetune/counters.json          per project: annotation updates in total and since the last job

The serving process only *records* webhooks (a few small file writes under a file lock: well under Label
Studio's 1 s webhook timeout) and enqueues jobs; a separate worker process (``adaptiveclick worker``,
``ml_backend.finetune_worker``) runs them one at a time, so serving keeps its latency and a crashed, killed or
out-of-memory job never touches the served model. Serving picks up a promoted version by polling ``current``
(``Engine.refresh``) and swaps the model under its inference lock.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from model.weights import sha256_file

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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if fsync:
        _fsync_dir(path.parent)


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


def project_id_of(value: Any) -> str:
    """Label Studio's project as the webhook / API gives it (an object with ``id``, an int, "12.1718..."), as
    a string of digits, or "" when it cannot be read."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value) if value >= 0 else ""
    if isinstance(value, str):
        head = value.split(".", 1)[0].strip()
        return head if head.isdigit() and len(head) < 20 else ""
    return ""


def finetune_enabled(settings: Any) -> bool:
    """``FINETUNE``: ``auto`` (default) = on when MODEL_DIR is set and the engine is AdaptiveClick; ``on``/``off``."""
    mode = (getattr(settings, "finetune", "auto") or "auto").lower()
    if mode in ("off", "false", "0", "no"):
        return False
    if not getattr(settings, "model_dir", ""):
        if mode in ("on", "true", "1", "yes"):
            log.error("FINETUNE=on needs MODEL_DIR (where jobs, versions and the event log are kept): fine-tuning "
                      "is off")
        return False
    return getattr(settings, "model_engine", "adaptiveclick") == "adaptiveclick"


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

    def enqueue(self, project: str, reason: str, **extra: Any) -> tuple[dict[str, Any], bool]:
        """A queued job for ``project``; (job, created). A job already queued for it is reused: it will read
        the project's annotations when it starts, so it sees the newer ones too."""
        with self.lock("jobs"):
            for job in self.jobs():
                if job.get("state") == QUEUED and job.get("project") == project:
                    return job, False
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            numbers = [int(p.stem.split("-")[1]) for p in self.jobs_dir.glob("job-*.json")
                       if p.stem.split("-")[1].isdigit()]
            job_id = f"job-{max(numbers, default=0) + 1:06d}"
            job = {"id": job_id, "project": project, "state": QUEUED, "reason": reason, "created": now_iso(),
                   "history": [{"state": QUEUED, "time": now_iso()}]}
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
                self.update_job(job["id"], state=INTERRUPTED, finished=now_iso(), message=(
                    "the worker stopped while this job ran (killed, out of memory or crashed); the served model "
                    "and its files were not changed"))
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
            digits = folder.name[len("adaptiveclick-ft"):].split("-", 1)[0]
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
        _fsync_dir(staging)
        os.rename(staging, self.versions_dir / version)
        _fsync_dir(self.versions_dir)
        if make_current:
            self.set_current(version)
        return version


def resolve_served(settings: Any, store: ModelStore | None = None) -> tuple[str, Path] | None:
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
        _log_once(f"pin:{pin}", "MODEL_VERSION_PIN=%s is not a version under %s (adaptiveclick versions list): "
                                "ignored", pin, store.versions_dir)
    name = store.current()
    if name == BASE:
        return None
    path = store.version_path(name)
    if path is None:
        _log_once(f"current:{name}", "%s names version %r, which is missing or incomplete: serving the base model",
                  store.current_path, name)
        return None
    return name, path


_logged: set[str] = set()


def _log_once(key: str, message: str, *args: Any) -> None:
    if key not in _logged:
        _logged.add(key)
        log.error(message, *args)


class FinetuneServer:
    """The serving process's part: record webhooks, enqueue jobs, start the worker, watch for new versions."""

    def __init__(self, settings: Any, engine: Any, on_swap=None):
        self.settings = settings
        self.engine = engine
        self.store = ModelStore(settings.model_dir)
        self.every_n = int(getattr(settings, "start_training_each_n_updates", 0) or 0)
        self.projects = tuple(getattr(settings, "finetune_projects", ()) or ())
        self.spawn_worker = getattr(settings, "finetune_worker", "spawn") != "external"
        self.watch_s = float(getattr(settings, "model_watch_s", 2.0))
        self.on_swap = on_swap
        self._stop = threading.Event()
        self._spawn_lock = threading.Lock()
        self.ls_fallback: tuple[str, str] = ("", "")  # /setup's hostname and token, for the worker's environment
        from .job_queue import job_queue

        self.queue = job_queue(settings)  # RQ when FINETUNE_QUEUE resolves to rq (job_queue.py); None: file queue

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """At server start: mark jobs of a dead worker interrupted, resume the queue, watch ``current``."""
        try:
            with self.store.worker_lock() as got:
                if got:
                    for job_id in self.store.recover():
                        log.warning("fine-tuning job %s was interrupted (the worker died): marked so", job_id)
            if self.queue is not None:  # RQ: queued records go (back) on the queue, and are watched
                self.queue.reconcile_soon(self.store, then=self.kick if self.spawn_worker else None)
                self.queue.watch(self.store)
            elif self.store.next_queued() is not None:
                self.kick()
        except OSError as exc:
            log.error("cannot use MODEL_DIR=%s for fine-tuning: %s", self.settings.model_dir, exc)
        if self.watch_s > 0:
            threading.Thread(target=self._watch, name="model-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.queue is not None:
            self.queue.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_s):
            try:
                self.refresh()
            except Exception:  # never let the watcher die
                log.exception("checking MODEL_DIR/current failed")

    def refresh(self) -> bool:
        swapped = self.engine.refresh()
        if swapped and self.on_swap is not None:
            self.on_swap()
        return swapped

    # --- webhooks -------------------------------------------------------------------------------

    def handles(self, action: str) -> bool:
        return action in UPDATE_EVENTS or action == TRAIN_EVENT

    def on_webhook(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record the event (and maybe enqueue a job). Only file appends and small atomic writes."""
        project_obj = body.get("project")
        annotation = body.get("annotation") if isinstance(body.get("annotation"), dict) else {}
        project = project_id_of(project_obj) or project_id_of(annotation.get("project"))
        if not project:
            return {"finetune": "ignored", "reason": "the webhook names no project"}
        if self.projects and project not in self.projects:
            return {"finetune": "ignored", "reason": f"project {project} is not in FINETUNE_PROJECTS"}
        label_config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
        if isinstance(label_config, str) and label_config and "brushlabels" not in label_config.lower():
            return {"finetune": "ignored", "reason": f"project {project}'s labeling config has no BrushLabels: "
                                                     "nothing to learn from"}
        ids: dict[str, Any] = {}
        if annotation:
            ids["annotation"] = annotation.get("id") if isinstance(annotation.get("id"), int) else None
            ids["task"] = annotation.get("task") if isinstance(annotation.get("task"), int) else None
        if action == "ANNOTATIONS_DELETED" and isinstance(body.get("annotations"), list):
            ids["annotations"] = [a.get("id") for a in body["annotations"][:1000]
                                  if isinstance(a, dict) and isinstance(a.get("id"), int)]
        try:
            counts = self.store.record_event(action, project, self.every_n, **ids)
        except OSError as exc:
            log.error("could not record webhook %s in %s: %s", action, self.store.root, exc)
            return {"finetune": "error", "reason": f"MODEL_DIR is not writable ({type(exc).__name__})"}
        reply: dict[str, Any] = {"finetune": "recorded", "updates_since_last_job": counts["since_last_job"]}
        if action == TRAIN_EVENT or counts["rule_fired"]:
            reason = TRAIN_EVENT if action == TRAIN_EVENT else f"START_TRAINING_EACH_N_UPDATES={self.every_n}"
            try:
                job, created = self.store.enqueue(project, reason, served=self.engine.model_version)
            except OSError as exc:
                log.error("could not queue a fine-tuning job in %s: %s", self.store.root, exc)
                return dict(reply, finetune="error", reason=f"MODEL_DIR is not writable ({type(exc).__name__})")
            reply.update(job=job["id"], job_state=job["state"], queued=created)
            log.info("fine-tuning job %s %s for project %s (%s)", job["id"], "queued" if created else "already queued",
                     project, reason)
            if self.queue is not None:  # RQ: submit off the webhook's path, then start a local worker
                self.queue.reconcile_soon(self.store, then=self.kick if self.spawn_worker else None)
            elif self.spawn_worker:
                self.kick()
        return reply

    # --- the worker process ---------------------------------------------------------------------

    def kick(self) -> None:
        """Start ``adaptiveclick worker --once`` in the background (it exits at once when a worker runs)."""
        threading.Thread(target=self._spawn, name="finetune-spawn", daemon=True).start()

    def _spawn(self) -> None:
        with self._spawn_lock:
            env = dict(os.environ)
            url, token = self.ls_fallback
            if not self.settings.label_studio_url and url:
                env["LABEL_STUDIO_URL"] = url
            if not self.settings.label_studio_api_key and token:
                env["LABEL_STUDIO_API_KEY"] = token
            env["MODEL_DIR"] = str(self.store.root)
            # The engine settings the serving process runs with (tests build them without the environment).
            for name, value in (("MODEL_CHECKPOINT", self.settings.model_checkpoint),
                                ("MODEL_ENGINE", self.settings.model_engine), ("DEVICE", self.settings.device),
                                ("MODEL_VERSION_PIN", self.settings.model_version_pin),
                                ("LOCAL_FILES_DOCUMENT_ROOT", self.settings.local_files_document_root),
                                ("MEDIA_ALLOWED_HOSTS", ",".join(self.settings.media_allowed_hosts))):
                env[name] = str(value or "")
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
            self.store.jobs_dir.mkdir(parents=True, exist_ok=True)
            try:
                with open(self.store.jobs_dir / "worker.log", "ab") as out:
                    proc = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker", "--once"], env=env,
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, close_fds=True)
            except OSError as exc:
                log.error("could not start the fine-tuning worker: %s", exc)
                return
        proc.wait()  # reap it (the thread is a daemon: the server never waits for a job)

    # --- reporting ------------------------------------------------------------------------------

    def version_names(self) -> list[str]:
        return [self.engine.base_version] + [str(m["version"]) for m in self.store.versions() if m.get("version")]
