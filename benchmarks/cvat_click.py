"""Per-click cost of the CVAT interactor, as the nuclio function pays it, on warm ~2-MP JPEGs.

Each request is what CVAT sends: the JSON body with the frame base64-encoded and all clicks so far (positives and
negatives apart). Timed per request: parsing the body, base64, the image's sha256 (the object key), the cached
decode, the forward(s) and the reply's RLE. The clicks come from the NoC robot user on the decoded replies (GrabCut
images and masks, upscaled to ~2 MP: any image would do, nothing is tuned here). One click per request shows that
the 10th click costs what the 2nd does (one forward each: the previous mask is kept on the server); a fast
clicker's bursts of two new clicks per request show one forward per request.

    python benchmarks/cvat_click.py [--images 3] [--clicks 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
                return f"{line.split(':', 1)[1].strip()} ({isa})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="GrabCut")
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from ml_backend.config import Settings
    from ml_backend.cvat.interactor import CvatInteractor
    from ml_backend.interactive.core import InteractiveCore
    from ml_backend.interactive.engine import Engine
    from ml_backend.interactive.sessions import RunStats
    from model.evaluation.clicker import Clicker
    from model.evaluation.datasets import load_dataset

    torch.set_num_threads(args.threads)
    settings = Settings.from_env({})
    engine = Engine(settings)
    engine.load()
    if engine.error:
        sys.exit(f"cannot load the model: {engine.error}")
    cvat = CvatInteractor(InteractiveCore(settings, engine))
    dataset = load_dataset(args.dataset)

    def decode(reply: dict, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, bool)
        for item in reply["shapes"]:  # one shape per part of the mask
            *runs, left, top, right, bottom = item["points"]
            flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
            mask[top : bottom + 1, left : right + 1] |= flat.reshape(bottom - top + 1, right - left + 1)
        return mask

    per_index: dict[int, list[float]] = {}
    forwards: dict[int, list[int]] = {}
    model_ms: list[float] = []
    burst_forwards: list[int] = []
    burst_clicks: list[int] = []
    for i in range(min(args.images, len(dataset))):
        sample = dataset[i]
        h, w = sample.gt.shape
        scale = (2_000_000 / (h * w)) ** 0.5
        size = (int(w * scale), int(h * scale))
        image = cv2.resize(sample.image, size, interpolation=cv2.INTER_CUBIC)
        gt = cv2.resize(sample.gt.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        image_b64 = base64.b64encode(buf.getvalue()).decode()
        for burst in (1, 2):
            cvat.core.drop(lambda key: True)  # a cold object each time (images too: the first decode is paid once)
            clicker = Clicker(gt)
            mask = np.zeros(gt.shape, bool)
            for step in range(args.clicks if burst == 1 else args.clicks // 2):
                for _ in range(burst):  # a burst: the robot's clicks on the same mask arrive in one request
                    clicker.make_next_click(mask)
                body = json.dumps(
                    {
                        "image": image_b64,
                        "pos_points": [[c.col, c.row] for c in clicker.clicks if c.is_positive],
                        "neg_points": [[c.col, c.row] for c in clicker.clicks if not c.is_positive],
                        "obj_bbox": [],
                    }
                ).encode()
                stats = RunStats()
                started = time.perf_counter()
                reply = cvat.invoke(body, stats)  # bytes: the JSON parse is timed too
                elapsed = time.perf_counter() - started
                mask = decode(reply, gt.shape)
                if burst == 1:
                    if step:  # the first click pays the image decode
                        per_index.setdefault(step + 1, []).append(elapsed)
                        model_ms.append(stats.model_ms)
                    forwards.setdefault(step + 1, []).append(stats.forwards)
                elif step:
                    burst_forwards.append(stats.forwards)
                    burst_clicks.append(burst)

    print(f"CVAT interactor per click, {args.images} {args.dataset} images at ~2 MP (JPEG), {args.threads} threads, ")
    print(f"{_cpu_name()}, torch {torch.__version__}, model {engine.model_version}\n")
    print("| click | median s | forwards |\n|---|---|---|")
    for index in sorted(per_index):
        print(f"| {index} | {statistics.median(per_index[index]):.3f} | {statistics.mean(forwards[index]):.1f} |")
    all_times = [t for times in per_index.values() for t in times]
    print(
        f"\nall clicks after the first: median {statistics.median(all_times):.3f} s, of which the model "
        f"{statistics.median(model_ms) / 1000:.3f} s; click 10 / click 2 = "
        f"{statistics.median(per_index[max(per_index)]) / statistics.median(per_index[2]):.2f}"
    )
    print(
        f"bursts of 2 new clicks per request: {statistics.mean(burst_forwards):.1f} forwards per request "
        f"({sum(burst_clicks)} clicks in {len(burst_forwards)} requests)"
    )


if __name__ == "__main__":
    main()
