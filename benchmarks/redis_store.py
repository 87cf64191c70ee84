"""What the shared session store (SESSION_STORE=redis://..., ml_backend/interactive/session_store.py) costs per
click, 2 MP.

    python benchmarks/redis_store.py                        # starts a private redis-server on loopback
    python benchmarks/redis_store.py --redis-url redis://host:6379/0 --sessions 3 --clicks 10 --out report.json

The served AdaptiveClick predictor (the shipped starter, the served defaults), a GrabCut image scaled to 2 MP
(synthetic when ../shared is absent), and the backend's own ``Session`` / ``SharedStates`` objects, in one process
standing in for several workers (each "worker" is its own Session and predictor; they share only Redis):

* **alternating, with the store**: the clicks of each session alternate between two workers, each click restoring
  what the other computed (what a proxy in front of replicas does to one annotator's clicks);
* **alternating, without it**: the same with no store: each worker replays what it lacks (today's behaviour);
* **a worker that never saw the task** gets the last click: restore + one forward vs replaying every click;
* per state: blob size, and p50/p95 of export (encode), SET, GET and import (decode + rebuilding the map from the
  stored network output), measured again on the states the sessions produced.

"Store overhead per click" is what a click pays for the store beyond the model: publish (export + SET) on every
click, plus GET + import on a click whose previous state came from another worker. One run; timings on a busy
machine are pessimistic. Goal: <= 10 ms per click (p50, loopback) for publish + GET.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.config import Settings  # noqa: E402
from ml_backend.interactive.engine import Engine  # noqa: E402
from ml_backend.interactive.session_store import RedisStates, SharedStates  # noqa: E402
from ml_backend.interactive.sessions import RunStats, Session  # noqa: E402

# Clicks in fractions of (height, width): positives on the object of GrabCut 37073, negatives around it.
CLICK_PLAN = [
    (0.55, 0.50, True),
    (0.35, 0.50, True),
    (0.15, 0.15, False),
    (0.70, 0.45, True),
    (0.50, 0.85, False),
    (0.45, 0.35, True),
    (0.85, 0.90, False),
    (0.60, 0.62, True),
    (0.05, 0.60, False),
    (0.40, 0.58, True),
]


def load_image(width: int, height: int) -> np.ndarray:
    from PIL import Image

    shared = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared"))
    source = shared / "datasets" / "GrabCut" / "images" / "37073.jpg"
    if source.exists():
        return np.asarray(Image.open(source).convert("RGB").resize((width, height), Image.BICUBIC))
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 50), 2), "p95": round(pct(values, 95), 2), "n": len(values)}


def clicks_for(session_index: int, count: int, height: int, width: int) -> tuple[tuple[int, int, bool], ...]:
    jitter = 0.02 * session_index  # a different session, the same kind of clicks
    plan = (CLICK_PLAN * ((count + len(CLICK_PLAN) - 1) // len(CLICK_PLAN)))[:count]
    return tuple((int(min(0.99, r + jitter) * height), int(min(0.99, c + jitter) * width), p) for r, c, p in plan)


def run_click(session: Session, clicks, shared: SharedStates | None, version: str) -> dict:
    """One request's model work as the backend does it (service._interactive), timed."""
    stats = RunStats()
    t0 = time.perf_counter()
    restored = shared.restore(session, clicks, version, stats) if shared is not None else None
    t_restore = (time.perf_counter() - t0) * 1000
    if restored is not None:
        session.remember_state(*restored)
    session.run(clicks, stats)
    t1 = time.perf_counter()
    if shared is not None:
        shared.publish(session, clicks, version, stats)
    t_publish = (time.perf_counter() - t1) * 1000
    return {
        "forwards": stats.forwards,
        "model_ms": stats.model_ms,
        "restore_ms": t_restore,
        "publish_ms": t_publish,
        "store_hit": stats.store_hit,
        "total_ms": (time.perf_counter() - t0) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="", help="an existing Redis (default: a private redis-server)")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--width", type=int, default=1732)
    parser.add_argument("--height", type=int, default=1155)
    parser.add_argument("--repeats", type=int, default=20, help="repeats of each per-state micro measurement")
    parser.add_argument("--out", default="", help="write the JSON report here")
    args = parser.parse_args(argv)

    import torch

    server = None
    if not args.redis_url:
        from testkit.redis_harness import RedisServer

        server = RedisServer(Path(tempfile.mkdtemp(prefix="redis-bench-"))).start()
        args.redis_url = server.url
    try:
        settings = Settings.from_env({"DEVICE": "cpu"})
        engine = Engine(settings)
        engine.load()
        if engine.error:
            raise SystemExit(engine.error)
        version = engine.model_version
        image = load_image(args.width, args.height)
        store = RedisStates(args.redis_url, ttl_s=600, timeout_s=1.0)
        store.client.flushdb()
        shared = SharedStates(store)
        rows: dict[str, list[dict]] = {"alt_store": [], "alt_local": [], "fresh_store": [], "fresh_local": []}
        blobs: list[bytes] = []

        def new_session(index: int, tag: str) -> Session:
            predictor = engine.new_predictor()
            return Session(("bench", index, tag), image, predictor)

        for s in range(args.sessions):
            clicks = clicks_for(s, args.clicks, args.height, args.width)
            workers = [new_session(s, "shared"), new_session(s, "shared")]
            for k in range(1, args.clicks + 1):
                rows["alt_store"].append(
                    dict(run_click(workers[(k - 1) % 2], clicks[:k], shared, version), click=k, session=s)
                )
            local = [new_session(s, "local"), new_session(s, "local")]
            for k in range(1, args.clicks + 1):
                rows["alt_local"].append(
                    dict(run_click(local[(k - 1) % 2], clicks[:k], None, version), click=k, session=s)
                )
            # A worker that never saw the task gets the last click.
            rows["fresh_store"].append(run_click(new_session(s, "shared"), clicks, shared, version))
            rows["fresh_local"].append(run_click(new_session(s, "fresh"), clicks, None, version))
            for k in range(1, args.clicks + 1):
                state = workers[(k - 1) % 2].states.get(clicks[:k])
                if state is not None:
                    blobs.append(workers[0].predictor.export_state(state[0]))
            print(f"session {s + 1}/{args.sessions} done", flush=True)

        # Per-state micro measurements on the states the sessions produced.
        probe = new_session(0, "probe").predictor
        export_ms, set_ms, get_ms, import_ms = [], [], [], []
        source = workers[0]
        states = [entry[0] for entry in source.states.values()]
        for i in range(args.repeats):
            state = states[i % len(states)]
            t0 = time.perf_counter()
            blob = source.predictor.export_state(state)
            export_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            store.client.set("ac:bench:probe", blob, px=60_000)
            set_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            got = store.client.get("ac:bench:probe")
            get_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            probe.import_state(got)
            import_ms.append((time.perf_counter() - t0) * 1000)

        alt_store, alt_local = rows["alt_store"], rows["alt_local"]
        # The publish on every click + the GET on a click continuing another worker's state (not the rebuild).
        hit_overhead = [r["publish_ms"] for r in alt_store]
        report = {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
            "image": [args.width, args.height],
            "model_version": version,
            "sessions": args.sessions,
            "clicks": args.clicks,
            "redis": "private redis-server on loopback" if server else "given URL",
            "state_bytes": summary([float(len(b)) for b in blobs]),
            "full_map_bytes": args.width * args.height * 4,
            "export_ms": summary(export_ms),
            "set_ms": summary(set_ms),
            "get_ms": summary(get_ms),
            "import_ms": summary(import_ms),
            "publish_ms_per_click": summary(hit_overhead),
            "store_overhead_ms_per_click_p50": round(pct(hit_overhead, 50) + pct(get_ms, 50), 2),
            "alternating_with_store": {
                "forwards_per_click": statistics.mean(r["forwards"] for r in alt_store),
                "ms_per_click": summary([r["total_ms"] for r in alt_store]),
                "restore_ms": summary([r["restore_ms"] for r in alt_store if r["store_hit"]]),
                "model_ms": summary([r["model_ms"] for r in alt_store]),
            },
            "alternating_without_store": {
                "forwards_per_click": statistics.mean(r["forwards"] for r in alt_local),
                "ms_per_click": summary([r["total_ms"] for r in alt_local]),
            },
            "never_saw_the_task_with_store": {
                "forwards": statistics.mean(r["forwards"] for r in rows["fresh_store"]),
                "ms": summary([r["total_ms"] for r in rows["fresh_store"]]),
            },
            "never_saw_the_task_without_store": {
                "forwards": statistics.mean(r["forwards"] for r in rows["fresh_local"]),
                "ms": summary([r["total_ms"] for r in rows["fresh_local"]]),
            },
        }
    finally:
        if server is not None:
            server.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
