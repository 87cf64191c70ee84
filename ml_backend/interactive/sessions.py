"""Per-object sessions: the decoded image and the predictor state after each click prefix.

AdaptiveClick feeds the previous mask back into the next forward, so a click's result depends on all earlier
clicks. A session (task, image, label, frame) keeps the predictor snapshot after every click prefix it has
computed; a request whose clicks extend a cached prefix costs one forward per new click, a request that
removes or moves a click restarts from the longest cached prefix, and an exact repeat costs no forward.
Predictors without ``get_state``/``set_state`` (the GrabCut baseline: not a ``StatefulPredictor``) are replayed
from the longest prefix they currently hold.

Platforms that send click *sets* without their order (CVAT: positives and negatives in separate lists) are
ordered by :func:`order_clicks`: the longest click sequence the session already knows whose clicks are all in
the set, then the set's other clicks in the order the adapter gives them. Such new clicks run in one forward
(``together_from``) when the predictor has ``add_clicks``: a fast clicker's burst costs one forward, not one each.

Everything is bounded: a byte budget over images + sessions (least recently used first) and a TTL.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from model.interactive import InteractivePredictor, StatefulPredictor, nearest_edge  # torch-free

from ..errors import BadRequest

Click = tuple[int, int, bool]  # (row, col, positive) in the session frame's pixels
# A box prompt in a click sequence: ("box", x0, y0, x1, y1), edges in the frame's pixels; only ever first.
BoxPrompt = tuple[str, int, int, int, int]


def box_prompt(x0: float, y0: float, x1: float, y1: float) -> BoxPrompt:
    """A box (left/top and right/bottom edges in pixels) as the first item of a click sequence, its edges on
    the pixel grid by the model's rule (``nearest_edge``), so a session's key is the box the model sees."""
    return ("box", *(nearest_edge(v) for v in (x0, y0, x1, y1)))


def is_box(item: tuple) -> bool:
    return len(item) == 5 and item[0] == "box"


MAX_STATES_PER_SESSION = 256


def _array_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # a torch tensor
        return int(value.element_size() * value.nelement())
    return 0


def nbytes_of(obj: Any) -> int:
    """Bytes held by the arrays/tensors directly in ``obj`` (an array, a tensor, or an object's attributes).

    Shallow on purpose: ``PredictorState.history`` shares the tensors of earlier snapshots, which are
    counted with those snapshots."""
    direct = _array_bytes(obj)
    if direct or not hasattr(obj, "__dict__"):
        return direct
    return sum(_array_bytes(value) for value in vars(obj).values())


@dataclasses.dataclass
class CachedResult:
    encoded: np.ndarray  # the platform adapter's encoding of the output mask (brush RLE, CVAT RLE)
    score: float


@dataclasses.dataclass
class RunStats:
    forwards: int = 0
    restored_prefix: int = 0
    computed: list[int] = dataclasses.field(default_factory=list)  # lengths of the click prefixes computed
    result_hit: bool = False
    session_hit: bool = False
    image_hit: bool = False
    fetch_ms: float = 0.0
    rle_ms: float = 0.0
    model_ms: float = 0.0
    queue_ms: float = 0.0
    store_ms: float = 0.0  # SESSION_STORE (session_store.py): reading, rebuilding and writing shared states
    store_hit: bool = False  # the state this request continued from came from the shared store
    superseded: bool = False  # answered without a forward: a newer request for the object arrived meanwhile
    # Set by the server when the client has gone: the click loop stops between forwards (states so far stay cached).
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)


class ClientGone(Exception):
    """The client disconnected while its clicks were being computed; there is nobody to answer."""


class Session:
    """One object being segmented: a predictor with the frame image set, and its snapshots.

    ``generation``: the engine's model generation the predictor came from (a hot swap makes the session stale)."""

    def __init__(
        self,
        key: Hashable,
        image: np.ndarray,
        predictor: InteractivePredictor,
        generation: int = 0,
        own_image: bool = False,
        seed: np.ndarray | None = None,
    ):
        self.key = key
        # An existing mask the object continues (an accepted region): every click sequence starts from it.
        self.seed = seed if seed is not None and hasattr(predictor, "set_previous_mask") else None
        self.image = image
        self.predictor = predictor
        self.generation = generation
        self.stateful = isinstance(predictor, StatefulPredictor)
        predictor.set_image(image)
        self.applied: tuple[Click, ...] = ()  # what the predictor holds right now
        self.states: collections.OrderedDict[tuple[Click, ...], tuple[Any, int]] = collections.OrderedDict()
        self.results: collections.OrderedDict[tuple[Click, ...], CachedResult] = collections.OrderedDict()
        self.results_lock = threading.Lock()
        # The predictor's own copy of the image, plus the frame image when it is not the cached decoded one.
        self.base_bytes = nbytes_of(predictor) + (int(image.nbytes) if own_image else 0) + _array_bytes(self.seed)
        self.nbytes = self.base_bytes
        self.last_used = time.monotonic()

    def cached_result(self, clicks: tuple[Click, ...]) -> CachedResult | None:
        """The encoded answer to exactly these clicks, if it was computed before (no lock on the model)."""
        with self.results_lock:
            hit = self.results.get(clicks)
            if hit is not None:
                self.results.move_to_end(clicks)
                self.last_used = time.monotonic()
            return hit

    def remember_result(self, clicks: tuple[Click, ...], encoded: np.ndarray, score: float) -> None:
        with self.results_lock:
            old = self.results.pop(clicks, None)
            if old is not None:
                self.nbytes -= int(old.encoded.nbytes)
            self.results[clicks] = CachedResult(encoded, float(score))
            self.nbytes += int(encoded.nbytes)
            while len(self.results) > MAX_STATES_PER_SESSION:
                _, dropped = self.results.popitem(last=False)
                self.nbytes -= int(dropped.encoded.nbytes)

    def known_sequences(self) -> list[tuple[Click, ...]]:
        """Every click sequence this session has a state or an answer for (for :func:`order_clicks`)."""
        with self.results_lock:
            return [*self.states, *self.results]

    def run(
        self, clicks: tuple[Click, ...], stats: RunStats, together_from: int | None = None
    ) -> tuple[np.ndarray, float]:
        """(bool mask, score) after ``clicks`` (at least one), in the session frame, as the predictor thresholds
        and scores it. Call with the engine lock held.

        ``together_from``: the clicks from this index on are new to the session and run in one forward when the
        predictor can (``add_clicks``); the ones before it (a replay, when their state is gone) one per forward."""
        self.last_used = time.monotonic()
        n = len(clicks)
        p = self.predictor
        # Longest usable prefix shorter than n (the last click must run to yield the map): what the
        # predictor holds now, or a stored snapshot.
        start, restore = 0, None
        held = len(self.applied)
        if 0 < held < n and clicks[:held] == self.applied:
            start = held
        if self.stateful:
            for k in range(n - 1, start, -1):
                snap = self.states.get(clicks[:k])
                if snap is not None:
                    self.states.move_to_end(clicks[:k])
                    start, restore = k, snap[0]
                    break
        if restore is not None:
            p.set_state(restore)
        elif start == 0 and self.seed is not None:
            p.set_previous_mask(self.seed)
        elif start == 0:
            p.reset()
        self.applied = clicks[:start]
        stats.restored_prefix = start
        batch = together_from is not None and hasattr(p, "add_clicks")
        t0 = time.perf_counter()
        k = start
        while k < n:
            if stats.cancelled.is_set():
                stats.model_ms += (time.perf_counter() - t0) * 1000
                raise ClientGone(f"stopped after {stats.forwards} forwards, at click {k} of {n}")
            if is_box(clicks[k]):
                if k or not hasattr(p, "set_box"):
                    raise BadRequest("a box can only start an object, and the served model must take one")
                try:
                    p.set_box(*clicks[k][1:])
                except ValueError as exc:  # a box outside the image, empty or inverted: the caller's mistake
                    raise BadRequest(str(exc)) from None
                k += 1
            elif batch and k >= together_from and n - k > 1:
                p.add_clicks(clicks[k:])
                k = n
            else:
                row, col, positive = clicks[k]
                p.add_click(row, col, positive)
                k += 1
            stats.forwards += 1
            stats.computed.append(k)
            self.applied = clicks[:k]
            if self.stateful:
                self._remember_state(clicks[:k], p.get_state())
        stats.model_ms += (time.perf_counter() - t0) * 1000
        prediction = p.prediction()
        return prediction.mask, prediction.score

    def shed(self, nbytes: int) -> int:
        """Forget least recently used snapshots (never the newest) to free about ``nbytes``; returns bytes freed."""
        freed = 0
        while freed < nbytes and len(self.states) > 1:
            _, (_, size) = self.states.popitem(last=False)
            freed += size
        self.nbytes -= freed
        return freed

    def remember_state(self, prefix: tuple[Click, ...], state: Any) -> None:
        """Keep a state computed elsewhere (the shared store); call with the engine lock held."""
        self._remember_state(prefix, state)

    def _remember_state(self, prefix: tuple[Click, ...], state: Any) -> None:
        old = self.states.pop(prefix, None)
        if old is not None:
            self.nbytes -= old[1]
        size = nbytes_of(state)
        self.states[prefix] = (state, size)
        self.nbytes += size
        while len(self.states) > MAX_STATES_PER_SESSION:
            _, (_, dropped) = self.states.popitem(last=False)
            self.nbytes -= dropped


def order_clicks(clicks: Sequence[Click], known: Iterable[tuple[Click, ...]]) -> tuple[tuple[Click, ...], int]:
    """Order a click *set* (a platform that does not keep the order, like CVAT): ``(sequence, known)``.

    The sequence is the longest ``known`` sequence whose clicks are all in ``clicks``, followed by the other
    clicks in the order given; ``known`` is that sequence's length (the clicks after it are new). A set some
    known sequence holds exactly is that sequence, so a repeat or a click removed and put back costs nothing."""
    wanted = set(clicks)
    best: tuple[Click, ...] = ()
    for sequence in known:
        if len(sequence) > len(best) and len(sequence) <= len(wanted) and wanted.issuperset(sequence):
            best = sequence
    have = set(best)
    return best + tuple(c for c in dict.fromkeys(clicks) if c not in have), len(best)


@dataclasses.dataclass
class _ImageEntry:
    value: Any
    nbytes: int
    last_used: float


class SessionCache:
    """Images by URL and sessions by key, under one byte budget and a TTL (least recently used goes first)."""

    def __init__(self, max_bytes: int, ttl_s: float):
        self.max_bytes = max(0, int(max_bytes))
        self.ttl_s = float(ttl_s)
        self.lock = threading.RLock()
        self._images: collections.OrderedDict[Hashable, _ImageEntry] = collections.OrderedDict()
        self._sessions: collections.OrderedDict[Hashable, Session] = collections.OrderedDict()
        self.evictions = 0

    # --- images ---
    def get_image(self, key: Hashable) -> Any | None:
        with self.lock:
            entry = self._images.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry.last_used > self.ttl_s:
                del self._images[key]
                return None
            entry.last_used = time.monotonic()
            self._images.move_to_end(key)
            return entry.value

    def put_image(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self.lock:
            self._images[key] = _ImageEntry(value, int(nbytes), time.monotonic())
            self._images.move_to_end(key)
            self.trim()

    # --- sessions ---
    def get_session(self, key: Hashable) -> Session | None:
        with self.lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if time.monotonic() - session.last_used > self.ttl_s:
                del self._sessions[key]
                return None
            session.last_used = time.monotonic()
            self._sessions.move_to_end(key)
            return session

    def get_or_create_session(self, key: Hashable, create: Callable[[], Session]) -> tuple[Session, bool]:
        with self.lock:
            session = self.get_session(key)
            if session is not None:
                return session, False
            session = create()
            self._sessions[key] = session
            return session, True

    def drop(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop the sessions and images whose key satisfies ``predicate``."""
        with self.lock:
            doomed = [k for k in self._sessions if predicate(k)]
            for k in doomed:
                del self._sessions[k]
            images = [k for k in self._images if predicate(k)]
            for k in images:
                del self._images[k]
            return len(doomed) + len(images)

    @property
    def nbytes(self) -> int:
        with self.lock:
            return sum(e.nbytes for e in self._images.values()) + sum(s.nbytes for s in self._sessions.values())

    def trim(self, keep: Hashable | None = None) -> None:
        """Expire by TTL, then evict least recently used entries (never ``keep``) until under the budget."""
        with self.lock:
            now = time.monotonic()
            for store in (self._images, self._sessions):
                for k in [k for k, v in store.items() if now - v.last_used > self.ttl_s and k != keep]:
                    del store[k]
                    self.evictions += 1
            total = self.nbytes
            while total > self.max_bytes:
                candidates = []
                for k, v in self._images.items():
                    if k != keep:
                        candidates.append((v.last_used, 0, k))
                        break
                for k, v in self._sessions.items():
                    if k != keep:
                        candidates.append((v.last_used, 1, k))
                        break
                if not candidates:  # only the active session is left: shed its oldest snapshots
                    session = self._sessions.get(keep)
                    if session is not None:
                        total -= session.shed(total - self.max_bytes)
                    break
                _, kind, k = min(candidates)
                if kind == 0:
                    total -= self._images.pop(k).nbytes
                else:
                    total -= self._sessions.pop(k).nbytes
                self.evictions += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "images": len(self._images),
                "sessions": len(self._sessions),
                "bytes": self.nbytes,
                "max_bytes": self.max_bytes,
                "evictions": self.evictions,
            }
