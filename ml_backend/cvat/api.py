"""The read calls a fine-tuning job makes to CVAT's REST API (v2.x), under the media fetcher's rules.

``CVAT_URL`` is parsed by the one strict URL parser (``ml_backend.media.urls``) and every request goes to that
origin only: redirects are never followed (the token must reach CVAT and nothing else), each call has
``FETCH_TIMEOUT_S`` for the whole answer, JSON answers are capped at ``MAX_REQUEST_MB`` and frames at
``MAX_IMAGE_MB`` / ``MAX_IMAGE_MEGAPIXELS`` (``ml_backend.media.fetcher.read_capped`` and ``decode_image``).

Auth: ``CVAT_ACCESS_TOKEN`` is a personal access token (``<prefix>.<secret>``, sent as ``Bearer``) or a legacy
API key (``POST /api/auth/login``'s ``key``, sent as ``Token``). Every failure is a :class:`CvatError` whose
message says what to fix; the job that meets one is skipped, never crashed.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import requests

from ..config import Settings
from ..errors import MediaError
from ..jsonbody import loads
from ..media.fetcher import DecodedImage, decode_image, read_capped
from ..media.urls import Destination, UnsafeURL, parse_destination

PAGE_SIZE = 100
MAX_PAGES = 100  # 10 000 jobs of a project: more is a CVAT answering in circles


class CvatError(Exception):
    """CVAT could not be read; ``message`` says why and what to change, ``status`` is CVAT's answer (0: none)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status


def auth_header(token: str) -> dict[str, str]:
    """CVAT's ``Authorization`` for ``token``: a personal access token has a dot (``prefix.secret``)."""
    if not token:
        return {}
    return {"Authorization": f"{'Bearer' if '.' in token else 'Token'} {token}"}


class CvatAPI:
    """GET calls to one CVAT server (``CVAT_URL``) with ``CVAT_ACCESS_TOKEN``."""

    def __init__(self, settings: Settings, session: requests.Session | None = None):
        if not settings.cvat_url:
            raise CvatError("CVAT_URL is not set: the worker reads CVAT's annotations from it (http://<cvat>:8080)")
        try:
            self.base: Destination = parse_destination(settings.cvat_url.rstrip("/"))
        except UnsafeURL as exc:
            raise CvatError(f"CVAT_URL is not usable: {exc.message}") from None
        if not settings.cvat_access_token:
            raise CvatError(
                "CVAT_ACCESS_TOKEN is not set: create a personal access token in CVAT (or use the key of "
                "POST /api/auth/login) for a user who can see the project's jobs"
            )
        self.settings = settings
        self.session = session or requests.Session()
        self.session.trust_env = False  # never through an ambient proxy
        self.session.headers["User-Agent"] = "adaptiveclick-ml-backend"
        self._auth = auth_header(settings.cvat_access_token)

    # --- the calls ------------------------------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any]:
        return self._object(f"/api/jobs/{int(job_id)}", f"job {job_id}")

    def jobs(
        self, *, project_id: int | None = None, task_id: int | None = None, org_id: int | None = None
    ) -> list[dict[str, Any]]:
        """All jobs of a project (or of a task), page by page; ``org_id``: the organization that owns it (CVAT lists
        an organization's objects in that organization's context)."""
        params: dict[str, Any] = {"page_size": PAGE_SIZE}
        if org_id is not None:
            params["org_id"] = int(org_id)
        if project_id is not None:
            params["project_id"] = int(project_id)
        if task_id is not None:
            params["task_id"] = int(task_id)
        out: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            reply = self.get_json("/api/jobs", dict(params, page=page))
            results = reply.get("results") if isinstance(reply, dict) else None
            if not isinstance(results, list):
                raise CvatError(f"CVAT's job list is not a page of results: {str(reply)[:200]}")
            out.extend(j for j in results if isinstance(j, dict) and _is_id(j.get("id")))
            if not reply.get("next"):
                return out
        raise CvatError(f"CVAT's job list did not end after {MAX_PAGES} pages of {PAGE_SIZE}")

    def annotations(self, job_id: int) -> dict[str, Any]:
        return self._object(f"/api/jobs/{int(job_id)}/annotations", f"the annotations of job {job_id}")

    def meta(self, job_id: int) -> dict[str, Any]:
        return self._object(f"/api/jobs/{int(job_id)}/data/meta", f"the media of job {job_id}")

    def frame(self, job_id: int, number: int) -> DecodedImage:
        """Frame ``number`` (the task's numbering) of a job, as stored (``quality=original``), decoded."""
        path = f"/api/jobs/{int(job_id)}/data"
        params = {"type": "frame", "number": int(number), "quality": "original"}
        data = self._get(path, params, self.settings.max_image_bytes, "MAX_IMAGE_MB", f"frame {number}")
        try:
            return decode_image(data, self.settings.max_image_pixels, f"frame {number} of CVAT job {job_id}")
        except MediaError as exc:  # CVAT answered, with a frame that is not a usable image
            raise CvatError(exc.message, 200) from None

    # --- plumbing -------------------------------------------------------------------------------

    def _object(self, path: str, what: str) -> dict[str, Any]:
        reply = self.get_json(path)
        if not isinstance(reply, dict):
            raise CvatError(f"CVAT answered GET {path} with a JSON {type(reply).__name__}, not {what}")
        return reply

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        data = self._get(path, params, self.settings.max_request_bytes, "MAX_REQUEST_MB", "the answer")
        try:
            return loads(data)  # integers bounded to 64 bits, as every JSON this backend reads
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise CvatError(
                f"CVAT answered GET {path} with something that is not JSON ({data[:80]!r}): is CVAT_URL CVAT's "
                "API address?"
            ) from None

    def _get(self, path: str, params: dict[str, Any] | None, cap: int, cap_name: str, what: str) -> bytes:
        query = f"?{urlencode(params)}" if params else ""
        try:
            url = self.base.with_path(path + query).url
        except UnsafeURL as exc:
            raise CvatError(exc.message) from None
        timeout = self.settings.fetch_timeout_s
        deadline = time.monotonic() + timeout
        late = f"CVAT did not answer GET {path} within FETCH_TIMEOUT_S={timeout:g} s"
        try:
            resp = self.session.get(url, headers=self._auth, timeout=timeout, stream=True, allow_redirects=False)
        except requests.Timeout:
            raise CvatError(late) from None
        except (requests.RequestException, ValueError) as exc:  # ValueError: a malformed redirect Location
            raise CvatError(f"cannot reach CVAT at {self.base.url} ({type(exc).__name__}): check CVAT_URL") from None
        with resp:
            if resp.is_redirect:
                raise CvatError(
                    f"CVAT answered GET {path} with a redirect ({resp.status_code}); redirects are not followed (the "
                    "token goes to CVAT_URL only): set CVAT_URL to the address CVAT serves its API on",
                    resp.status_code,
                )
            if resp.status_code in (401, 403):
                raise CvatError(
                    f"CVAT refused GET {path} ({resp.status_code}): set CVAT_ACCESS_TOKEN to a token of a user who "
                    "can see the project's jobs",
                    resp.status_code,
                )
            if resp.status_code == 404:
                raise CvatError(f"CVAT has no {path} (404): deleted, or not visible to the token's user", 404)
            if resp.status_code >= 400:
                raise CvatError(f"CVAT answered {resp.status_code} for GET {path}", resp.status_code)
            try:
                return read_capped(resp, url, deadline, cap, cap_name, late, what)
            except MediaError as exc:
                raise CvatError(exc.message, resp.status_code) from None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
