"""Task media: resolve ``task.data.image`` to bytes, safely, and decode it the way the browser shows it.

* ``/data/upload/...`` and other relative paths: from Label Studio with its auth.
* ``/data/local-files/?d=...``: from disk when ``LOCAL_FILES_DOCUMENT_ROOT`` is mounted (confined to it), else LS.
* ``s3://``, ``gs://``, ``azure-blob://``: presigned by LS (``/tasks/{id}/presign/?fileuri=``).
* ``http(s)://``: only LS's host or ``MEDIA_ALLOWED_HOSTS`` (SSRF); LS auth is sent to LS's host only.
* ``data:`` URIs.

Auth: a personal access token (a JWT refresh token) is exchanged at ``/api/token/refresh/`` and the access token
cached until shortly before it expires; anything else is a legacy token sent as ``Authorization: Token``.
Downloads are capped in bytes, images in pixels (decompression bombs).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import io
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import requests
from urllib3 import exceptions as urllib3_errors

from ..config import Settings
from ..errors import BadRequest, MediaError
from .urls import Destination, UnsafeURL, join_redirect, parse_destination

log = logging.getLogger("adaptiveclick.backend")

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure")
LS_MEDIA_PATHS = ("/data/upload/", "/data/local-files")
MAX_REDIRECTS = 5
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CHUNK = 256 * 1024


def in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    try:
        with open("/proc/1/cgroup", encoding="utf-8") as fh:
            text = fh.read()
        return any(word in text for word in ("docker", "kubepods", "containerd", "libpod"))
    except OSError:
        return False


def is_loopback_host(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_matches(host: str, port: int, pattern: str) -> bool:
    pattern = pattern.strip().lower()
    if not pattern:
        return False
    if pattern == "*":
        return True
    want_port = None
    if pattern.count(":") == 1 and not pattern.startswith("["):
        pattern, _, p = pattern.partition(":")
        want_port = int(p) if p.isdigit() else None
    if want_port is not None and want_port != port:
        return False
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _resolves_public(host: str) -> bool:
    """True when every address of ``host`` is a public one (not loopback/private/link-local/reserved)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for info in infos:
        try:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
        except ValueError:
            return False
        if not address.is_global or address.is_multicast:
            return False
    return bool(infos)


def _jwt_payload(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


class LabelStudioAuth:
    """Authorization header for Label Studio: legacy ``Token`` or a PAT exchanged for a cached ``Bearer``."""

    def __init__(self, api_key: str, session: requests.Session, timeout: float):
        self.api_key = api_key.strip()
        payload = _jwt_payload(self.api_key) if self.api_key else None
        self.kind = (
            "none"
            if not self.api_key
            else ("pat" if payload and payload.get("token_type") == "refresh" else "jwt" if payload else "legacy")
        )
        self._session = session
        self._timeout = timeout
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_exp = 0.0
        self.exchanges = 0

    def headers(self, base_url: str, force_refresh: bool = False) -> dict[str, str]:
        if self.kind == "none":
            return {}
        if self.kind == "legacy":
            return {"Authorization": f"Token {self.api_key}"}
        if self.kind == "jwt":  # an access token given directly
            return {"Authorization": f"Bearer {self.api_key}"}
        with self._lock:
            if force_refresh or self._access is None or time.time() > self._access_exp - 30:
                self._exchange(base_url)
            return {"Authorization": f"Bearer {self._access}"}

    def _exchange(self, base_url: str) -> None:
        url = base_url.rstrip("/") + "/api/token/refresh/"
        try:
            resp = self._session.post(url, json={"refresh": self.api_key}, timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise MediaError(f"could not exchange LABEL_STUDIO_API_KEY for an access token at {url}: {exc}") from None
        if resp.status_code in (401, 403):
            raise MediaError(
                f"Label Studio refused LABEL_STUDIO_API_KEY ({resp.status_code} from /api/token/refresh/): "
                "the personal access token is expired, revoked or from another Label Studio instance; "
                "create a new one under Account & Settings > Personal Access Token"
            )
        try:
            access = resp.json()["access"]
            assert isinstance(access, str) and access
        except Exception:
            raise MediaError(
                f"unexpected answer {resp.status_code} from {url} when exchanging the personal access token"
            ) from None
        payload = _jwt_payload(access) or {}
        exp = payload.get("exp")
        self._access = access
        self._access_exp = float(exp) if isinstance(exp, (int, float)) else time.time() + 240
        self.exchanges += 1
        log.debug("exchanged the personal access token for an access token valid until %s", self._access_exp)


@dataclasses.dataclass
class DecodedImage:
    """An image as the browser shows it: EXIF orientation applied, RGB uint8."""

    array: np.ndarray  # HxWx3 uint8, EXIF-transposed
    raw_size: tuple[int, int]  # (width, height) as stored, before EXIF orientation
    orientation: int  # EXIF orientation tag (1 = none)
    nbytes_source: int
    fetch_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[0])


# Decodes above this many pixels wait for one of LARGE_DECODES slots: a decode holds several copies of the image
# at once (Pillow's, numpy's, an EXIF rotation's), so a burst of large images (THREADS requests at once) would
# otherwise multiply the peak; docs/security.md has the measured peaks behind both numbers.
LARGE_DECODE_PIXELS = 16_000_000
LARGE_DECODES = 1
_large_decodes = threading.BoundedSemaphore(LARGE_DECODES)
_ROWS_PER_BLOCK_PIXELS = 1 << 20  # 16-bit to 8-bit conversion in blocks of about this many pixels
# What a labeling UI shows (browsers; JPEG includes MPO), plus TIFF and PPM (microscopy, datasets): Pillow's other
# readers (EPS runs Ghostscript, PSD, DDS, FITS, ...) are never tried on bytes from a request.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "AVIF", "TIFF", "ICO", "PPM")
_ADDRESS = re.compile(r"<[^<>]*>|\b0x[0-9a-fA-F]+\b|\d{40,}")


def short_reason(exc: BaseException) -> str:
    """An exception as a short message for a reply: its type and text, without reprs, heap addresses or long
    numbers (a decoder's message can echo what it was given)."""
    text = _ADDRESS.sub("...", str(exc)).strip()
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _gray8_of_16bit(image: Any) -> np.ndarray:
    """A 16/32-bit grey image as uint8, scaled as 8-bit viewers show it (values above 255 are on the 16-bit
    scale): integer arithmetic by blocks of rows, so no float64 or int64 copy of the whole image is made."""
    values = np.asarray(image)  # uint16 (I;16*) or int32 (I): Pillow's copy
    scale16 = values.max(initial=0) > 255
    out = np.empty(values.shape, np.uint8)
    step = max(1, _ROWS_PER_BLOCK_PIXELS // max(1, values.shape[1]))
    for top in range(0, values.shape[0], step):
        block = values[top : top + step].astype(np.int64)
        if scale16:  # round(v * 255 / 65535) = round(v / 257) = (2v + 257) // 514
            block = (2 * block + 257) // 514
        np.clip(block, 0, 255, out=block)
        out[top : top + step] = block
    return out


def decode_image(data: bytes, max_pixels: int, what: str = "the task's image") -> DecodedImage:
    """Decode with Pillow, refusing images above ``max_pixels`` before any pixel is decompressed; ``what`` names
    the image in error messages. Any failure of a decoder on these bytes is the file's fault: a 422 (a 413 for a
    bomb), whatever Pillow raised. Large images wait for a decode slot (``LARGE_DECODE_PIXELS``)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():  # PIL's own warning threshold: the limit below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        with opened as im:
            width, height = im.size
            if width * height > max_pixels:
                raise MediaError(
                    f"the image is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
                    f"{max_pixels / 1e6:.1f} MP (MAX_IMAGE_MEGAPIXELS); refusing to decode it",
                    status=413,
                )
            slot = _large_decodes if width * height > LARGE_DECODE_PIXELS else contextlib.nullcontext()
            with slot:
                array, orientation = _pixels(im, ImageOps)
    except MediaError:
        raise
    except Image.DecompressionBombError:
        raise MediaError("refusing a possible decompression bomb (Pillow's pixel limit)", status=413) from None
    except MemoryError:
        raise MediaError(f"{what} is too large to decode in the memory available", status=413) from None
    except Exception as exc:  # every decoder failure (also NotImplementedError, TypeError, ...) is the file's
        raise MediaError(
            f"{what} could not be decoded ({short_reason(exc)}); is it an image file "
            f"({', '.join(ACCEPTED_FORMATS[:-4])}, ...)?",
            status=422,
        ) from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise MediaError(f"decoded image has an unusable shape {array.shape}", status=422)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return DecodedImage(array, (width, height), orientation, len(data))


def _pixels(im: Any, image_ops: Any) -> tuple[np.ndarray, int]:
    """The pixels of an opened image as the browser shows them (EXIF orientation applied), RGB uint8."""
    from PIL import Image

    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a corrupt EXIF block: shown unrotated, as browsers do
        orientation = 1
    im.load()
    shown = image_ops.exif_transpose(im) if orientation in (2, 3, 4, 5, 6, 7, 8) else im
    if shown.mode != "RGB":
        if shown.mode in ("I;16", "I;16B", "I;16L", "I"):
            shown = Image.fromarray(_gray8_of_16bit(shown))
        shown = shown.convert("RGB")
    return np.asarray(shown), orientation


@dataclasses.dataclass(frozen=True)
class _Rules:
    """What one download may take: bytes, seconds (all hops and reads together), where it may be redirected."""

    max_bytes: int
    timeout_s: float
    what: str  # "the image": names the download in messages
    same_origin: bool = False  # redirects only within Label Studio's origin (its API)
    status_message: Callable[[int], str] | None = None
    cap_name: str = "MAX_IMAGE_MB"  # the settings that set the two limits, named in messages
    timeout_name: str = "FETCH_TIMEOUT_S"


def read_capped(
    resp: requests.Response, url: str, deadline: float, cap: int, cap_name: str, late: str, what: str
) -> bytes:
    """A streamed response's body, at most ``cap`` bytes (``cap_name`` in the message), by ``deadline`` (a host
    trickling bytes cannot hold the read open; ``late`` is the message then). Every platform's downloads use it."""
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and len(length) < 20 and int(length) > cap:
        raise MediaError(
            f"{what} at {url[:200]} is {int(length) / 2**20:.1f} MiB, above {cap_name}={cap // 2**20}", status=413
        )
    buf = bytearray()
    raw = resp.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MediaError(late, status=504)
            if sock is not None:
                sock.settimeout(remaining)  # no single read may outlast the deadline either
            # read1: whatever has arrived (up to a chunk), so the deadline is checked between small reads
            chunk = raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                break
            buf += chunk
            if len(buf) > cap:
                raise MediaError(f"{what} at {url[:200]} is larger than {cap_name}={cap // 2**20}", status=413)
    except (TimeoutError, OSError, urllib3_errors.HTTPError) as exc:
        if time.monotonic() >= deadline or isinstance(exc, (TimeoutError, urllib3_errors.ReadTimeoutError)):
            raise MediaError(late, status=504) from None
        raise MediaError(f"the download from {url[:200]} broke off ({type(exc).__name__})", status=502) from None
    return bytes(buf)


class MediaFetcher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "adaptiveclick-ml-backend"
        self.session.trust_env = False  # never route task media through an ambient proxy
        self._fallback_url = ""
        self._fallback_token = ""
        self._auth: LabelStudioAuth | None = None
        self._auth_lock = threading.Lock()

    # --- Label Studio base URL and auth ---------------------------------------------------

    def set_setup_fallback(self, hostname: Any, access_token: Any) -> None:
        """Remember /setup's ``hostname`` and ``access_token`` for when LABEL_STUDIO_URL / _API_KEY are not set."""
        if isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
            self._fallback_url = hostname.rstrip("/")
        if isinstance(access_token, str) and access_token.strip():
            if self._fallback_token != access_token.strip():
                self._fallback_token = access_token.strip()
                if not self.settings.label_studio_api_key:
                    with self._auth_lock:
                        self._auth = None

    @property
    def ls_url(self) -> str:
        url = self.settings.label_studio_url or self._fallback_url
        if not url:
            raise MediaError(
                "the task's image is stored in Label Studio but LABEL_STUDIO_URL is not set: start the backend with "
                "LABEL_STUDIO_URL=http://<host>:8080 (the address under which this backend reaches Label Studio) "
                "and LABEL_STUDIO_API_KEY",
                status=502,
            )
        if "://" not in url:
            raise MediaError(
                f"LABEL_STUDIO_URL={url!r} has no scheme: write it as http://{url} (or https://)", status=502
            )
        if not url.startswith(("http://", "https://")):
            raise MediaError(f"LABEL_STUDIO_URL={url!r} must start with http:// or https://", status=502)
        return url.rstrip("/")

    @property
    def auth(self) -> LabelStudioAuth:
        with self._auth_lock:
            if self._auth is None:
                key = self.settings.label_studio_api_key or self._fallback_token
                self._auth = LabelStudioAuth(key, self.session, self.settings.fetch_timeout_s)
            return self._auth

    @property
    def ls_destination(self) -> Destination:
        """Label Studio's origin, parsed by the same strict parser as every URL connected to."""
        try:
            return parse_destination(self.ls_url)
        except UnsafeURL as exc:
            raise MediaError(f"LABEL_STUDIO_URL is not usable: {exc.message}", status=502) from None

    def _is_ls(self, destination: Destination) -> bool:
        try:
            return destination.origin == self.ls_destination.origin
        except MediaError:
            return False

    def _allowed_listed(self, destination: Destination) -> bool:
        return any(_host_matches(destination.host, destination.port, p) for p in self.settings.media_allowed_hosts)

    # --- entry point -----------------------------------------------------------------------

    def load(self, url: Any, task_id: Any = None) -> DecodedImage:
        t0 = time.perf_counter()
        data = self.fetch(url, task_id)
        t1 = time.perf_counter()
        image = decode_image(data, self.settings.max_image_pixels)
        image.fetch_ms = (t1 - t0) * 1000
        image.decode_ms = (time.perf_counter() - t1) * 1000
        return image

    def fetch(self, url: Any, task_id: Any = None) -> bytes:
        if not isinstance(url, str) or not url.strip():
            raise BadRequest("the task has no image URL in its data (check the Image tag's value, e.g. $image)")
        url = url.strip()
        if url.startswith("data:"):
            return self._data_uri(url)
        match = _SCHEME.match(url)
        scheme = match.group(1).lower() if match else ""
        if scheme in CLOUD_SCHEMES:
            return self._presigned(url, task_id)
        if not scheme:
            if url.startswith("/") and not url.startswith("//"):
                if url.startswith("/data/local-files") and self.settings.local_files_document_root:
                    return self._local_file(url)
                return self._http(self.ls_destination.with_path(url))
            raise BadRequest(
                f"image URL {url[:200]!r} has no scheme: use /data/upload/..., /data/local-files/?d=..., "
                "http(s)://... or s3://... in the task data"
            )
        if scheme in ("http", "https"):
            destination = parse_destination(url)
            if (
                not self._is_ls(destination)
                and not self._allowed_listed(destination)
                and destination.path.startswith(LS_MEDIA_PATHS)
            ):
                # Label Studio wrote its own media URL with a host this backend does not use for it (typically
                # localhost vs. the compose service name): fetch the path from LABEL_STUDIO_URL instead.
                query = f"?{destination.query}" if destination.query else ""
                destination = self.ls_destination.with_path(destination.path + query)
            if (
                self._is_ls(destination)
                and destination.path.startswith("/data/local-files")
                and self.settings.local_files_document_root
            ):
                return self._local_file(destination.url)
            return self._http(destination)
        raise BadRequest(f"unsupported image URL scheme {scheme!r} in {url[:200]!r}")

    # --- sources ---------------------------------------------------------------------------

    def _data_uri(self, url: str) -> bytes:
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise BadRequest("only base64 data: URIs are supported for images")
        if len(payload) * 3 // 4 > self.settings.max_image_bytes:
            raise MediaError("the data: URI image is larger than MAX_IMAGE_MB", status=413)
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise BadRequest("the data: URI is not valid base64") from None

    def _local_file(self, url: str) -> bytes:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        rel = (query.get("d") or [""])[0]
        if not rel:
            raise BadRequest(f"local-files URL {url[:200]!r} has no ?d=<path> parameter")
        if "\x00" in rel:
            raise BadRequest(f"local-files path {rel[:200]!r} contains a NUL byte")
        root = os.path.realpath(self.settings.local_files_document_root)
        path = os.path.realpath(os.path.join(root, rel.lstrip("/")))
        if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
            raise MediaError(
                f"refusing local file {rel!r}: it resolves outside LOCAL_FILES_DOCUMENT_ROOT={root}", status=403
            )
        try:
            size = os.path.getsize(path)
            if size > self.settings.max_image_bytes:
                raise MediaError(f"local file {rel!r} is {size / 2**20:.1f} MiB, above MAX_IMAGE_MB", status=413)
            with open(path, "rb") as fh:
                return fh.read(self.settings.max_image_bytes + 1)
        except FileNotFoundError:
            raise MediaError(
                f"local file {rel!r} not found under LOCAL_FILES_DOCUMENT_ROOT={root}: mount the same folder as Label "
                "Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT into the backend, or unset LOCAL_FILES_DOCUMENT_ROOT "
                "to download local files through Label Studio",
                status=404,
            ) from None
        except (IsADirectoryError, PermissionError) as exc:
            raise MediaError(f"cannot read local file {rel!r}: {exc}", status=403) from None

    def _presigned(self, uri: str, task_id: Any) -> bytes:
        try:
            bucket = urllib.parse.urlsplit(uri).netloc
        except ValueError as exc:
            raise BadRequest(f"cloud-storage URI {uri[:200]!r} is malformed ({exc})") from None
        if not bucket:
            raise BadRequest(f"cloud-storage URI {uri[:200]!r} names no bucket (expected s3://bucket/key)")
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise BadRequest(f"a cloud-storage image ({uri[:100]}) needs the task id to be presigned by Label Studio")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        path = f"/tasks/{task_id}/presign/?fileuri={urllib.parse.quote(fileuri)}"
        return self._http(self.ls_destination.with_path(path))

    def get_label_studio(
        self, path: str, *, max_bytes: int, timeout_s: float, status_message: Callable[[int], str]
    ) -> bytes:
        """GET ``path`` (with its query) from Label Studio's API with its auth, by the rules task images follow,
        stricter: redirects only within Label Studio's origin (at most ``MAX_REDIRECTS``), the body capped at
        ``max_bytes`` and the whole exchange, redirects and reads, bounded by ``timeout_s`` (messages name them
        ``EXPORT_MAX_MB`` / ``EXPORT_TIMEOUT_S``: the export is the caller). An answer >= 400 is a ``MediaError``
        with ``status_message(status)``."""
        rules = _Rules(max_bytes, timeout_s, "the export", True, status_message, "EXPORT_MAX_MB", "EXPORT_TIMEOUT_S")
        return self._http(self.ls_destination.with_path(path), rules)

    def _http(self, destination: Destination, rules: _Rules | None = None) -> bytes:
        """GET with manual redirects: every hop must be LS's host, allow-listed, or (after LS) a public host
        (``rules.same_origin``: LS's origin only).

        Each hop is parsed by :func:`parse_destination` and the rebuilt URL is what is requested, so the host
        checked is the host connected to; Label Studio's token goes only to Label Studio's origin.
        """
        rules = rules or _Rules(self.settings.max_image_bytes, self.settings.fetch_timeout_s, "the image")
        retried_auth = False
        came_from_ls = False
        deadline = time.monotonic() + rules.timeout_s  # for the whole download, redirects included
        for _ in range(MAX_REDIRECTS + 1):
            url = destination.url
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MediaError(self._deadline_message(url, rules), status=504)
            is_ls = self._is_ls(destination)
            if rules.same_origin and not is_ls:
                raise MediaError(
                    f"refusing the redirect to {destination.netloc[:100]}: {rules.what} is read from Label "
                    f"Studio's origin only (LABEL_STUDIO_URL={self.settings.label_studio_url or 'unset'})",
                    status=502,
                )
            if not is_ls and not self._allowed_listed(destination):
                if not (came_from_ls and _resolves_public(destination.host)):
                    host = destination.host
                    raise MediaError(
                        f"refusing to fetch the image from {host!r}: it is neither Label Studio's host "
                        f"(LABEL_STUDIO_URL={self.settings.label_studio_url or self._fallback_url or 'unset'}) nor in "
                        "MEDIA_ALLOWED_HOSTS (comma-separated hosts, '*.example.com' or '*'); add it there if it is "
                        "trusted",
                        status=403,
                    )
            headers = self.auth.headers(self.ls_destination.with_path("").url) if is_ls else {}
            try:
                resp = self.session.get(url, headers=headers, timeout=remaining, stream=True, allow_redirects=False)
            except requests.ConnectionError as exc:
                raise MediaError(self._unreachable_hint(destination, exc), status=502) from None
            except requests.Timeout:
                raise MediaError(self._deadline_message(url, rules), status=504) from None
            except requests.RequestException as exc:
                raise MediaError(f"could not fetch {url[:200]}: {exc}", status=502) from None
            except ValueError as exc:  # requests pre-parses a redirect's Location even when it does not follow it
                raise MediaError(
                    f"refusing the answer of {url[:200]}: malformed redirect ({exc})", status=502
                ) from None
            try:
                if resp.status_code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise MediaError(f"redirect without Location from {url[:200]}")
                    came_from_ls = came_from_ls or is_ls
                    try:
                        destination = join_redirect(destination, location)
                    except UnsafeURL as exc:
                        raise MediaError(f"refusing the redirect from {url[:200]}: {exc.message}", status=502) from None
                    continue
                if resp.status_code in (401, 403) and is_ls and self.auth.kind == "pat" and not retried_auth:
                    retried_auth = True
                    self.auth.headers(self.ls_destination.with_path("").url, force_refresh=True)
                    continue
                if resp.status_code >= 400:
                    if rules.status_message is not None:
                        raise MediaError(rules.status_message(resp.status_code), status=502)
                    raise MediaError(self._status_hint(url, resp.status_code, is_ls), status=502)
                return self._read_capped(resp, url, deadline, rules)
            finally:
                resp.close()
        raise MediaError(f"too many redirects (more than {MAX_REDIRECTS}) fetching {rules.what} ({url[:200]})")

    def _deadline_message(self, url: str, rules: _Rules) -> str:
        limit = f"{rules.timeout_name}={rules.timeout_s:g} s"
        return f"downloading {rules.what} from {url[:200]} did not finish within {limit}"

    def _read_capped(self, resp: requests.Response, url: str, deadline: float, rules: _Rules) -> bytes:
        late = self._deadline_message(url, rules)
        return read_capped(resp, url, deadline, rules.max_bytes, rules.cap_name, late, rules.what)

    def _status_hint(self, url: str, status: int, is_ls: bool) -> str:
        where = urllib.parse.urlsplit(url)
        short = f"{where.scheme}://{where.netloc}{where.path}"
        if is_ls and status in (401, 403):
            kind = self.auth.kind
            if "/data/local-files" in where.path and status == 403:
                return (
                    f"Label Studio answered 403 for {short}: local files are not served. Start Label Studio with "
                    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, and "
                    "add a Local Files storage covering the folder; or mount the same folder into the backend and set "
                    "LOCAL_FILES_DOCUMENT_ROOT"
                )
            if kind == "none":
                return (
                    f"Label Studio answered {status} for {short}: set LABEL_STUDIO_API_KEY (a personal access token "
                    "from Account & Settings, or a legacy token) so the backend can download task images"
                )
            if kind == "legacy":
                return (
                    f"Label Studio refused the legacy token in LABEL_STUDIO_API_KEY ({status} for {short}): "
                    "legacy tokens are disabled for new organizations; enable them under Organization > "
                    "Access Token Settings, or use a personal access token instead"
                )
            return (
                f"Label Studio answered {status} for {short} with the personal access token: the user behind "
                "LABEL_STUDIO_API_KEY may lack access to this project, or the token belongs to another instance"
            )
        if status == 404:
            extra = (
                " Local files: check the Local Files storage path and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."
                if "/data/local-files" in where.path
                else ""
            )
            return f"the image was not found ({status} for {short}).{extra}"
        return f"fetching the image failed: {status} for {short}"

    def _unreachable_hint(self, destination: Destination, exc: Exception) -> str:
        msg = f"cannot connect to {destination.netloc} to fetch the image ({type(exc).__name__})"
        if is_loopback_host(destination.host) and in_container():
            msg += (
                ": this backend runs in a container, where 'localhost' is the container itself; set LABEL_STUDIO_URL "
                "to an address the container can reach (the compose service name, e.g. http://label-studio:8080, or "
                "http://host.docker.internal:8080)"
            )
        elif self._is_ls(destination):
            msg += ": check LABEL_STUDIO_URL"
        return msg
