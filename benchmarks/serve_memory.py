"""Peak memory of ``adaptiveclick serve`` with the shipped starter, this tree against another (not a test).

    git worktree add /tmp/base5471563 5471563
    python benchmarks/serve_memory.py --old /tmp/base5471563 [--sessions 6] [--clicks 8] [--concurrent 4]

Each tree's ``serve`` (gunicorn + one worker, that tree's own defaults: no ``MODEL_*`` variable is passed) runs in
turn against the stub Label Studio of ``server.py``, which serves a 2-MP JPEG under a new name per session. The
clients send what the labeling UI sends (every smart keypoint so far; with ``--saved-region`` also the task's earlier
brush annotation under the first click): first ``--sessions`` sessions one after another, then ``--concurrent``
sessions at once. Reported per tree: the peak resident memory (``VmHWM``) of the master and of the worker that
holds the model, read from /proc before the server stops, and the worker's resident memory after the sequential and
the concurrent phase.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from server import TOKEN, StubLabelStudio, click_plan, make_image, previous_annotation, run_session  # noqa: E402

from testkit.ls_harness import free_port, stop_process, wait_http  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The process's descendants, depth first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *children(kid)]
    return found


def measure(tree: Path, stub_url: str, args: argparse.Namespace, log: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_")}  # the tree's own defaults
    env.update(
        PYTHONPATH=str(tree),
        LABEL_STUDIO_URL=stub_url,
        LABEL_STUDIO_API_KEY=TOKEN,
        WORKERS="1",
        LOG_LEVEL="WARNING",
        NO_TRAFFIC_WARNING_S="0",
        PREFETCH_ON_TASK_OPEN="false",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(url + "/health", 300, proc, log)
        deadline = time.monotonic() + 600
        while not requests.get(url + "/health", timeout=5).json().get("model_loaded"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tree}: the model did not load")
            time.sleep(0.5)
        worker = children(proc.pid)[-1]
        annotation = previous_annotation(args.width, args.height) if args.saved_region else {"id": 1, "result": []}
        for s in range(args.sessions):
            run_session(
                url, s, click_plan(args.clicks, args.width, args.height, s), args.width, args.height, annotation
            )
        after_sequential = status_kib(worker, "VmRSS")
        with ThreadPoolExecutor(args.concurrent) as pool:
            jobs = [
                pool.submit(
                    run_session,
                    url,
                    100 + s,
                    click_plan(args.clicks, args.width, args.height, 100 + s),
                    args.width,
                    args.height,
                    annotation,
                )
                for s in range(args.concurrent)
            ]
            for job in jobs:
                job.result()
        return {
            "master_peak": status_kib(proc.pid, "VmHWM") / 1024,
            "worker_peak": status_kib(worker, "VmHWM") / 1024,
            "worker_after_sequential": after_sequential / 1024,
            "worker_after_concurrent": status_kib(worker, "VmRSS") / 1024,
        }
    finally:
        stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, type=Path, help="the other tree (a worktree of an older commit)")
    parser.add_argument("--new", default=REPO, type=Path, help="this tree (default: the one holding this script)")
    parser.add_argument("--sessions", type=int, default=6, help="sessions one after another")
    parser.add_argument("--concurrent", type=int, default=4, help="sessions at once, after those")
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument(
        "--saved-region",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="tasks carry an earlier brush annotation under the first click (this tree continues it; older trees "
        "start fresh, so the two do different work)",
    )
    parser.add_argument("--width", type=int, default=1632)
    parser.add_argument("--height", type=int, default=1224)
    args = parser.parse_args(argv)

    shared = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared"))
    stub = StubLabelStudio(make_image(shared if shared.is_dir() else None, args.width, args.height))
    logs = Path(tempfile.mkdtemp(prefix="serve-memory-"))
    results = {}
    try:
        for name, tree in (("old", args.old), ("new", args.new)):
            results[name] = measure(tree.resolve(), stub.url, args, logs / f"{name}.log")
    finally:
        stub.close()
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load average at the end {load}; logs in {logs}")
    print(
        f"{args.sessions} sessions one after another then {args.concurrent} at once, {args.clicks} clicks each, "
        f"{args.width}x{args.height} JPEG"
    )
    print("| tree | master peak MiB | worker peak MiB | worker after the sequential / concurrent phase MiB |")
    print("|---|---|---|---|")
    for name, tree in (("old", args.old), ("new", args.new)):
        r = results[name]
        print(
            f"| {name} ({tree}) | {r['master_peak']:.0f} | {r['worker_peak']:.0f} | "
            f"{r['worker_after_sequential']:.0f} / {r['worker_after_concurrent']:.0f} |"
        )
    ratio = results["new"]["worker_peak"] / results["old"]["worker_peak"]
    print(f"worker peak, new / old: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
