"""The Label Studio adapter: what each ML-backend protocol call does (``app.py`` wires it to routes).

A ``/predict`` body is read once into a :class:`~.predict_request.PredictRequest` (``predict_request.py``); this
module turns it into the core's terms (the frame, clicks in pixels, the object's key, its box or the saved region
it continues) and formats the core's mask with ``predict_request.answer_regions``. Images, sessions and the model
are the platform-neutral core's (``interactive/core.py``)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import math
import threading
import time
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import BackendError, BadRequest
from ..finetuning.server import FinetuneServer, finetune_enabled
from ..interactive.core import Frame, InteractiveCore, Superseded, image_key
from ..interactive.engine import Engine
from ..interactive.session_store import SharedStates
from ..interactive.sessions import Click, RunStats, SessionCache, box_prompt
from ..masks.rle import mask2rle
from ..media.fetcher import DecodedImage, MediaFetcher
from .labeling_config import ClickSet, LabelConfig, parse_label_config, project_id
from .predict_request import ClickRequest, PredictRequest, answer_regions, read_predict
from .regions import RegionError, read_region

log = logging.getLogger("adaptiveclick.backend")

LS_USER_AGENT = "heartex/"
# PIL's Image.transpose methods that undo each EXIF orientation (EXIF-shown image -> stored pixels).
_UNDO_ORIENTATION = {2: 0, 3: 3, 4: 1, 5: 5, 6: 2, 7: 6, 8: 4}
MAX_REGIONS_PER_CLICK = 32  # saved regions (newest first) a click may be continuing; docs/security.md
REGION_PIXELS_PER_CLICK = 256_000_000  # and the pixels they may cost in all: 4 regions on a 64 MP frame


def make_frame(
    decoded: DecodedImage, width: int | None, height: int | None, rotation: int, max_pixels: int = 64_000_000
) -> Frame:
    """Match the size the UI reported (``original_width/height``, ``image_rotation``) to the decoded image.

    Label Studio reports the browser's natural size, after EXIF orientation; current versions rotate only the
    view, so coordinates stay in the unrotated frame. Older UIs reported a rotated frame (width and height
    swapped with ``image_rotation`` 90/270), and a browser that ignores EXIF reports the stored size; both are
    recognised. Any other mismatch is served at the decoded image and the mask is rescaled (and logged)."""
    arr = decoded.array
    w, h = decoded.size
    note = ""
    if width is not None and height is not None and width * height > max(max_pixels, w * h):
        note = f"ignoring the reported image size {width}x{height} (above the pixel limit); answering at {w}x{h}"
        width = height = None
    if width is None or height is None or (width, height) == (w, h):
        return Frame("id", (w, h), (w, h), False, lambda: arr, note)
    if rotation in (90, 270) and (width, height) == (h, w):
        return Frame(
            f"rot{rotation}",
            (width, height),
            (width, height),
            True,
            lambda: np.ascontiguousarray(np.rot90(arr, k=-(rotation // 90))),
        )
    if decoded.orientation in _UNDO_ORIENTATION and (width, height) == decoded.raw_size:

        def raw() -> np.ndarray:
            from PIL import Image

            return np.ascontiguousarray(Image.fromarray(arr).transpose(_UNDO_ORIENTATION[decoded.orientation]))

        return Frame(
            "raw",
            (width, height),
            (width, height),
            True,
            raw,
            "the labeling UI reports the image's stored size, ignoring its EXIF orientation",
        )
    return Frame(
        "id",
        (w, h),
        (width, height),
        False,
        lambda: arr,
        f"the labeling UI reported the image as {width}x{height} but it decodes to {w}x{h}: clicks are "
        f"mapped by percent and the mask is rescaled to {width}x{height}",
    )


def clicks_to_pixels(clickset: ClickSet, frame: Frame) -> tuple[Click, ...]:
    """Percent -> (row, col) in the frame image; clamps to the image, drops exact duplicates, keeps order."""
    w, h = frame.size
    seen: set[Click] = set()
    out: list[Click] = []
    for c in clickset.clicks:
        col = min(int(math.floor(min(max(c.x, 0.0), 100.0) / 100.0 * w)), w - 1)
        row = min(int(math.floor(min(max(c.y, 0.0), 100.0) / 100.0 * h)), h - 1)
        click = (row, col, bool(c.positive))
        if click in seen:
            continue
        seen.add(click)
        out.append(click)
    return tuple(out)


def encode_mask(mask: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Bool mask -> Label Studio brush RLE (uint8 bytes) of a 0/255 uint8 mask at ``out_size`` (width, height)."""
    mask_u8 = mask.view(np.uint8) * np.uint8(255) if mask.dtype == np.bool_ else (mask > 0).astype(np.uint8) * 255
    if (mask_u8.shape[1], mask_u8.shape[0]) != tuple(out_size):
        import cv2

        mask_u8 = cv2.resize(mask_u8, tuple(int(v) for v in out_size), interpolation=cv2.INTER_NEAREST)
    return np.asarray(mask2rle(mask_u8), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class SavedRegion:
    """A region of the task's annotations or drafts that a click continues: its id and mask in the frame."""

    id: str
    mask: np.ndarray
    digest: str  # names the mask in the session key


def region_to_continue(request: ClickRequest, click: Click, frame: Frame, limit: int) -> SavedRegion | None:
    """The first of the request's saved regions (``predict_request.saved_regions``: the preferred first) that
    ``click`` lies in, with its mask in the frame; malformed ones are skipped (the click starts a new object)."""
    row, col = click[0], click[1]
    # A draft can hold any number of regions and each costs a rasterisation at the frame's size: at most
    # MAX_REGIONS_PER_CLICK of them, and fewer on large frames (REGION_PIXELS_PER_CLICK in all).
    frame_pixels = frame.size[0] * frame.size[1]
    limit_count = min(MAX_REGIONS_PER_CLICK, max(1, REGION_PIXELS_PER_CLICK // max(1, frame_pixels)))
    for read, result in enumerate(request.saved):
        if read >= limit_count:
            log.info("more than %d saved regions of this label: the rest are not continued", limit_count)
            return None
        try:  # only at the frame's size: a region's claimed size is rasterised, so it must be this image's
            saved = read_region(result, f"saved region {result['id']}", limit, {frame.size, frame.out_size})
        except RegionError:
            continue  # a malformed region is not continued; the click starts a new object
        mask = saved.mask_at(frame.size[1], frame.size[0])
        if mask[row, col]:
            digest = hashlib.sha1(np.packbits(mask).tobytes() + repr(mask.shape).encode()).hexdigest()[:16]
            return SavedRegion(result["id"], mask, digest)
    return None


def _url_key(url: Any) -> tuple[str, str]:
    """The image cache's key for a task image URL."""
    return image_key(url if isinstance(url, str) else repr(url))


class Backend:
    def __init__(self, settings: Settings, engine: Engine | None = None, fetcher: MediaFetcher | None = None):
        self.settings = settings
        self.engine = engine or Engine(settings)
        self.core = InteractiveCore(settings, self.engine)
        self.fetcher = fetcher or MediaFetcher(settings)
        self._lock = threading.Lock()
        self._prefetch = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._prefetch_pending = 0
        self._schemas: dict[str, str] = {}
        self._reported_configs: set[int] = set()
        self.started = time.time()
        self.ls_requests = 0
        self.predictions = 0
        # Active-learning fine-tuning (MODEL_DIR): webhooks recorded, jobs run by a worker process, hot swap.
        swap = self.core.drop_sessions
        self.finetune = FinetuneServer(settings, self.engine, on_swap=swap) if finetune_enabled(settings) else None

    def close(self) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        if self.finetune is not None:
            self.finetune.stop()

    @property
    def cache(self) -> SessionCache:
        return self.core.cache

    @property
    def shared(self) -> SharedStates | None:
        return self.core.shared

    # --- /health, /versions --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``status``: ``UP`` (the model answers clicks), ``LOADING`` (the first seconds after a start) or ``ERROR``
        (the model could not be loaded: ``model_error`` says why); ``model_loaded`` is true exactly when ``UP``."""
        engine = self.engine
        loaded = engine.ready.is_set() and engine.error is None
        status = {
            "status": "UP" if loaded else "LOADING",
            "model_class": engine.model_class,
            "model_version": engine.model_version,
            "model_loaded": loaded,
        }
        if engine.error:
            status["status"] = "ERROR"
            status["model_error"] = engine.error
        return status

    def versions(self) -> dict[str, Any]:
        if self.finetune is not None:
            return {"versions": self.finetune.version_names(), "model_version": self.engine.model_version}
        return {"versions": [self.engine.model_version], "model_version": self.engine.model_version}

    # --- /setup --------------------------------------------------------------------------------

    def setup(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the /setup body must be a JSON object")
        schema = body.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise BadRequest("setup.schema must be a string (the labeling config)")
        project = project_id(body.get("project"))
        self.fetcher.set_setup_fallback(body.get("hostname"), body.get("access_token"))
        if (
            self.finetune is not None
            and isinstance(body.get("hostname"), str)
            and isinstance(body.get("access_token"), str)
        ):
            self.finetune.ls_fallback = (body["hostname"], body["access_token"])
        reply: dict[str, Any] = {"model_version": self.engine.model_version}
        if schema:
            config = parse_label_config(schema)
            problems = config.problems()
            self._report_config(schema, config, project)
            if problems:
                reply["warnings"] = problems
            if project:
                self._schemas[project] = schema
        return reply

    def _report_config(self, schema: str, config: LabelConfig, project: str) -> None:
        """Log what is wrong with a labeling config, once per config."""
        key = hash(schema)
        if key in self._reported_configs:
            return
        if len(self._reported_configs) > 1000:
            self._reported_configs.clear()
        self._reported_configs.add(key)
        for problem in config.problems():
            log.error("project %s: %s", project or "?", problem)

    # --- /webhook ------------------------------------------------------------------------------

    def webhook(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("the webhook body must be a JSON object")
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest('the webhook body needs an "action" string')
        reply: dict[str, Any] = {"status": "ok", "action": action}
        project = body.get("project")
        log.info("webhook %s (project %s)", action[:64], project_id(project) or "?")
        if self.finetune is not None and self.finetune.handles(action):
            reply.update(self.finetune.on_webhook(action, body))
        elif action == "START_TRAINING":
            log.info(
                "START_TRAINING received: fine-tuning is off (it needs MODEL_DIR and the adaptiveclick "
                "engine); train offline and restart with MODEL_CHECKPOINT pointing at the new weights"
            )
            reply["training"] = "not supported online"
        elif action == "TASKS_DELETED":
            tasks = body.get("tasks")
            ids = {t.get("id") for t in tasks if isinstance(t, dict)} if isinstance(tasks, list) else set()
            ids.discard(None)
            dropped = self.cache.drop(lambda k: isinstance(k, tuple) and len(k) > 1 and k[1] in ids)
            reply["dropped"] = dropped
        elif action == "PROJECT_DELETED":
            pid = project_id(project)
            if pid:
                reply["dropped"] = self.cache.drop(lambda k: isinstance(k, tuple) and k and k[0] == pid)
        return reply

    # --- /predict ------------------------------------------------------------------------------

    def read(self, body: Any) -> PredictRequest:
        """A ``/predict`` body read once (``predict_request.read_predict``); ``BadRequest`` when malformed."""
        return read_predict(body, self._schemas, self.settings.output_shape, self._report_config)

    def predict(
        self, request: PredictRequest, cancelled: threading.Event | None = None
    ) -> tuple[dict[str, Any], RunStats]:
        """Answer a ``/predict`` request; ``cancelled`` (set when the client disconnects) stops the click loop."""
        stats = RunStats() if cancelled is None else RunStats(cancelled=cancelled)
        version = self.engine.model_version
        empty = {"result": [], "score": 0.0, "model_version": version}
        if request.click is None:  # a task opened, a batch, or nothing to answer: at once
            if request.prefetch is not None and self.settings.prefetch_on_open:
                self._prefetch_image(*request.prefetch)
            return {"results": [dict(empty) for _ in range(request.tasks)], "model_version": version}, stats
        try:
            regions, score = self._interactive(request.click, stats)
        except Superseded as exc:  # the editor shows only the reply to its newest request: nothing to compute
            log.debug("task %s: %s", request.click.task_id, exc)
            stats.superseded = True
            return {"results": [dict(empty) for _ in range(request.tasks)], "model_version": version}, stats
        self.predictions += 1
        first = {"result": regions, "score": score, "model_version": version}
        return {"results": [first] + [dict(empty) for _ in range(request.tasks - 1)], "model_version": version}, stats

    def _load_image(self, url: Any, task_id: int | None, stats: RunStats | None = None) -> DecodedImage:
        """The task's decoded image, from the core's cache or fetched once (``MediaFetcher``: limits, auth)."""

        def fetch() -> DecodedImage:
            image = self.fetcher.load(url, task_id)  # bounded by FETCH_TIMEOUT_S (a deadline, see media/fetcher.py)
            log.info(
                "fetched %s (%dx%d, %.0f ms fetch + %.0f ms decode)",
                str(url)[:120],
                *image.size,
                image.fetch_ms,
                image.decode_ms,
            )
            return image

        return self.core.image(_url_key(url), fetch, stats)

    def image_to_fetch(self, request: PredictRequest) -> tuple[Any, Any] | None:
        """``(url, task id)`` of the image a click request needs and the cache lacks, else ``None``: lets the
        server download it before the request takes a request thread (app.py)."""
        click = request.click
        if click is None or self.core.has_image(_url_key(click.image_url)):
            return None
        return click.image_url, click.task_id

    def fetch_image(self, url: Any, task_id: Any) -> None:
        """Download and cache an image (errors surface again, with their status, in the request that needs it)."""
        try:
            self._load_image(url, task_id)
        except BackendError:
            pass

    def _prefetch_image(self, task_id: int | None, url: Any) -> None:
        """Warm the image cache when a task opens, so the first click does not wait for the download."""
        if self.core.has_image(_url_key(url)):
            return
        with self._lock:
            if self._prefetch_pending >= 4:  # the annotator cannot open tasks faster than this
                return
            self._prefetch_pending += 1

        def run() -> None:
            try:
                self._load_image(url, task_id)
            except BackendError as exc:
                log.warning("prefetch of task %s's image failed: %s", task_id, exc.message)
            except Exception:
                log.exception("prefetch of task %s's image failed", task_id)
            finally:
                with self._lock:
                    self._prefetch_pending -= 1

        self._prefetch.submit(run)

    def _box_of(self, click: ClickRequest) -> tuple[float, float, float, float] | None:
        """The box the clicks refine: the request's smart rectangle (remembered by the core, shared between
        replicas), else the one remembered for this image and label when the first click lies inside it, because
        the labeling UI sends the keypoints after a box without the box."""
        clicks = click.clicks
        if clicks.box is not None:
            self.core.remember_box(click.box_key, clicks.box)
            return clicks.box
        box = self.core.recall_box(click.box_key) if clicks.clicks else None
        if box is None:
            return None
        x, y, w, h = box
        first = clicks.clicks[0]
        return box if x <= first.x <= x + w and y <= first.y <= y + h else None

    def _interactive(self, click: ClickRequest, stats: RunStats) -> tuple[list[dict[str, Any]], float]:
        """The regions answering the clicks: one brush mask, or one polygon per part of the mask, as the clicked
        label's output tag is BrushLabels or PolygonLabels (``OUTPUT_SHAPE`` decides when the config has both)."""
        clickset = click.clicks
        decoded = self._load_image(click.image_url, click.task_id, stats)
        frame = make_frame(
            decoded,
            clickset.original_width,
            clickset.original_height,
            clickset.image_rotation,
            self.settings.max_image_pixels,
        )
        clicks = clicks_to_pixels(clickset, frame)
        key = (*click.object_key, frame.key)
        box = self._box_of(click)
        box_key = prompt = None
        if box is not None:
            w, h = frame.size
            x, y, bw, bh = box
            prompt = box_prompt(x / 100 * w, y / 100 * h, (x + bw) / 100 * w, (y + bh) / 100 * h)
            box_key = key[:4] + ("box", clickset.label, frame.key, prompt)
        region = None
        if clickset.box is None and clicks and self.settings.continue_regions:
            # An object already under way stays what it started as: its first request decided (a region saved
            # meanwhile, e.g. by the draft autosave, must not switch it mid-way).
            started = self.core.knows_prefix(key, clicks[:1])
            started = started or (box_key is not None and self.core.knows_prefix(box_key, (prompt, clicks[0])))
            if not started:
                region = region_to_continue(click, clicks[0], frame, self.settings.max_image_pixels)
        if region is not None:  # an accepted region's object: its own session, seeded with the region's mask
            key = key[:4] + ("region", clickset.label, frame.key, region.digest)
        elif box_key is not None:  # a box object: its own session, whose every click sequence starts with the box
            key = box_key
            clicks = (prompt, *clicks)
        # The cached answer per click sequence: the brush RLE, or the mask's bits (polygons are made from it).
        brush = click.output.kind == "brush"
        encode = functools.partial(encode_mask, out_size=frame.out_size) if brush else np.packbits
        seed = None if region is None else region.mask
        result = self.core.segment(key, frame, clicks, encode, stats, supersede=True, seed=seed)
        continued = region.id if region is not None and result.seeded else None
        regions = answer_regions(
            click,
            result.encoded,
            result.score,
            frame.size,
            frame.out_size,
            continued,
            self.settings.polygon_tolerance_px,
            self.settings.polygon_min_area_px,
        )
        return regions, result.score
