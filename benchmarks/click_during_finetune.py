"""Per-click time of the served default while a fine-tuning job trains on the same machine (not a test).

    python benchmarks/click_during_finetune.py [--rounds 3] [--sessions 2] [--threads 2] [--pause 1]

The clicks run in this process with the predictor ``serve`` builds (its defaults, ``--threads`` torch threads as a
serving worker has) on the 2-MP test image of ``click_speed.py``. The fine-tuning load is one child process set up
as the spawned worker sets itself up (``ml_backend.finetuning.worker.yield_to_serving``: ``FINETUNE_NICE``, default
10, and ``FINETUNE_THREADS``, default half the cores) and training the shipped starter with the job's defaults on
CamVid frames without end. Idle and loaded phases alternate (the child is stopped with SIGSTOP and resumed with
SIGCONT), ``--rounds`` times each, ``--sessions`` 8-click sessions per phase, so the machine's other load falls on
both alike; each click comes ``--pause`` seconds after the previous answer, as an annotator's do (a click after
idle time wakes the thread pool, which a job on the cores can delay). Reported: the median and p90 seconds per warm
click idle and under the job, their ratio (the issue's goal: at most 1.5x), and the job's own seconds per step while
it ran beside the clicks.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from click_speed import CLICKS, test_image  # noqa: E402

# The fine-tuning load: the worker's own priority and threads, the job's default training config, no end.
TRAINER = r"""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ml_backend.finetuning.worker import JobConfig, yield_to_serving
from model.images import read_label_map, read_rgb
from model.training.finetune import finetune, memory_source

checkpoint, data, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
cfg = JobConfig.from_env()
yield_to_serving(cfg)
samples = []
for path in sorted((data / "regions").glob("*.png"))[:8]:
    labels = read_label_map(path)
    image = read_rgb(next((data / "images").glob(path.stem + ".*")))
    samples.append((image, [labels == i for i in np.unique(labels) if i > 0]))
finetune(checkpoint, memory_source(samples), replace(cfg.train, steps=1_000_000, log_every=1), out=out)
"""


def steps_logged(log: Path) -> list[float]:
    """The job's seconds per step so far (its log.csv)."""
    if not log.is_file():
        return []
    with open(log, newline="") as handle:
        return [float(row["s_per_step"]) for row in csv.DictReader(handle)]


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "weights" / "starter.safetensors")
    parser.add_argument("--data", type=Path, default=shared / "datasets" / "CamVid", help="images/ + regions/")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the clicks' torch threads")
    parser.add_argument("--rounds", type=int, default=3, help="idle/loaded phase pairs")
    parser.add_argument("--sessions", type=int, default=2, help="8-click sessions per phase")
    parser.add_argument("--pause", type=float, default=1.0, help="idle seconds before each click, as an annotator")
    args = parser.parse_args(argv)

    import numpy as np  # noqa: F401  (imported before torch, as serve does)
    import torch

    from ml_backend.config import Settings
    from ml_backend.finetuning.worker import JobConfig
    from ml_backend.interactive.engine import predictor_options
    from model.checkpoint import load_model
    from model.predictor import Predictor

    torch.set_num_threads(args.threads)
    image, _ = test_image()
    predictor = Predictor(load_model(args.checkpoint, "cpu"), device="cpu", **predictor_options(Settings.from_env({})))

    def session() -> list[float]:
        predictor.set_image(image)
        times = []
        for click in CLICKS:
            time.sleep(args.pause)  # the job has the cores to itself meanwhile, as between an annotator's clicks
            started = time.perf_counter()
            predictor.add_click(*click)
            times.append(time.perf_counter() - started)
        return times[1:]  # the first click of a session also encodes a new image: not a warm click

    session()  # warm-up
    job_cfg = JobConfig.from_env()
    out = Path(tempfile.mkdtemp(prefix="click-during-finetune-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-c", TRAINER, str(args.checkpoint), str(args.data), str(out)]
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(out / "stderr.txt", "wb"))
    idle: list[float] = []
    loaded: list[float] = []
    job_steps: list[float] = []
    try:
        deadline = time.monotonic() + 600
        while len(steps_logged(out / "log.csv")) < 2:  # set up, and past its first (slowest) step
            if job.poll() is not None:
                raise RuntimeError(f"the training job exited with {job.returncode}: {(out / 'stderr.txt').read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError("the training job logged no step in 10 minutes")
            time.sleep(1.0)
        for _ in range(args.rounds):
            job.send_signal(signal.SIGSTOP)
            for _ in range(args.sessions):
                idle += session()
            before = len(steps_logged(out / "log.csv"))
            job.send_signal(signal.SIGCONT)
            time.sleep(2.0)  # the job back at full speed, not waking
            for _ in range(args.sessions):
                loaded += session()
            job_steps += steps_logged(out / "log.csv")[before + 1 :]  # the first spans the stop
    finally:
        job.send_signal(signal.SIGCONT)
        job.terminate()
        job.wait(30)

    load = open("/proc/loadavg").read().split()[:3]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"clicks on {args.threads} thread(s); job: nice {job_cfg.nice}, {job_cfg.train.threads} thread(s), "
        f"batch {job_cfg.train.batch_size}; {args.pause} s before each click; load average at the end {' '.join(load)}"
    )
    print("| phase | warm clicks | median s/click | p90 |")
    print("|---|---|---|---|")
    for name, times in (("idle", idle), ("fine-tuning job running", loaded)):
        print(f"| {name} | {len(times)} | {statistics.median(times):.3f} | {p90(times):.3f} |")
    ratio = statistics.median(loaded) / statistics.median(idle)
    print(f"ratio (job / idle): {ratio:.2f}x (goal <= 1.5x)")
    median_step = f", median {statistics.median(job_steps):.2f} s/step" if job_steps else ""
    print(f"the job beside the clicks: {len(job_steps)} whole steps{median_step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
