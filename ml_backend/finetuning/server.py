"""Active-learning fine-tuning, the serving process's side: record webhooks, queue jobs, start the worker.

The serving process only *records* webhooks (a few small file writes under a file lock: well under Label
Studio's 1 s webhook timeout) and enqueues jobs in the model store (``ml_backend.finetuning.model_store``); a separate
worker process (``adaptiveclick worker``, ``ml_backend.finetuning.worker``) runs them one at a time, so serving
keeps its latency and a crashed, killed or out-of-memory job never touches the served model. Serving picks up a
promoted version by polling ``current`` (``Engine.refresh``) and swaps the model under its inference lock.

Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from ..interactive.engine import watch_versions
from ..labelstudio.labeling_config import parse_label_config, project_id
from .model_store import TRAIN_EVENT, UPDATE_EVENTS, ModelStore
from .sources import LABEL_STUDIO, describe_job

log = logging.getLogger("adaptiveclick.finetune")


def finetune_enabled(settings: Any) -> bool:
    """``FINETUNE``: ``auto`` (default) = on when MODEL_DIR is set and the engine is AdaptiveClick; ``on``/``off``."""
    mode = (getattr(settings, "finetune", "auto") or "auto").lower()
    if mode in ("off", "false", "0", "no"):
        return False
    if not getattr(settings, "model_dir", ""):
        if mode in ("on", "true", "1", "yes"):
            log.error(
                "FINETUNE=on needs MODEL_DIR (where jobs, versions and the event log are kept): fine-tuning is off"
            )
        return False
    return getattr(settings, "model_engine", "adaptiveclick") == "adaptiveclick"


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
        watch_versions(self.engine, self.watch_s, self._stop, self.on_swap or (lambda: None))

    # --- webhooks -------------------------------------------------------------------------------

    def handles(self, action: str) -> bool:
        return action in UPDATE_EVENTS or action == TRAIN_EVENT

    def on_webhook(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Record the event (and maybe enqueue a job). Only file appends and small atomic writes."""
        project_obj = body.get("project")
        annotation = body.get("annotation") if isinstance(body.get("annotation"), dict) else {}
        project = project_id(project_obj) or project_id(annotation.get("project"))
        if not project:
            return {"finetune": "ignored", "reason": "the webhook names no project"}
        if self.projects and project not in self.projects:
            return {"finetune": "ignored", "reason": f"project {project} is not in FINETUNE_PROJECTS"}
        label_config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
        if isinstance(label_config, str) and label_config and not _has_mask_tags(label_config):
            return {
                "finetune": "ignored",
                "reason": f"project {project}'s labeling config has no BrushLabels or PolygonLabels: nothing to "
                "learn from",
            }
        ids: dict[str, Any] = {}
        if annotation:
            ids["annotation"] = annotation.get("id") if isinstance(annotation.get("id"), int) else None
            ids["task"] = annotation.get("task") if isinstance(annotation.get("task"), int) else None
        if action == "ANNOTATIONS_DELETED" and isinstance(body.get("annotations"), list):
            ids["annotations"] = [
                a.get("id") for a in body["annotations"][:1000] if isinstance(a, dict) and isinstance(a.get("id"), int)
            ]
        try:
            counts = self.store.record_event(action, project, self.every_n, **ids)
        except OSError as exc:
            log.error("could not record webhook %s in %s: %s", action, self.store.root, exc)
            return {"finetune": "error", "reason": f"MODEL_DIR is not writable ({type(exc).__name__})"}
        reply: dict[str, Any] = {"finetune": "recorded", "updates_since_last_job": counts["since_last_job"]}
        if action == TRAIN_EVENT or counts["rule_fired"]:
            reason = TRAIN_EVENT if action == TRAIN_EVENT else f"START_TRAINING_EACH_N_UPDATES={self.every_n}"
            reply.update(self.queue_job(LABEL_STUDIO, project, reason))
        return reply

    def queue_job(self, platform: str, project: str, reason: str, **source: Any) -> dict[str, Any]:
        """Queue (or join) the project's fine-tuning job and start the worker off the caller's path; the reply
        fields. Every platform's webhook ends here, so its jobs meet the same queue, gate and history."""
        extra: dict[str, Any] = {"served": self.engine.model_version}
        if source:
            extra["source"] = source
        try:
            job, created = self.store.enqueue(project, reason, platform=platform, **extra)
        except OSError as exc:
            log.error("could not queue a fine-tuning job in %s: %s", self.store.root, exc)
            return {"finetune": "error", "reason": f"MODEL_DIR is not writable ({type(exc).__name__})"}
        log.info(
            "fine-tuning job %s %s for %s (%s)",
            job["id"],
            "queued" if created else "already queued",
            describe_job(job),
            reason,
        )
        if self.queue is not None:  # RQ: submit off the webhook's path, then start a local worker
            self.queue.reconcile_soon(self.store, then=self.kick if self.spawn_worker else None)
        elif self.spawn_worker:
            self.kick()
        return {"job": job["id"], "job_state": job["state"], "queued": created}

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
            for name, value in (
                ("MODEL_CHECKPOINT", self.settings.model_checkpoint),
                ("MODEL_ENGINE", self.settings.model_engine),
                ("DEVICE", self.settings.device),
                ("MODEL_VERSION_PIN", self.settings.model_version_pin),
                ("LOCAL_FILES_DOCUMENT_ROOT", self.settings.local_files_document_root),
                ("MEDIA_ALLOWED_HOSTS", ",".join(self.settings.media_allowed_hosts)),
                ("CVAT_URL", self.settings.cvat_url),
                ("CVAT_ACCESS_TOKEN", self.settings.cvat_access_token),
                ("CVAT_FINETUNE_ON", ",".join(self.settings.cvat_finetune_on)),
            ):
                env[name] = str(value or "")
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
            self.store.jobs_dir.mkdir(parents=True, exist_ok=True)
            try:
                with open(self.store.jobs_dir / "worker.log", "ab") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "cli", "worker", "--once"],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        close_fds=True,
                    )
            except OSError as exc:
                log.error("could not start the fine-tuning worker: %s", exc)
                return
        proc.wait()  # reap it (the thread is a daemon: the server never waits for a job)

    # --- reporting ------------------------------------------------------------------------------

    def version_names(self) -> list[str]:
        return [self.engine.base_version] + [str(m["version"]) for m in self.store.versions() if m.get("version")]


def _has_mask_tags(label_config: str) -> bool:
    """Whether a project's annotations can hold masks to learn from (a config that does not parse: let the job
    find out and say so)."""
    try:
        config = parse_label_config(label_config)
    except BadRequest:
        return True
    return bool(config.brushes or config.polygons)
