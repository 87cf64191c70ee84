"""The weights registry: the known checkpoints, where they come from, downloading and checking them.

The command line (``adaptiveclick weights list|fetch|verify``) is ``cli/weights.py``.
Downloads stream with ``requests`` into ``DEST/FILE.part``, resume with an HTTP ``Range`` request after a dropped
connection (within one run, and across runs), check the sha256 when the registry knows it (a mismatch deletes the
``.part``), and end with an atomic rename, so ``DEST/FILE`` is either absent or complete. Google Drive links
(``drive.google.com/file/d/ID/...``, ``...uc?id=ID``) go through Google's confirmation page, best effort.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

CHUNK = 1 << 20  # hashing block
STREAM_CHUNK = 1 << 16  # network reads: a dropped connection loses at most this much
CONNECT_TIMEOUT_S = 15.0
# Google Drive's direct-download endpoint (module constants so tests can point them at a local server).
GDRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download"
GDRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")
AUTHORS_REPO = "https://github.com/lab206/AdaptiveClick"


class DownloadError(Exception):
    """A download failed; the message says why and what to do."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    filename: str
    kind: str  # "adaptiveclick" (released model), "mae" (backbone init for training), "project" (our format)
    description: str
    url: str | None = None  # None: no direct link known (see ``manual``)
    sha256: str | None = None  # None: not known to us; computed and printed so users can pin it
    manual: str | None = None  # how to get the file when there is no direct link
    local: bool = False  # shipped with the project, never downloaded
    use: str = ""


_DRIVE_MANUAL = (
    "The authors distribute {filename} through a Google Drive link in the README of their repository "
    f"({AUTHORS_REPO}). Google Drive asks for a confirmation in the browser for large files, so either open the "
    "link in a browser and save the file as {dest}, or pass the link to `adaptiveclick weights fetch {name} --url "
    "<link>` (drive.google.com/file/d/ID/... or ...uc?id=ID; best effort). Then run `adaptiveclick weights verify "
    "{dest}` and keep the sha256 it prints to check later copies."
)

REGISTRY: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        WeightsEntry(
            "starter",
            "starter.safetensors",
            "project",
            "the project's CPU-trained starter model, served by default (shipped in weights/)",
            local=True,
            use="the default of `adaptiveclick serve` / `predict`",
        ),
        WeightsEntry(
            "adaptiveclick_base448_sbd",
            "adaptiveclick_base448_sbd.pth",
            "adaptiveclick",
            "released AdaptiveClick ViT-B 448, trained on SBD (authors' Google Drive)",
            manual=_DRIVE_MANUAL,
            use="MODEL_CHECKPOINT={path}",
        ),
        WeightsEntry(
            "adaptiveclick_base448_cocolvis",
            "adaptiveclick_base448_cocolvis.pth",
            "adaptiveclick",
            "released AdaptiveClick ViT-B 448, trained on COCO+LVIS (authors' Google Drive)",
            manual=_DRIVE_MANUAL,
            use="MODEL_CHECKPOINT={path}",
        ),
        *(
            WeightsEntry(
                f"mae_vit_{size}",
                f"mae_pretrain_vit_{size}.pth",
                "mae",
                f"MAE-pretrained ViT-{size[0].upper()} backbone (Meta), to initialise training",
                url=f"https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_{size}.pth",
                use=f"adaptiveclick train --model {config} --mae weights/mae_pretrain_vit_{size}.pth",
            )
            for size, config in (("base", "vit_b_448"), ("large", "vit_l_448"), ("huge", "vit_h_448"))
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# Places


PROJECT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The CPU-trained starter that ships with the project: what is served when no checkpoint is configured.
STARTER_WEIGHTS = PROJECT_WEIGHTS_DIR / "starter.safetensors"


def lookup(name: str) -> WeightsEntry | None:
    """A registry entry by name or file name."""
    if name in REGISTRY:
        return REGISTRY[name]
    base = Path(name).name
    for entry in REGISTRY.values():
        if base in (entry.filename, Path(entry.filename).stem):
            return entry
    return None


def find_local(entry: WeightsEntry, dirs: Iterable[Path]) -> Path | None:
    for d in dirs:
        path = Path(d) / entry.filename
        if path.is_file():
            return path
    return None


def _read_pinned(path: Path) -> str | None:
    """A sha256 from a ``sha256sum``-style file (``HEX`` or ``HEX  NAME``)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    match = re.match(r"([0-9a-fA-F]{64})\b", text)
    return match.group(1).lower() if match else None


def expected_sha256(
    entry: WeightsEntry, near: Path | None = None, weights_dir: Path = PROJECT_WEIGHTS_DIR
) -> str | None:
    """The pinned sha256: the registry's, or for local files ``NAME.sha256`` beside the file / in ``weights_dir``."""
    if entry.sha256:
        return entry.sha256.lower()
    if entry.local:
        stem = Path(entry.filename).stem
        for d in ([near.parent] if near else []) + [weights_dir]:
            pinned = _read_pinned(d / f"{stem}.sha256")
            if pinned:
                return pinned
    return None


def sha256_file(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle, _bar(size, 0, f"sha256 {path.name}", progress and size > 256 * CHUNK) as bar:
        while block := handle.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _bar(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )


# ---------------------------------------------------------------------------------------------
# Download


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<!--"))


def _http_error(response: Any, url: str) -> DownloadError:
    code = response.status_code
    host = urlparse(url).netloc
    if code in (401, 403):
        hint = (
            "access denied: the file is private, the link expired, or (Google Drive) the daily download quota "
            "is exceeded; download it in a browser instead"
        )
    elif code == 404:
        hint = "not found: the link is outdated or mistyped"
    elif code == 429:
        hint = "too many requests: try again later"
    else:
        hint = response.reason or "request failed"
    return DownloadError(f"HTTP {code} from {host} for {url}: {hint}")


def _html_error(url: str, dest: Path) -> DownloadError:
    where = urlparse(url).netloc
    if any(h in where for h in GDRIVE_HOSTS):
        why = (
            "Google Drive answered with a web page instead of the file (its confirmation page, a sign-in page, or "
            "'quota exceeded')"
        )
    else:
        why = f"{where} answered with an HTML page instead of the binary file (a login or error page?)"
    return DownloadError(
        f"{why}; open the link in a browser, save the file as {dest} and run `adaptiveclick weights verify {dest}`"
    )


def google_drive_id(url: str) -> str | None:
    """The file ID of a Google Drive link, or None when ``url`` is not one."""
    parsed = urlparse(url)
    if not any(parsed.netloc == h or parsed.netloc.endswith("." + h) for h in GDRIVE_HOSTS):
        return None
    match = re.search(r"/(?:file/)?d/([A-Za-z0-9_-]{10,})", parsed.path)
    if match:
        return match.group(1)
    ids = parse_qs(parsed.query).get("id")
    return ids[0] if ids else None


class _FormParser:
    """Action and hidden inputs of Google Drive's 'download anyway' form (no HTML parser dependency)."""

    def __init__(self, page: str) -> None:
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        form = re.search(r"<form[^>]*id=\"download-form\"[^>]*>(.*?)</form>", page, re.S | re.I) or re.search(
            r"<form[^>]*>(.*?)</form>", page, re.S | re.I
        )
        if not form:
            return
        action = re.search(r"action=\"([^\"]+)\"", form.group(0), re.I)
        self.action = html.unescape(action.group(1)) if action else None
        for tag in re.finditer(r"<input[^>]*>", form.group(1), re.I):
            name = re.search(r"name=\"([^\"]+)\"", tag.group(0))
            value = re.search(r"value=\"([^\"]*)\"", tag.group(0))
            if name:
                self.fields[html.unescape(name.group(1))] = html.unescape(value.group(1)) if value else ""


def resolve_google_drive(session: Any, file_id: str, timeout: float) -> str:
    """A URL that serves the file itself: Google's ``confirm=t`` endpoint, else the confirmation form's target."""
    from urllib.parse import urlencode

    import requests

    first = f"{GDRIVE_DOWNLOAD_URL}?{urlencode({'id': file_id, 'export': 'download', 'confirm': 't'})}"
    try:
        response = session.get(first, stream=True, timeout=(CONNECT_TIMEOUT_S, timeout))
    except requests.RequestException as error:
        raise DownloadError(f"cannot reach Google Drive ({type(error).__name__}: {error}); no network?") from None
    with response:
        if response.status_code >= 400:
            raise _http_error(response, first)
        ctype = response.headers.get("Content-Type", "")
        if "text/html" not in ctype:
            return response.url  # the file itself: the downloader asks again, with Range
        page = response.text
    form = _FormParser(page)
    if form.action and form.fields.get("id"):
        target = urljoin(response.url, form.action)
        return f"{target}?{urlencode(form.fields)}"
    for key, value in response.cookies.items():
        if key.startswith("download_warning"):
            return f"{GDRIVE_DOWNLOAD_URL}?{urlencode({'id': file_id, 'export': 'download', 'confirm': value})}"
    raise DownloadError(
        "Google Drive did not offer the file (no confirmation form in its page: a private file, an "
        "expired link or an exceeded download quota); download it in a browser instead"
    )


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    session: Any = None,
) -> str:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed with Range); returns the file's sha256.

    ``sha256`` given: checked before the rename; on a mismatch the ``.part`` is deleted and DownloadError raised.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    session.headers.setdefault("User-Agent", "adaptiveclick-weights/1")
    file_id = google_drive_id(url)
    if file_id:
        url = resolve_google_drive(session, file_id, timeout)

    total: int | None = None
    attempt = 0
    restarted = False
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have >= total:
            break
        headers = (
            {"Range": f"bytes={have}-", "Accept-Encoding": "identity"} if have else {"Accept-Encoding": "identity"}
        )
        try:
            with session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, timeout)) as response:
                if response.status_code == 416 and have:
                    # the .part already holds the whole file, or the server's file changed: check the size
                    match = re.match(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
                    if match and int(match.group(1)) == have:
                        total = have
                        break
                    if restarted:
                        raise _http_error(response, url)
                    part.unlink()
                    restarted = True
                    continue
                if response.status_code >= 400:
                    raise _http_error(response, url)
                if "text/html" in response.headers.get("Content-Type", "").lower():
                    raise _html_error(url, dest)
                if response.status_code == 206:
                    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
                    if not match or int(match.group(1)) != have:
                        raise DownloadError(
                            f"{url}: the server answered a resume request with the wrong range "
                            f"({response.headers.get('Content-Range')!r})"
                        )
                    total = int(match.group(2)) if match.group(2) != "*" else None
                    mode = "ab"
                else:  # 200: the whole file (the server ignored Range, or this is the first request)
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    mode, have = "wb", 0
                iterator = response.iter_content(STREAM_CHUNK)
                first = next(iterator, b"")
                if have == 0 and _looks_like_html(first):
                    raise _html_error(url, dest)
                with open(part, mode) as handle, _bar(total, have, dest.name, progress) as bar:
                    for block in _chain(first, iterator):
                        if block:
                            handle.write(block)
                            bar.update(len(block))
                    handle.flush()
                    os.fsync(handle.fileno())
            size = part.stat().st_size
            if total is None or size >= total:
                total = size if total is None else total
                break
            raise requests.exceptions.ChunkedEncodingError(f"connection closed after {size} of {total} bytes")
        except DownloadError:
            raise
        except requests.RequestException as error:
            attempt += 1
            if attempt > retries:
                got = part.stat().st_size if part.exists() else 0
                kept = f"; {got} bytes kept in {part}, run the same command again to resume" if got else ""
                if isinstance(error, requests.exceptions.ConnectionError) and not got:
                    raise DownloadError(
                        f"cannot reach {urlparse(url).netloc} ({type(error).__name__}); no network? "
                        f"Download {url} elsewhere and copy it to {dest}"
                    ) from None
                raise DownloadError(
                    f"download of {url} failed after {attempt} attempt(s): {type(error).__name__}: {error}{kept}"
                ) from None
            time.sleep(min(0.5 * 2 ** (attempt - 1), 10.0))

    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{part} has {part.stat().st_size} bytes, expected {total}; run again to resume")
    digest = sha256_file(part, progress)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"sha256 mismatch for {dest.name}: got {digest}, expected {sha256.lower()}; the partial "
            "download was deleted (a corrupted transfer or a changed file upstream)"
        )
    os.replace(part, dest)
    return digest


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterable[bytes]:
    yield first
    yield from rest
