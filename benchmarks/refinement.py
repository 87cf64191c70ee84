"""Inference-time refinement settings: quality (NoC protocol) and per-click cost, one table row per setting.

    # quality: each setting through `adaptiveclick evaluate`, the GrabCut baseline in the same run
    python benchmarks/refinement.py quality --datasets GrabCut,Berkeley --settings none,guided,clean,cfr2 \\
        --out results/refinement [--checkpoint F] [--threads 1] [--parallel 2]
    # validation split of the training data (what settings are chosen on)
    python benchmarks/refinement.py quality --datasets ECSSD:val,COCO-MVal:val --settings ... --out results/val
    # per-click time on a 2-MP image, warm, 2 threads (run on an otherwise idle machine)
    python benchmarks/refinement.py latency --settings none,guided,clean,cfr2 [--threads 2] [--no-flip]
    # the table again from saved results
    python benchmarks/refinement.py table --out results/refinement

Quality runs are separate processes (``--parallel`` at a time); ``quality`` skips settings whose results exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "grabcut-baseline"


def _split(setting: str) -> tuple[str, bool]:
    """``noflip:SPEC`` -> (SPEC, False): a refinement spec, with or without flip test-time augmentation."""
    return (setting[len("noflip:") :], False) if setting.startswith("noflip:") else (setting, True)


def _label(spec: str, flip: bool) -> str:
    return spec if flip else f"{spec}, no flip"


def _run_setting(setting: str, args: argparse.Namespace) -> Path:
    out = Path(args.out) / setting.replace(",", "+").replace("@", "at").replace(":", "-")
    if (out / "results.json").is_file():
        return out
    command = [sys.executable, "-m", "cli", "evaluate", "--datasets", args.datasets, "--out", str(out), "--no-progress"]
    if args.limit:
        command += ["--limit", str(args.limit)]
    if setting == BASELINE:
        command += ["--method", "grabcut"]
    else:
        spec, flip = _split(setting)
        command += ["--refine", spec, "--flip" if flip else "--no-flip"]
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE"
    )
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"{setting}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def quality(args: argparse.Namespace) -> None:
    settings = [s for s in args.settings.split(";") if s]
    if not args.no_baseline:
        settings.append(BASELINE)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda s: _run_setting(s, args), settings))
    table(args)


def table(args: argparse.Namespace) -> None:
    rows = [
        "| setting | dataset | instances | NoC@85 | NoC@90 | NoF@85 | NoF@90 | IoU@1 | IoU@3 | IoU@5 | s/click |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(Path(args.out).glob("*/results.json"), key=lambda p: (p.parent.name == BASELINE, p.parent.name)):
        data = json.loads(path.read_text())
        settings = data["settings"]
        setting = BASELINE if data["method"] == "grabcut" else _label(settings.get("refine", "none"), settings["flip"])
        for name, result in data["datasets"].items():
            s = result["summary"]
            iou = s["mean_iou_per_click"]
            rows.append(
                f"| {setting} | {name} | {s['num_instances']} | {s['noc']['85']:.2f} | {s['noc']['90']:.2f} | "
                f"{s['nof']['85']} | {s['nof']['90']} | {iou[0]:.3f} | {iou[2]:.3f} | {iou[4]:.3f} | "
                f"{s['spc_s']:.3f} |"
            )
    print("\n".join(rows))


def latency(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from click_speed import CLICKS as clicks
    from click_speed import test_image

    from model.checkpoint import load_model
    from model.predictor import Predictor

    torch.set_num_threads(args.threads)
    image, _ = test_image()  # the 2-MP ellipse on noise and 8-click session of every per-click benchmark
    from model.weights import STARTER_WEIGHTS

    net = load_model(args.checkpoint or STARTER_WEIGHTS, "cpu")  # the served default when none is given
    print("| setting | flip | median s/click | p90 s/click | clicks | threads |\n|---|---|---|---|---|---|")
    for setting in [s for s in args.settings.split(";") if s]:
        spec, flip = _split(setting)
        predictor = Predictor(net, device="cpu", flip=flip and not args.no_flip, refine=spec)
        times = []
        for repeat in range(args.repeats + 1):
            predictor.set_image(image)
            for row, col, positive in clicks:
                started = time.perf_counter()
                predictor.add_click(row, col, positive)
                if repeat:  # the first pass warms up
                    times.append(time.perf_counter() - started)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(
            f"| {predictor.refine.spec} | {predictor.flip} | {statistics.median(times):.3f} | {p90:.3f} | "
            f"{len(times)} | {args.threads} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("quality", "latency", "table"))
    parser.add_argument(
        "--settings",
        default="none;noflip:none;noflip:guided;noflip:guided,clean;cfr2;guided",
        help="semicolon-separated refinement specs (a spec may hold commas); noflip:SPEC runs "
        "without flip test-time augmentation",
    )
    parser.add_argument("--datasets", default="GrabCut,Berkeley")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", default="results/refinement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (quality 1, latency 2)")
    parser.add_argument("--parallel", type=int, default=1, help="quality runs at a time")
    parser.add_argument("--limit", type=int, default=None, help="quality: the first N instances of each dataset")
    parser.add_argument("--no-baseline", action="store_true", help="quality without the GrabCut baseline")
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="latency: timed passes of the 8-click session")
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 2 if args.mode == "latency" else 1
    {"quality": quality, "latency": latency, "table": table}[args.mode](args)


if __name__ == "__main__":
    main()
