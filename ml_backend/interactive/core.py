"""The platform-neutral core: an image, clicks and an object key in; a mask (encoded as the platform wants) out.

Label Studio (``labelstudio/adapter.py``) and CVAT (``cvat/interactor.py``) are thin adapters on it: each reads its
platform's request into a :class:`Frame`, the clicks in that frame's pixels and an object key, and formats what
:meth:`InteractiveCore.segment` returns. Everything that makes a click cheap and safe lives here once: the
decoded-image cache (one fetch or decode per image, even for concurrent requests), the per-object sessions with the
predictor state after every click prefix, the box an object started from, all shared between replicas through
``SESSION_STORE``, ``MAX_CLICKS``, requests overtaken by newer ones (``BURST_CLICKS``), the engine's lock and hot
swaps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..config import Settings
from ..errors import BackendError, BadRequest, MediaError
from ..media.fetcher import DecodedImage
from .engine import Engine
from .session_store import shared_states
from .sessions import Click, RunStats, Session, SessionCache, order_clicks

Box = tuple[float, float, float, float]  # a box as the platform gave it (Label Studio: x, y, width, height in %)

if TYPE_CHECKING:
    from model.interactive import InteractivePredictor

log = logging.getLogger("adaptiveclick.backend")

IMAGE_KEY = "image"  # first element of every image-cache key (sessions' keys never start with it)


def image_key(source: str) -> tuple[str, str]:
    """The image cache's key for an image named by ``source`` (a URL, or ``sha256:<hex>`` of its bytes)."""
    return IMAGE_KEY, source


@dataclasses.dataclass
class Frame:
    """The pixel grid the clicks refer to: the image the model sees and the size the mask is returned at.

    The image itself is built only when a session is created (``image()``), not on every click."""

    key: str
    size: tuple[int, int]  # (width, height) of the image the model sees
    out_size: tuple[int, int]  # (width, height) of the returned mask
    own_image: bool  # the frame image is a transformed copy, not the cached decoded image
    build: Callable[[], np.ndarray]
    note: str = ""  # logged once, when the session is created

    def image(self) -> np.ndarray:
        return self.build()

    @classmethod
    def of(cls, decoded: DecodedImage) -> Frame:
        """The decoded image as it is (clicks in its pixels, the mask at its size)."""
        return cls("id", decoded.size, decoded.size, False, lambda: decoded.array)


class Superseded(Exception):
    """A newer request for the same object arrived while this one waited for the model: nobody will show this
    answer (Label Studio's editor applies only the reply to its newest request), so none is computed."""


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """What :meth:`InteractiveCore.segment` answers: the encoded mask, its score and the clicks in the order run."""

    encoded: np.ndarray
    score: float
    clicks: tuple[Click, ...]
    seeded: bool = False  # the object continued the given seed (the predictor can take a previous mask)


class InteractiveCore:
    """Images, sessions and the model, shared by every platform adapter of one serving process."""

    def __init__(self, settings: Settings, engine: Engine):
        self.settings = settings
        self.engine = engine
        self.cache = SessionCache(settings.session_cache_mb * 1024 * 1024, settings.session_ttl_s)
        self.shared = shared_states(settings)  # SESSION_STORE: states shared with other workers (None: local only)
        self._inflight: dict[Hashable, concurrent.futures.Future] = {}
        self._inflight_lock = threading.Lock()
        # Requests per object, for superseding: the newest request's number, how many are waiting, and whether a
        # request was answered as superseded since the object last ran (its newest then runs its clicks together).
        self._queue: collections.OrderedDict[Hashable, _ObjectQueue] = collections.OrderedDict()
        self._queue_lock = threading.Lock()
        self._boxes: collections.OrderedDict[Hashable, tuple[Box, float]] = collections.OrderedDict()  # box, expiry

    # --- boxes ----------------------------------------------------------------------------------

    def remember_box(self, where: Hashable, box: Box) -> None:
        """Keep the box an object starts from under ``where``, for the requests that carry its clicks without it
        (Label Studio's editor sends the box once): in this process and in ``SESSION_STORE``, with the sessions'
        TTL, so the click after a box finds it on any replica."""
        with self._queue_lock:
            self._boxes[where] = (box, time.monotonic() + self.settings.session_ttl_s)
            self._boxes.move_to_end(where)
            while len(self._boxes) > MAX_QUEUED_OBJECTS:
                self._boxes.popitem(last=False)
        if self.shared is not None:
            self.shared.remember_box(where, box)

    def recall_box(self, where: Hashable) -> Box | None:
        """The box last remembered under ``where``: the shared store's when there is one (another replica may
        have seen a newer box), else, or while the store is down, this process's."""
        if self.shared is not None:
            found, box = self.shared.recall_box(where)
            if found:
                return box
        with self._queue_lock:
            entry = self._boxes.get(where)
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    # --- images ---------------------------------------------------------------------------------

    def has_image(self, key: Hashable) -> bool:
        return self.cache.get_image(key) is not None

    def image(self, key: Hashable, load: Callable[[], DecodedImage], stats: RunStats | None = None) -> DecodedImage:
        """The decoded image under ``key``: cached, or loaded once even when several requests want it at once.

        ``load`` fetches and decodes it (bounded by the fetcher's own deadline) and raises ``BackendError``s."""
        cached = self.cache.get_image(key)
        if cached is not None:
            if stats is not None:
                stats.image_hit = True
            return cached
        wait_s = self.settings.fetch_timeout_s + 5  # the fetcher's own deadline, plus decoding
        with self._inflight_lock:
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = concurrent.futures.Future()
                self._inflight[key] = future
        if not owner:  # another request (or a prefetch) is loading it
            if stats is not None:
                stats.image_hit = True
            try:
                return future.result(timeout=wait_s)
            except concurrent.futures.TimeoutError:
                raise MediaError(f"the image is still downloading after {wait_s:g} s", status=504) from None
        try:
            image = load()
            self.cache.put_image(key, image, image.array.nbytes)
            future.set_result(image)
            if stats is not None:
                stats.fetch_ms += image.fetch_ms + image.decode_ms
            return image
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)

    # --- sessions -------------------------------------------------------------------------------

    def drop(self, predicate: Callable[[Hashable], bool]) -> int:
        """Forget the sessions and images whose key satisfies ``predicate``."""
        return self.cache.drop(predicate)

    def drop_sessions(self) -> None:
        """After a model swap: forget the sessions (their states come from the old model), keep the images."""
        dropped = self.cache.drop(lambda k: not (isinstance(k, tuple) and k[:1] == (IMAGE_KEY,)))
        log.info("model swapped: dropped %d cached sessions", dropped)

    def knows_prefix(self, key: Hashable, prefix: tuple) -> bool:
        """Whether this worker's session ``key`` has computed a click sequence that starts with ``prefix``."""
        session = self.cache.get_session(key)
        return session is not None and any(s[: len(prefix)] == prefix for s in session.known_sequences())

    def _session(self, key: Hashable, frame: Frame, stats: RunStats, seed: np.ndarray | None = None) -> Session:
        session = self.cache.get_session(key)
        if session is not None and session.generation != self.engine.generation:
            self.cache.drop(lambda k: k == key)  # made by a model that has since been swapped out
            session = None
        if session is not None:
            stats.session_hit = True
            return session
        if not self.engine.ready.wait(timeout=600):
            raise BackendError("the model is still loading; try again in a minute", status=503)
        t0 = time.perf_counter()
        with self.engine.lock:
            stats.queue_ms += (time.perf_counter() - t0) * 1000
            new = Session(key, frame.image(), self._new_predictor(), self.engine.generation, frame.own_image, seed)
        if frame.note:
            log.warning("%s: %s", _describe(key), frame.note)
        session, _ = self.cache.get_or_create_session(key, lambda: new)
        return session

    def _new_predictor(self) -> InteractivePredictor:
        try:
            return self.engine.new_predictor(timeout=0)
        except RuntimeError as exc:
            raise BackendError(str(exc), status=503) from None

    def _order(self, session: Session, clicks: Sequence[Click], version: str) -> tuple[tuple[Click, ...], int]:
        """A click set in the order to run it (``sessions.order_clicks``), from what this worker and, when it
        knows less than one click short of the set, the shared store know of this object."""
        local = session.known_sequences()
        ordered, known = order_clicks(clicks, local)
        if self.shared is not None and known < len(ordered) - 1:
            remote = self.shared.known_sequences(session, version)
            if remote:
                ordered, known = order_clicks(clicks, local + remote)
        return ordered, known

    def segment(
        self,
        key: Hashable,
        frame: Frame,
        clicks: Sequence[Click],
        encode: Callable[[np.ndarray], np.ndarray],
        stats: RunStats,
        ordered: bool = True,
        supersede: bool = False,
        seed: np.ndarray | None = None,
    ) -> Segmentation:
        """The object ``key``'s mask after ``clicks`` (``(row, col, positive)`` in ``frame``'s pixels), encoded.

        ``ordered=False``: ``clicks`` is a set whose order was lost (positives and negatives sent apart); it
        continues the longest sequence already computed for this object, and its new clicks follow in a fixed
        order (``sessions.order_clicks``).
        ``supersede``: a request that waited for the model while a newer one for the same object arrived raises
        :class:`Superseded` without a forward; the newest runs all its new clicks, one forward each
        (``BURST_CLICKS=exact``: the mask of the same clicks made one at a time) or together in one forward
        (``merged``).
        ``seed``: an existing mask (bool, in ``frame``'s pixels) the object continues; ``key`` must name it, since
        a session keeps the seed it was created with.
        ``encode`` turns the bool mask into what the platform sends; its result is cached per click sequence,
        so a repeated request costs neither a forward nor an encoding."""
        if not clicks:
            raise BadRequest("no clicks: at least one click is needed for a mask")
        if len(clicks) > self.settings.max_clicks:
            raise BadRequest(f"{len(clicks)} clicks is above MAX_CLICKS={self.settings.max_clicks}")
        with self._queued(key, supersede) as place:
            session = self._session(key, frame, stats, seed)
            version = self.engine.model_version
            together_from = None
            sequence = tuple(clicks)
            if not ordered:
                sequence, known = self._order(session, clicks, version)
                together_from = known if self.settings.burst_clicks == "merged" else None
            cached = session.cached_result(sequence)
            if cached is not None:
                stats.result_hit = True
                return Segmentation(cached.encoded, cached.score, sequence, session.seed is not None)
            restored = self.shared.restore(session, sequence, version, stats) if self.shared is not None else None
            t0 = time.perf_counter()
            with self.engine.lock:
                stats.queue_ms += (time.perf_counter() - t0) * 1000
                if place is not None:
                    together_from = self._supersede(place, together_from)
                if restored is not None:
                    session.remember_state(*restored)
                mask, score = session.run(sequence, stats, together_from)
            if self.shared is not None:
                self.shared.publish(session, sequence, version, stats, unordered=not ordered)
            t1 = time.perf_counter()
            encoded = encode(mask)
            stats.rle_ms += (time.perf_counter() - t1) * 1000
            session.remember_result(sequence, encoded, score)
            self.cache.trim(keep=key)
            log.debug(
                "%s: %d clicks, %d forwards (from prefix %d), score %.3f",
                _describe(key),
                len(sequence),
                stats.forwards,
                stats.restored_prefix,
                score,
            )
            return Segmentation(encoded, float(score), sequence, session.seed is not None)

    @contextlib.contextmanager
    def _queued(self, key: Hashable, supersede: bool) -> Iterator[tuple[_ObjectQueue, int] | None]:
        """The request's place among the requests for the object (``None`` when it cannot be superseded)."""
        if not supersede:
            yield None
            return
        with self._queue_lock:
            queue = self._queue.get(key)
            if queue is None:
                queue = self._queue[key] = _ObjectQueue()
                while len(self._queue) > MAX_QUEUED_OBJECTS:
                    self._queue.popitem(last=False)
            self._queue.move_to_end(key)
            queue.newest += 1
            queue.waiting += 1
            number = queue.newest
        try:
            yield queue, number
        finally:
            with self._queue_lock:
                queue.waiting -= 1

    def _supersede(self, place: tuple[_ObjectQueue, int], together_from: int | None) -> int | None:
        """Under the engine lock: raise :class:`Superseded` when a newer request for the object exists; with
        ``BURST_CLICKS=merged`` the newest runs its new clicks together (from index 0: whatever the session holds)
        when it superseded any."""
        queue, number = place
        with self._queue_lock:
            if number != queue.newest:
                queue.superseded = True
                raise Superseded(f"request {number} was superseded by request {queue.newest} for the same object")
            burst, queue.superseded = queue.superseded or queue.waiting > 1, False
        return 0 if burst and self.settings.burst_clicks == "merged" else together_from


@dataclasses.dataclass
class _ObjectQueue:
    newest: int = 0  # number of the newest request for the object
    waiting: int = 0  # requests for it in flight
    superseded: bool = False  # one was answered superseded since the object last ran


MAX_QUEUED_OBJECTS = 10_000  # objects whose request numbers are remembered (the oldest are forgotten)


def _describe(key: Hashable) -> str:
    return f"object {str(key)[:120]}"
