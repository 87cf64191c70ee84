"""CVAT's webhooks in (``POST /cvat/webhook``): verify the signature, record the event, queue a fine-tuning job.

CVAT (v2.x, Community included) posts ``{"event": "update:job", "job": {...}, "changes": {"stage": {"from",
"to"}}, "before_update": {...}, "sender": {...}, "webhook_id": N}`` for a project's or organization's webhook, signed
with the webhook's secret: ``X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (the body is
``json.dumps(payload)``, byte for byte what is signed). ``ping`` is its "Ping" button.

* No ``CVAT_WEBHOOK_SECRET``, no signature or a wrong one: 403 / 401 / 403, and nothing is read from the body.
* A job that enters a stage, or the state ``completed``, named in ``CVAT_FINETUNE_ON`` (default ``acceptance,
  completed``) of a project in ``FINETUNE_CVAT_PROJECTS`` (empty: any) queues the project's fine-tuning job through
  ``FinetuneServer.queue_job``, exactly as Label Studio's ``START_TRAINING`` does; other changes and events are
  answered 200 "ignored" with the reason, an event that is not CVAT's gets 422.
* Only small file writes under ``MODEL_DIR`` happen here (CVAT waits 10 s at most); the job reads CVAT later.
* CVAT retries a delivery that got 5xx, 408 or 429 (for days), and may deliver out of order: each job's last
  ``updated_date`` is kept, so a repeated or older delivery is answered "duplicate" and queues nothing. A
  ``MODEL_DIR`` that cannot be written is the one 503: CVAT delivers the event again later instead of losing it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
import re
from typing import Any

from ..config import Settings
from ..errors import BackendError, BadRequest
from ..finetuning.model_store import atomic_write_json, read_json
from ..finetuning.sources import CVAT
from ..jsonbody import parse_json

log = logging.getLogger("adaptiveclick.finetune")

SIGNATURE_HEADER = "X-Signature-256"
MAX_WEBHOOK_BYTES = 1024 * 1024  # CVAT's payloads are a few kB
JOB_EVENT = "update:job"
_CVAT_EVENT = re.compile(r"^(ping|(create|update|delete):[a-z_]+|completed:request\[[a-z_:]+\])$")
_KEEP_JOBS = 10_000  # delivery order is remembered for this many CVAT jobs


def signature(secret: str, body: bytes) -> str:
    """``X-Signature-256`` as CVAT computes it for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class CvatWebhooks:
    """The ``/cvat/webhook`` route's logic; ``finetune`` is the server's ``FinetuneServer`` (None: fine-tuning off)."""

    def __init__(self, settings: Settings, finetune: Any):
        self.settings = settings
        self.finetune = finetune

    def handle(self, body: bytes, signed: str | None) -> dict[str, Any]:
        self._verify(body, signed)
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise BadRequest("a CVAT webhook body is a JSON object", status=400)
        event = payload.get("event")
        if not isinstance(event, str) or not _CVAT_EVENT.match(event):
            raise BadRequest(f"unknown CVAT webhook event {str(event)[:80]!r}: is this a CVAT webhook?", status=422)
        reply: dict[str, Any] = {"status": "ok", "event": event}
        if event == "ping":
            log.info("CVAT webhook: ping")
            return reply
        if event != JOB_EVENT:
            log.info("CVAT webhook: %s ignored (fine-tuning acts on %s)", event, JOB_EVENT)
            return dict(reply, finetune="ignored", reason=f"fine-tuning acts on {JOB_EVENT} only")
        return dict(reply, **self._job_update(payload))

    # --- steps ----------------------------------------------------------------------------------

    def _verify(self, body: bytes, signed: str | None) -> None:
        secret = self.settings.cvat_webhook_secret
        if not secret:
            raise BackendError(
                "CVAT webhooks are off: set CVAT_WEBHOOK_SECRET to the secret of the webhook added in CVAT", status=403
            )
        if not signed:
            raise BackendError(
                f"the CVAT webhook has no {SIGNATURE_HEADER} header: give the webhook a secret in CVAT (the same "
                "as CVAT_WEBHOOK_SECRET)",
                status=401,
            )
        if not hmac.compare_digest(signed.strip().encode("latin-1", "replace"), signature(secret, body).encode()):
            raise BackendError(
                f"the CVAT webhook's {SIGNATURE_HEADER} does not match the body: the webhook's secret in CVAT differs "
                "from CVAT_WEBHOOK_SECRET",
                status=403,
            )

    def _job_update(self, payload: dict[str, Any]) -> dict[str, Any]:
        job = payload.get("job")
        if not isinstance(job, dict) or not _is_id(job.get("id")):
            raise BadRequest("an update:job webhook needs a job object with an integer id", status=422)
        job_id, task_id, project_id = job["id"], job.get("task_id"), job.get("project_id")
        if _is_id(project_id):
            project = str(project_id)
        elif _is_id(task_id):
            project = f"task-{task_id}"  # a task outside any project: the task is the unit that learns
        else:
            raise BadRequest(f"CVAT job {job_id} names neither a project_id nor a task_id", status=422)
        change = _trigger(payload, job, self.settings.cvat_finetune_on)
        if self.finetune is None:
            log.info("CVAT job %s changed: fine-tuning is off (it needs MODEL_DIR)", job_id)
            return {"finetune": "off", "reason": "fine-tuning is off (it needs MODEL_DIR and the adaptiveclick engine)"}
        projects = self.settings.finetune_cvat_projects
        if projects and project not in projects:
            return {"finetune": "ignored", "reason": f"CVAT project {project} is not in FINETUNE_CVAT_PROJECTS"}
        store = self.finetune.store
        try:
            if self._seen(store, job):
                log.info(
                    "CVAT job %s: a repeated or out-of-order delivery (updated %s)", job_id, job.get("updated_date")
                )
                return {"finetune": "duplicate", "reason": f"job {job_id} has the same or a newer update recorded"}
            if change is None:
                self._remember(store, job)
                on = ", ".join(self.settings.cvat_finetune_on)
                return {
                    "finetune": "ignored",
                    "reason": f"job {job_id}'s change is not one CVAT_FINETUNE_ON names ({on})",
                }
            ids = {"job": job_id, "task": task_id, "webhook": payload.get("webhook_id")}
            store.record_event(
                f"cvat:{JOB_EVENT}", f"{CVAT}:{project}", 0, **{k: v for k, v in ids.items() if _is_id(v)}
            )
            source = {"job": job_id, "task": task_id, "change": change}
            if _is_id(job.get("organization")):
                source["organization"] = job["organization"]
            reply = self.finetune.queue_job(CVAT, project, f"CVAT job {job_id}: {change}", **source)
            if reply.get("finetune") == "error":
                raise OSError(reply["reason"])
            self._remember(store, job)  # only once queued: a delivery that failed here is retried, not a duplicate
        except OSError as exc:
            log.error("could not record the CVAT webhook in %s: %s", store.root, exc)
            raise BackendError(
                f"MODEL_DIR is not writable ({type(exc).__name__}); CVAT will deliver the event again", status=503
            ) from None
        return dict(reply, finetune="recorded", project=project, change=change)

    # Delivery order: each CVAT job's last recorded ``updated_date`` (``finetune/cvat_jobs.json``).

    def _seen(self, store: Any, job: dict[str, Any]) -> bool:
        """Whether this update, or a later one of the same job, was recorded before."""
        updated = _parse_time(job.get("updated_date"))
        if updated is None:
            return False  # nothing to order by: a queued job coalesces repeats anyway
        with store.lock("cvat-webhooks"):
            last = _parse_time((read_json(store.state_dir / "cvat_jobs.json", {}) or {}).get(str(job["id"])))
        return last is not None and updated <= last

    def _remember(self, store: Any, job: dict[str, Any]) -> None:
        updated = _parse_time(job.get("updated_date"))
        if updated is None:
            return
        path = store.state_dir / "cvat_jobs.json"
        with store.lock("cvat-webhooks"):
            seen = read_json(path, {}) or {}
            last = _parse_time(seen.get(str(job["id"])))
            if last is not None and updated <= last:
                return
            seen.pop(str(job["id"]), None)  # re-inserted last: the dict stays in recording order
            seen[str(job["id"])] = job["updated_date"]
            while len(seen) > _KEEP_JOBS:
                seen.pop(next(iter(seen)))
            atomic_write_json(path, seen, fsync=False)


def _trigger(payload: dict[str, Any], job: dict[str, Any], triggers: tuple[str, ...]) -> str | None:
    """``stage -> acceptance`` / ``state -> completed`` when this update made the job enter what ``triggers``
    names; None for any other change."""
    changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
    before = payload.get("before_update") if isinstance(payload.get("before_update"), dict) else {}
    for field in ("stage", "state"):
        change = changes.get(field)
        if isinstance(change, dict) and "to" in change:
            new, old = change.get("to"), change.get("from")
        elif field in before:  # older CVAT: only the old values
            new, old = job.get(field), before[field]
        else:
            continue
        if new == old or not isinstance(new, str):
            continue
        if (field == "stage" and new in triggers) or (field == "state" and new == "completed" and new in triggers):
            return f"{field} -> {new}"
    return None


def _parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
