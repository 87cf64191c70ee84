"""Where one click's time goes: the served predictor on a 2-MP image, warm, stage by stage (not a test).

    python benchmarks/click_profile.py [--checkpoint F | --config vit_b_448] [--threads 1,2] [--repeats 3]
        [--refine SPEC] [--runtime torch|fast] [--flip]

Every stage is timed by wrapping the function or module that does it (exclusive time: a stage's own time without the
stages inside it), over an 8-click session replayed ``--repeats`` times after one warm-up pass; the table gives the
median milliseconds per click of each stage and their share of the click. The Label Studio backend's work after the
predictor (thresholding and scoring the map, the brush RLE) is timed on each click's map too.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The 2-MP test image and 8-click session every per-click benchmark uses (an ellipse on noise).
from click_speed import CLICKS, HEIGHT, WIDTH  # noqa: E402
from click_speed import test_image as _image_and_mask  # noqa: E402

import model.predictor as predictor_module  # noqa: E402
from ml_backend.labelstudio.adapter import encode_mask  # noqa: E402
from model.build import build_model  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.interactive import prediction_from  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.refine import DEFAULT_FLIP, DEFAULT_REFINE  # noqa: E402
from model.runtime import DEFAULT_RUNTIME, RUNTIMES  # noqa: E402
from model.zoom_in import ZoomIn  # noqa: E402


def test_image() -> np.ndarray:
    return _image_and_mask()[0]


class StageClock:
    """Exclusive wall time per stage: nested stages are subtracted from the stage around them."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, start, time spent in nested stages]

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def leave(self) -> None:
        name, start, nested = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.totals[name] += elapsed - nested
        if self._stack:
            self._stack[-1][2] += elapsed

    def wrap(self, owner: object, attribute: str, name: str) -> None:
        """Replace ``owner.attribute`` (a function or method) by a timed version of itself."""
        original = inspect.getattr_static(owner, attribute)
        function = original.fget if isinstance(original, property) else getattr(owner, attribute)

        def timed(*args, **kwargs):
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attribute, property(timed) if isinstance(original, property) else timed)

    def watch(self, module: torch.nn.Module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.enter(name))
        module.register_forward_hook(lambda *_: self.leave())


def instrument(clock: StageClock, net: torch.nn.Module) -> None:
    clock.wrap(ZoomIn, "next_roi", "zoom-in ROI (host threshold + box)")
    clock.wrap(ZoomIn, "crop", "crop to the network input")
    clock.wrap(predictor_module, "clicks_to_points", "clicks to points")
    clock.wrap(Predictor, "_forward", "predictor bookkeeping")
    clock.wrap(Predictor, "_upsample", "upsample + guided filter + paste")
    clock.wrap(predictor_module, "drop_unclicked_components", "clean (connected components)")
    clock.wrap(predictor_module.PredictorState, "probs", "host copy of the map")
    clock.watch(net, "forward: click maps, heads, query sum")
    clock.watch(net.patch_embed_coords, "forward: click patch embedding")
    clock.watch(net.backbone, "forward: ViT backbone")
    clock.watch(net.pixel_decoder, "forward: pixel decoder (projections, FPN step)")
    clock.watch(net.pixel_decoder.neck, "forward: SimpleFPN neck")
    clock.watch(net.pixel_decoder.transformer, "forward: deformable encoder")
    clock.watch(net.click_aware_decoder, "forward: CAMD decoder")


def profile(
    net: torch.nn.Module, clock: StageClock, args: argparse.Namespace, threads: int
) -> tuple[dict[str, float], float]:
    """Median ms per click of every stage, and the median whole click in ms."""
    torch.set_num_threads(threads)
    predictor = Predictor(net, device="cpu", flip=args.flip, refine=args.refine, runtime=args.runtime)
    image = test_image()
    per_stage: dict[str, list[float]] = defaultdict(list)
    clicks_ms = []
    for repeat in range(args.repeats + 1):
        predictor.set_image(image)
        for row, col, positive in CLICKS:
            clock.totals.clear()
            started = time.perf_counter()
            clock.enter("predictor: the rest (state, checks)")
            predictor.add_click(row, col, positive)
            clock.leave()
            clock.enter("backend: threshold + score")
            prediction = prediction_from(predictor.probs, predictor.threshold)
            clock.leave()
            clock.enter("backend: brush RLE")
            encode_mask(prediction.mask, (WIDTH, HEIGHT))
            clock.leave()
            if repeat:  # the first pass warms up
                clicks_ms.append(1e3 * (time.perf_counter() - started))
                for name, seconds in clock.totals.items():
                    per_stage[name].append(1e3 * seconds)
    return {name: statistics.median(values) for name, values in per_stage.items()}, statistics.median(clicks_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(REPO / "weights" / "starter.safetensors"))
    parser.add_argument("--config", default=None, help="a model config with random weights instead (e.g. vit_b_448)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of the 8-click session")
    parser.add_argument("--refine", default=DEFAULT_REFINE)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=DEFAULT_FLIP)
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=RUNTIMES)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    net = build_model(args.config).eval() if args.config else load_model(args.checkpoint, "cpu")
    clock = StageClock()
    instrument(clock, net)
    model_name = args.config or Path(args.checkpoint).name
    print(
        f"{model_name}, {HEIGHT}x{WIDTH} image, refine {args.refine}, flip {args.flip}, runtime "
        f"{args.runtime}; {platform.machine()}, torch {torch.__version__}; median ms per click of "
        f"{args.repeats} x {len(CLICKS)} warm clicks\n"
    )
    for threads in [int(t) for t in args.threads.split(",")]:
        stages, click_ms = profile(net, clock, args, threads)
        print(f"| stage ({threads} thread{'s' * (threads > 1)}) | ms per click | share |\n|---|---|---|")
        for name, ms in sorted(stages.items(), key=lambda item: -item[1]):
            print(f"| {name} | {ms:.1f} | {ms / click_ms:.0%} |")
        print(f"| **whole click (median)** | **{click_ms:.1f}** | |\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
