"""Click states shared by several workers and replicas: ``SESSION_STORE=redis://host:6379/0``.

Without ``SESSION_STORE`` each worker keeps its own per-task cache (``sessions.py``), and a click that lands on a
worker that never saw the task replays every earlier click. With it, every state a worker computes (one per click
prefix) is also written to Redis as the predictor's own bytes (``export_state``: the network output, clicks and
ROI, compressed; see ``model/state_codec.py``), and a worker whose local cache lacks the prefix a request extends
reads the longest stored prefix and restores it (``import_state``), so the new click costs one forward. Decoded
images stay per process.

Platforms that send click sets without their order (CVAT) also need the order a set was run in: their publishes
also push the click sequence onto ``ac:state:<namespace>:<session>:sequences`` (the newest 32, same TTL), which a
worker new to the object reads to continue the longest of them (``sessions.order_clicks``).

The box an object started from (Label Studio's editor sends it once, then clicks without it) is kept under
``ac:box:<where hash>`` as JSON, with the same TTL, so the click after a box may land on any replica.

Keys: ``ac:state:<namespace>:<session>:<k>:<prefix hash>``. The namespace hashes the served model version and
the predictor's settings (``state_tag``), so a hot-swapped model or a replica with other settings never reuses
another's states; the session part hashes the session key (project, task, image URL, item, labels, frame).
Every entry has the TTL ``SESSION_TTL_S``; the memory cap is Redis's own ``maxmemory`` with a ``volatile-*``
eviction policy (the compose file sets both; a warning is logged once when Redis has none), which evicts these
entries and never the job queue's keys (they carry no TTL).

Redis down or slow: every call has a short socket timeout (``SESSION_STORE_TIMEOUT_S``) and a failure opens a
circuit breaker for ``SESSION_STORE_RETRY_S``, during which Redis is not called at all, so a dead Redis costs one
timeout per retry period, not one per click; the request carries on with the local cache (replaying what it
lacks). The outage and the recovery are logged once each. A request never fails because of the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from model.interactive import PortableStatePredictor  # torch-free

from ..config import Settings
from .sessions import Click, RunStats, Session, is_box

log = logging.getLogger("adaptiveclick.backend")
KEY_PREFIX = "ac:state"
BOX_PREFIX = "ac:box"
RECENT_SEQUENCES = 32  # click sequences remembered per object for platforms that send click sets


def store_url(settings: Settings) -> str:
    """The Redis URL of ``SESSION_STORE`` ("" when states stay in this process)."""
    url = (settings.session_store or "").strip()
    return "" if url.lower() in ("", "local") else url


class CircuitBreaker:
    """Closed (calls go through) until a failure; then open for ``retry_s``; then one trial call decides."""

    def __init__(self, retry_s: float, what: str, clock: Callable[[], float] = time.monotonic):
        self.retry_s = max(0.0, float(retry_s))
        self.what = what
        self.clock = clock
        self._open_until = 0.0
        self._down = False
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def down(self) -> bool:
        return self._down

    def allow(self) -> bool:
        with self._lock:
            return not self._down or self.clock() >= self._open_until

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            self._open_until = self.clock() + self.retry_s
            first = not self._down
            self._down = True
        if first:  # once per outage, not once per click
            log.warning(
                "%s is unavailable (%s: %s): clicks continue from this worker's own cache (replaying the "
                "clicks it lacks); retrying every %.0f s",
                self.what,
                type(exc).__name__,
                str(exc)[:200],
                self.retry_s,
            )

    def succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.info("%s is reachable again: click states are shared again", self.what)


class RedisStates:
    """Bytes by key in Redis, with a TTL, short timeouts and a circuit breaker; never raises on Redis errors."""

    def __init__(self, url: str, ttl_s: float, timeout_s: float = 0.25, retry_s: float = 10.0, client: Any = None):
        if client is None:
            import redis  # the redis extra: pip install 'adaptiveclick[redis]'

            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
            )
        self.client = client
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.breaker = CircuitBreaker(retry_s, f"SESSION_STORE (Redis at {_safe_url(url)})")
        self._checked = False

    def _call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        if not self.breaker.allow():
            return False, None
        try:
            result = fn()
        except Exception as exc:  # redis.RedisError, OSError, timeouts: the store is optional, clicks are not
            self.breaker.failed(exc)
            return False, None
        self.breaker.succeeded()
        if not self._checked:
            self._checked = True
            self._check_memory_cap()
        return True, result

    def get_longest(self, keys: Sequence[str]) -> tuple[int, bytes] | None:
        """(index into ``keys``, value) of the first key that exists; ``keys`` longest prefix first.

        One round trip when the first key exists (a click that extends the previous one), two otherwise."""
        if not keys:
            return None
        ok, value = self._call(lambda: self.client.get(keys[0]))
        if not ok:
            return None
        if value is not None:
            return 0, bytes(value)
        if len(keys) == 1:
            return None

        def exists() -> list[int]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys[1:]:
                pipe.exists(key)
            return pipe.execute()

        ok, found = self._call(exists)
        if not ok:
            return None
        for i, present in enumerate(found, start=1):
            if present:
                ok, value = self._call(lambda key=keys[i]: self.client.get(key))
                return (i, bytes(value)) if ok and value is not None else None
        return None

    def put_many(self, items: Sequence[tuple[str, bytes]], recent: tuple[str, bytes, int] | None = None) -> bool:
        """Store the values with the TTL, in one round trip; ``recent`` = ``(list key, value, keep)`` also puts a
        value first in a list kept to its newest ``keep`` entries. False when the store is unavailable."""
        if not items:
            return True

        def put() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, px=self.ttl_ms)
            if recent is not None:
                key, value, keep = recent
                pipe.lpush(key, value)
                pipe.ltrim(key, 0, keep - 1)
                pipe.pexpire(key, self.ttl_ms)
            pipe.execute()

        return self._call(put)[0]

    def get(self, key: str) -> tuple[bool, bytes | None]:
        """(reachable, the value of ``key`` or None)."""
        ok, value = self._call(lambda: self.client.get(key))
        return ok, None if value is None else bytes(value)

    def put(self, key: str, value: bytes) -> bool:
        """Store one value with the TTL; False when the store is unavailable."""
        return self._call(lambda: self.client.set(key, value, px=self.ttl_ms))[0]

    def recent(self, key: str) -> list[bytes]:
        """The list ``key``, newest first ([] when absent or the store is unavailable)."""
        ok, values = self._call(lambda: self.client.lrange(key, 0, -1))
        return [bytes(v) for v in values] if ok and values else []

    def _check_memory_cap(self) -> None:
        """Warn once when Redis has no memory cap or an eviction policy that would never drop our entries."""
        try:
            config = self.client.config_get("maxmemory*")
        except Exception:  # managed Redis often disables CONFIG: nothing to check
            log.info(
                "SESSION_STORE: cannot read Redis's maxmemory settings (CONFIG disabled); make sure it has a "
                "memory cap with a volatile-* or allkeys-* eviction policy"
            )
            return
        maxmemory = int(config.get("maxmemory", 0) or 0)
        policy = str(config.get("maxmemory-policy", ""))
        if maxmemory <= 0 or policy == "noeviction":
            log.warning(
                "SESSION_STORE: Redis has maxmemory=%d and maxmemory-policy=%s: click states are bounded "
                "only by their TTL; set a memory cap with maxmemory-policy volatile-lru (see docs/deployment.md)",
                maxmemory,
                policy or "?",
            )
        else:
            log.info("SESSION_STORE: Redis memory cap %d MB, eviction policy %s", maxmemory >> 20, policy)


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _digest(value: Any, size: int = 16) -> str:
    return hashlib.sha256(repr(value).encode("utf-8", "backslashreplace")).hexdigest()[:size]


class SharedStates:
    """What a click request does with the shared store: restore before the click loop, publish after it."""

    def __init__(self, store: RedisStates):
        self.store = store
        self.restored = 0  # states restored from the store (stats)
        self.published = 0
        self._unsupported: set[str] = set()

    def _namespace(self, session: Session, version: str) -> str | None:
        predictor = session.predictor
        if not isinstance(predictor, PortableStatePredictor):
            name = type(predictor).__name__
            if name not in self._unsupported:
                self._unsupported.add(name)
                log.info("SESSION_STORE: %s has no export_state/import_state: its sessions stay per worker", name)
            return None
        return f"{KEY_PREFIX}:{_digest((version, predictor.state_tag))}:{_digest(session.key, 20)}"

    @staticmethod
    def _key(namespace: str, prefix: tuple[Click, ...]) -> str:
        return f"{namespace}:{len(prefix)}:{_digest(prefix)}"

    def restore(
        self, session: Session, clicks: tuple[Click, ...], version: str, stats: RunStats
    ) -> tuple[tuple[Click, ...], Any] | None:
        """The longest stored prefix of ``clicks`` (shorter than them, longer than what this worker holds) as
        ``(prefix, state)`` for :meth:`Session.remember_state`, or None. Call without the engine lock: it waits
        for Redis and rebuilds the map (no network forward)."""
        n = len(clicks)
        if n < 2:
            return None
        namespace = self._namespace(session, version)
        if namespace is None:
            return None
        local = (
            len(session.applied)
            if 0 < len(session.applied) < n and clicks[: len(session.applied)] == session.applied
            else 0
        )
        for k in range(n - 1, local, -1):
            if clicks[:k] in session.states:
                local = k
                break
        if local >= n - 1:
            return None  # one forward from here already
        t0 = time.perf_counter()
        prefixes = [clicks[:k] for k in range(n - 1, local, -1)]
        found = self.store.get_longest([self._key(namespace, p) for p in prefixes])
        restored = None
        if found is not None:
            index, blob = found
            try:
                state = session.predictor.import_state(blob)
                # The blob names its clicks: an entry that does not hold this prefix is not used (hash collision).
                clicks_only = tuple(tuple(c) for c in prefixes[index] if not is_box(c))  # a state keeps its box apart
                if tuple(tuple(c) for c in _clicks_of(state)) == clicks_only:
                    restored = (prefixes[index], state)
            except Exception as exc:  # another format or settings, or tampered: a miss, never a failed click
                log.debug("SESSION_STORE: stored state not usable (%s: %s)", type(exc).__name__, exc)
        stats.store_ms += (time.perf_counter() - t0) * 1000
        if restored is not None:
            stats.store_hit = True
            self.restored += 1
        return restored

    def publish(
        self, session: Session, clicks: tuple[Click, ...], version: str, stats: RunStats, unordered: bool = False
    ) -> None:
        """Write the states this request computed; ``unordered`` (a click set whose order the platform lost): also
        the click sequence they were computed in, for :meth:`known_sequences`."""
        if not stats.computed:
            return
        namespace = self._namespace(session, version)
        if namespace is None:
            return
        t0 = time.perf_counter()
        items = []
        for k in stats.computed:
            entry = session.states.get(clicks[:k])
            if entry is None:  # shed by the memory budget meanwhile
                continue
            try:
                items.append((self._key(namespace, clicks[:k]), session.predictor.export_state(entry[0])))
            except ValueError as exc:
                log.debug("SESSION_STORE: state not exportable (%s)", exc)
        recent = (f"{namespace}:sequences", json.dumps(clicks).encode(), RECENT_SEQUENCES) if unordered else None
        if self.store.put_many(items, recent):
            self.published += len(items)
        stats.store_ms += (time.perf_counter() - t0) * 1000

    def remember_box(self, where: Any, box: tuple[float, ...]) -> None:
        self.store.put(f"{BOX_PREFIX}:{_digest(where, 32)}", json.dumps([float(v) for v in box]).encode())

    def recall_box(self, where: Any) -> tuple[bool, tuple[float, float, float, float] | None]:
        """(the store answered, the box remembered under ``where`` or None); a value that is not four finite
        numbers is no box."""
        ok, raw = self.store.get(f"{BOX_PREFIX}:{_digest(where, 32)}")
        if not ok or raw is None:
            return ok, None
        try:
            box = tuple(float(v) for v in json.loads(raw))
        except (ValueError, TypeError, RecursionError, OverflowError):  # OverflowError: a 400-digit integer
            return True, None
        return True, box if len(box) == 4 and all(math.isfinite(v) for v in box) else None

    def known_sequences(self, session: Session, version: str) -> list[tuple[Click, ...]]:
        """The click sequences other workers computed for this object (newest first), for a click set that
        lost its order; [] when there are none or the store is unavailable."""
        namespace = self._namespace(session, version)
        if namespace is None:
            return []
        out = []
        for raw in self.store.recent(f"{namespace}:sequences"):
            try:
                out.append(tuple(_item(v) for v in json.loads(raw)))
            except (ValueError, TypeError, OverflowError, RecursionError):  # not ours, or tampered: ignore
                continue
        return out


def _item(value: list) -> tuple:
    """A click ``[row, col, positive]`` or a box ``["box", x0, y0, x1, y1]`` read back from JSON."""
    if len(value) == 5 and value[0] == "box":
        return ("box", *(int(v) for v in value[1:]))
    row, col, positive = value
    return int(row), int(col), bool(positive)


def _clicks_of(state: Any) -> list[tuple[int, int, bool]]:
    """A state's clicks as ``(row, col, positive)`` (AdaptiveClick's Click objects or plain tuples)."""
    out = []
    for click in getattr(state, "clicks", ()):
        if hasattr(click, "row"):
            out.append((int(click.row), int(click.col), bool(click.positive)))
        else:
            row, col, positive = click
            out.append((int(row), int(col), bool(positive)))
    return out


def shared_states(settings: Settings) -> SharedStates | None:
    """The shared store ``SESSION_STORE`` names, or None (states stay in this process, the default)."""
    url = store_url(settings)
    if not url:
        return None
    store = RedisStates(url, settings.session_ttl_s, settings.session_store_timeout_s, settings.session_store_retry_s)
    log.info(
        "SESSION_STORE: click states are shared through Redis at %s (TTL %.0f s)",
        _safe_url(url),
        settings.session_ttl_s,
    )
    return SharedStates(store)
