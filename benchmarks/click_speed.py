"""Per-click time of the served default, this tree against another (e.g. the tree of an older commit), side by side in
one run (not a test).

    git worktree add /tmp/base5471563 5471563
    python benchmarks/click_speed.py --old /tmp/base5471563 [--threads 2] [--sessions 5] [--clock wall|cpu]
        [--new-runtime onnx]

Each tree runs in its own worker process (``PYTHONPATH`` = the tree) with the predictor ``serve`` builds from an empty
environment (that tree's defaults), the same checkpoint and the same 2-MP image. The workers take turns, one 8-click
session at a time (the order alternates), so load from other processes falls on both alike. Reported: the median and
p90 seconds per warm click of each tree (wall time, or with ``--clock cpu`` the worker's CPU time) and their ratio,
the time from process start to the first mask (imports, model load, first click), each worker's peak RSS, and the IoU
between the two trees' masks after each of 20 clicks (robot clicks on the ellipse: positive inside, negative outside,
each where the last mask was wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, resource, sys, time
started = time.perf_counter()
import numpy as np, torch
from ml_backend.config import Settings
from ml_backend.interactive.engine import predictor_options
from model.checkpoint import load_model
from model.predictor import Predictor
sys.path.insert(0, sys.argv[3])
from click_speed import CLICKS, robot_click, test_image

torch.set_num_threads(int(sys.argv[2]))
clock = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
image, inside = test_image()
options = predictor_options(Settings.from_env(json.loads(sys.argv[5])))
predictor = Predictor(load_model(sys.argv[1], "cpu"), device="cpu", **options)
predictor.set_image(image)
predictor.add_click(*CLICKS[0])
first_mask_s = time.perf_counter() - started
print(json.dumps({"first_mask_s": first_mask_s}), flush=True)
for line in sys.stdin:
    if line.strip() == "session":
        times = []
        predictor.set_image(image)
        for click in CLICKS:
            t0 = clock()
            predictor.add_click(*click)
            times.append(clock() - t0)
        print(json.dumps({"times": times}), flush=True)
    elif line.strip() == "masks":
        predictor.set_image(image)
        masks, mask = [], np.zeros(inside.shape, bool)
        for _ in range(20):
            mask = predictor.add_click(*robot_click(mask, inside)) > predictor.threshold
            masks.append(np.packbits(mask).tobytes().hex())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"masks": masks, "peak_rss_mib": rss}), flush=True)
"""

HEIGHT, WIDTH = 1200, 1680  # 2.0 MP
CLICKS = [
    (600, 840, True),
    (300, 700, True),
    (900, 1300, False),
    (450, 1250, True),
    (700, 420, False),
    (520, 640, True),
    (800, 900, True),
    (260, 1000, False),
]


def test_image():
    """The 2-MP test image of benchmarks/refinement.py (a bright ellipse on noise) and the ellipse's mask."""
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    inside = ((yy - 600) / 380.0) ** 2 + ((xx - 840) / 520.0) ** 2 < 1
    image[inside] = (0.3 * image[inside] + 160).astype(np.uint8)
    return image, inside


def robot_click(mask, inside) -> tuple[int, int, bool]:
    """The centre of the larger error region (deepest pixel by distance transform), as the NoC robot clicks."""
    import cv2
    import numpy as np

    missed, extra = inside & ~mask, mask & ~inside
    error = missed if missed.sum() >= extra.sum() else extra
    distance = cv2.distanceTransform(np.pad(error, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(row), int(col), bool(error is missed)


class Worker:
    """One tree's predictor in its own process."""

    def __init__(self, tree: Path, checkpoint: Path, threads: int, clock: str, settings: dict[str, str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        for name in [key for key in env if key.startswith("MODEL_")]:
            del env[name]  # each tree's own defaults
        here = str(Path(__file__).parent)
        command = [sys.executable, "-c", WORKER, str(checkpoint), str(threads), here, clock, json.dumps(settings)]
        self.process = subprocess.Popen(
            command, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.first_mask_s = self._read()["first_mask_s"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def mask_iou(a_hex: str, b_hex: str) -> float:
    import numpy as np

    a, b = (np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8)).astype(bool) for h in (a_hex, b_hex))
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, type=Path, help="the other tree (a worktree of an older commit)")
    parser.add_argument("--new", default=REPO, type=Path, help="this tree (default: the one holding this script)")
    parser.add_argument("--checkpoint", default=REPO / "weights" / "starter.safetensors", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=5, help="timed 8-click sessions per tree (after one warm-up)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: seconds per click as the user waits; cpu: the worker's CPU seconds per click (all its threads), "
        "steadier than wall time on a machine that other jobs load",
    )
    parser.add_argument(
        "--new-runtime",
        help="MODEL_RUNTIME of the new tree's worker (default: its own default); with --old pointing at the same tree, "
        "two runtimes side by side",
    )
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint.resolve()
    load = os.getloadavg()
    workers = {}
    for name, tree in (("old", args.old), ("new", args.new)):
        settings = {"MODEL_RUNTIME": args.new_runtime} if name == "new" and args.new_runtime else {}
        workers[name] = Worker(tree.resolve(), checkpoint, args.threads, args.clock, settings)
    times: dict[str, list[float]] = {name: [] for name in workers}
    for session in range(args.sessions + 1):
        order = list(workers) if session % 2 else list(reversed(workers))
        for name in order:
            result = workers[name].ask("session")
            if session:  # the first session warms up
                times[name] += result["times"]
    final = {name: worker.ask("masks") for name, worker in workers.items()}
    for worker in workers.values():
        worker.close()
    ious = [mask_iou(a, b) for a, b in zip(final["old"]["masks"], final["new"]["masks"])]
    load_after = os.getloadavg()

    print(
        f"{checkpoint.name}, {HEIGHT}x{WIDTH} image, each tree's served defaults, {args.threads} torch threads, "
        f"{args.clock} clock, "
        f"{platform.machine()} {os.cpu_count()} CPUs; load average {load[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print(f"| tree | median {args.clock} s/click | p90 | clicks | time to first mask (wall s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, worker in workers.items():
        values = sorted(times[name])
        medians[name] = statistics.median(values)
        print(
            f"| {name} ({Path(getattr(args, name)).resolve()}) | {medians[name]:.3f} | "
            f"{values[int(0.9 * (len(values) - 1))]:.3f} | {len(values)} | {worker.first_mask_s:.2f} | "
            f"{final[name]['peak_rss_mib']:.0f} |"
        )
    print(f"\nnew / old per click: {medians['new'] / medians['old']:.2f}x")
    print(f"mask IoU new vs old over 20 robot clicks: min {min(ious):.4f}, after click 20 {ious[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
