"""Soak benchmark of the ML backend: N annotators x M clicks, round after round, for T minutes (not a test).

    python benchmarks/soak.py --sessions 8 --clicks 10 --minutes 10 --cache-mb 256 [--engine disk] [--out soak.json]

Same harness as ``benchmarks/server.py`` (a stub Label Studio serving 2-MP JPEGs, the backend as ``adaptiveclick
serve`` in its own process, clients that send what the labeling UI sends). Every round each session starts a new
task (a new image), so the cache keeps filling: the run shows whether the backend's memory stays within
``SESSION_CACHE_MB`` (plus the model and the interpreter) while it evicts. Reported: errors by status, p50/p95 of
the client-observed latency per minute, and the backend's RSS sampled every few seconds. Loopback only; the run
stops by itself after ``--minutes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import (
    CONFIG,
    REPO,
    TOKEN,
    Backend,
    StubLabelStudio,
    click_plan,
    free_port,
    keypoint,
    make_image,
    pct,
)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn master + worker), from /proc."""
    total = 0
    pids = [pid]
    try:
        for line in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.append(int(line))
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def annotator(url: str, session: int, clicks: int, size: tuple[int, int], stop_at: float, rows: list) -> None:
    width, height = size
    http = requests.Session()
    task_number = 0
    while time.monotonic() < stop_at:
        task_number += 1
        task = {
            "id": session * 100_000 + task_number,
            "data": {"image": f"/data/upload/1/s{session}t{task_number}.jpg"},
            "annotations": [],
            "predictions": [],
            "drafts": [],
        }
        plan = click_plan(clicks, width, height, session * 1000 + task_number)
        for n in range(1, clicks + 1):
            if time.monotonic() >= stop_at:
                return
            regions = [keypoint(r, c, pos, width, height, i) for i, (r, c, pos) in enumerate(plan[:n])]
            body = {
                "tasks": [task],
                "project": "1.1700000000",
                "label_config": CONFIG,
                "params": {"login": None, "password": None, "context": {"result": regions}},
            }
            t0 = time.perf_counter()
            try:
                status = http.post(url + "/predict", json=body, timeout=120).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            rows.append({"t": time.monotonic(), "ms": (time.perf_counter() - t0) * 1000, "status": status})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="disk", help="disk (stand-in, default), grabcut, adaptiveclick")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--cache-mb", type=int, default=256, help="SESSION_CACHE_MB of the backend")
    ap.add_argument("--width", type=int, default=1632)
    ap.add_argument("--height", type=int, default=1224)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    shared = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared"))
    ls = StubLabelStudio(make_image(shared if shared.is_dir() else None, args.width, args.height))
    engine = {"disk": "testkit.standins:DiskPredictor"}.get(args.engine, args.engine)
    env = {
        "MODEL_ENGINE": engine,
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "THREADS": str(args.threads),
        "WORKERS": "1",
        "LOG_LEVEL": "WARNING",
        "NO_TRAFFIC_WARNING_S": "0",
        "MODEL_CHECKPOINT": args.checkpoint,
        "PREFETCH_ON_TASK_OPEN": "false",
        "SESSION_CACHE_MB": str(args.cache_mb),
    }
    backend = Backend(env, Path(tempfile.mkdtemp(prefix="bench-soak-")) / "backend.log", port=free_port())
    backend.start()
    rows: list[dict] = []
    memory: list[tuple[float, float]] = []
    try:
        while not requests.get(backend.url + "/health", timeout=5).json()["model_loaded"]:
            time.sleep(0.5)
        started = time.monotonic()
        stop_at = started + args.minutes * 60
        done = threading.Event()

        def sample() -> None:
            while not done.wait(5):
                memory.append((time.monotonic() - started, rss_mb(backend.proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(args.sessions) as pool:
            for s in range(args.sessions):
                pool.submit(annotator, backend.url, s + 1, args.clicks, (args.width, args.height), stop_at, rows)
        done.set()
    finally:
        backend.stop()
        ls.close()

    errors: dict[str, int] = {}
    for row in rows:
        if row["status"] != 200:
            errors[str(row["status"])] = errors.get(str(row["status"]), 0) + 1
    minutes = []
    for m in range(int(args.minutes + 0.999)):
        window = [r["ms"] for r in rows if m * 60 <= r["t"] - started < (m + 1) * 60]
        if window:
            minutes.append(
                {
                    "minute": m + 1,
                    "requests": len(window),
                    "p50_ms": round(pct(window, 0.5), 1),
                    "p95_ms": round(pct(window, 0.95), 1),
                }
            )
    report = {
        "engine": args.engine,
        "sessions": args.sessions,
        "clicks_per_task": args.clicks,
        "minutes": args.minutes,
        "session_cache_mb": args.cache_mb,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "requests": len(rows),
        "errors": errors,
        "per_minute": minutes,
        "rss_mb": [(round(t), round(mb)) for t, mb in memory],
        "rss_mb_max": round(max((mb for _, mb in memory), default=0)),
    }
    print(
        f"{report['requests']} requests, errors {errors or 'none'}; RSS max {report['rss_mb_max']} MB "
        f"(SESSION_CACHE_MB={args.cache_mb})"
    )
    for m in minutes:
        print(f"  minute {m['minute']}: {m['requests']} requests, p50 {m['p50_ms']} ms, p95 {m['p95_ms']} ms")
    print(
        "  RSS over time (s, MB): " + ", ".join(f"{t}:{mb}" for t, mb in report["rss_mb"][:: max(1, len(memory) // 12)])
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
