"""CVAT Online / Enterprise: ``ml_backend/cvat/agent.py`` under the real ``cvat-cli`` 2.80 agent.

``cvat-cli function create-native`` and ``function run-agent`` (separate processes, as a user runs them) talk to a
stand-in of CVAT's agent API (``cvat_agent_api.py``); the frames are evaluation images (GrabCut, Berkeley), the model
the shipped starter. The agent's masks are compared with ``adaptiveclick predict`` on the same clicks, its log says
how many forwards each click cost, and bad requests fail cleanly while the agent keeps serving."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from testkit.cvat_ui import SLIDER_DEFAULT, decode_cvat_mask, shape_confidence

from cvat_agent_api import TOKEN, AgentApi, serving

pytest.importorskip("cvat_sdk", reason="pip install -e '.[test]' (the cvat-agent extra)")

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("cvat-cli")
GRABCUT, BERKELEY = "GrabCut/images/124080.jpg", "Berkeley/images/42049.jpg"


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the object pixel farthest from its border: where an annotator clicks first."""
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def load(shared_dir: Path, relative: str) -> tuple[bytes, np.ndarray, np.ndarray]:
    path = shared_dir / "datasets" / relative
    masks = path.parent.parent / "masks"
    (gt_path,) = [p for p in masks.iterdir() if p.stem == path.stem]
    image = np.asarray(Image.open(path).convert("RGB"))
    gt = np.asarray(Image.open(gt_path).convert("L"))
    return path.read_bytes(), image, gt == 1  # 0 / 1 / 255 = ignore (the shared layout)


class Agent:
    """The stand-in server, one native function, and ``cvat-cli function run-agent`` serving it."""

    def __init__(self, api: AgentApi, url: str, tmp: Path):
        self.api, self.url = api, url
        self.env = {**os.environ, "CVAT_ACCESS_TOKEN": TOKEN, "PYTHONPATH": str(REPO), "MODEL_DIR": ""}
        created = self.cli("function", "create-native", "AdaptiveClick", "--function-module", "ml_backend.cvat.agent")
        self.function_id = int(created.stdout.split()[-1])
        self.log_path = tmp / "agent.log"
        self.process = subprocess.Popen(
            [str(CLI), "--server-host", url, "function", "run-agent", str(self.function_id)]
            + ["--function-module", "ml_backend.cvat.agent"],
            env=self.env,
            cwd=REPO,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(CLI), "--server-host", self.url, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
            timeout=300, check=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text()

    def click(self, task: int, pos=(), neg=(), box=(), frame: int = 0) -> tuple[str, dict, int]:
        """Queue a request, wait for its outcome; also the forwards the agent logged for it."""
        before = len(re.findall(r"forward\(s\)", self.log()))
        ar_id = self.api.interact(self.function_id, task, frame, pos, neg, box)
        kind, body = self.api.outcome(ar_id, timeout=300)
        forwards = None
        for _ in range(50):  # the log line is written before the result is submitted; flushes may lag
            found = re.findall(r"(\d+) forward\(s\)", self.log())
            if len(found) > before or kind == "fail":
                forwards = int(found[-1]) if len(found) > before else 0
                break
            time.sleep(0.1)
        return kind, body, forwards


@pytest.fixture(scope="module")
def agent(tmp_path_factory, shared_dir):
    api = AgentApi()
    with serving(api) as url:
        runner = Agent(api, url, tmp_path_factory.mktemp("agent"))
        try:
            yield runner
        finally:
            runner.process.terminate()
            runner.process.wait(timeout=30)


def predict_mask(tmp: Path, image_bytes: bytes, clicks, box=None) -> np.ndarray:
    """``adaptiveclick predict`` with the clicks in order ((x, y, positive)) and the box's corners."""
    source, out = tmp / "image.png", tmp / "mask.png"
    source.write_bytes(image_bytes)
    args = [sys.executable, "-m", "cli", "predict", str(source), "--out", str(out)]
    if box is not None:
        args += ["--box", ",".join(str(v) for corner in box for v in corner)]
    for x, y, positive in clicks:
        args += ["--click", f"{y},{x}" + ("" if positive else ",neg")]
    subprocess.run(args, cwd=REPO, check=True, capture_output=True, timeout=300)
    return np.asarray(Image.open(out)) > 0


def union(body: dict, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for shape in body["shapes"]:
        assert shape["type"] == "mask" and shape_confidence(shape) >= SLIDER_DEFAULT
        mask |= decode_cvat_mask([int(v) for v in shape["points"]], height, width)
    return mask


def test_create_native_declares_an_interactor_with_an_optional_box(agent):
    (function,) = agent.api.functions.values()
    assert function["provider"] == "native" and function["kind"] == "interactor"
    assert function["min_pos_points"] == 0 and function["min_neg_points"] == 0
    assert function["startswith_box_optional"] is True and "startswith_box" not in function


def test_clicks_keep_the_previous_mask_one_forward_each_and_equal_predict(agent, shared_dir, tmp_path):
    data, image, gt = load(shared_dir, GRABCUT)
    height, width = gt.shape
    task = agent.api.add_task([(data, width, height)])
    x, y = inner_point(gt)
    ys, xs = np.nonzero(~gt)
    far = int(np.argmax((xs - x) ** 2 + (ys - y) ** 2))  # a background pixel far from the object: a negative
    clicks = [(x, y, True), (int(xs[far]), int(ys[far]), False)]
    for n in range(1, len(clicks) + 1):
        pos = [(cx + 0.5, cy + 0.5) for cx, cy, p in clicks[:n] if p]  # CVAT sends floats
        neg = [(cx + 0.5, cy + 0.5) for cx, cy, p in clicks[:n] if not p]
        kind, body, forwards = agent.click(task, pos, neg)
        assert kind == "complete", body
        assert forwards == 1, agent.log()[-3000:]  # the previous mask was kept: one forward per click
    mask = union(body, height, width)
    assert mask[y, x] and (mask & gt).sum() > 0.9 * mask.sum()  # the object's pixels, around the click
    assert np.array_equal(mask, predict_mask(tmp_path, data, clicks))


def test_a_box_alone_then_a_click_refine_one_object(agent, shared_dir, tmp_path):
    data, image, gt = load(shared_dir, BERKELEY)
    height, width = gt.shape
    task = agent.api.add_task([(data, width, height)])
    ys, xs = np.nonzero(gt)
    box = [(xs.min() - 2.4, ys.min() - 1.6), (xs.max() + 2.5, ys.max() + 1.7)]  # fractional, as CVAT's UI draws
    kind, body, forwards = agent.click(task, box=box)
    assert kind == "complete" and forwards >= 1 and body["shapes"], body
    x, y = inner_point(gt)
    kind, body, forwards = agent.click(task, [(x, y)], box=box)
    assert kind == "complete" and forwards == 1
    assert np.array_equal(union(body, height, width), predict_mask(tmp_path, data, [(x, y, True)], box=box))


def test_bad_requests_fail_cleanly_and_the_agent_keeps_serving(agent, shared_dir):
    data, image, gt = load(shared_dir, GRABCUT)
    height, width = gt.shape
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 MP, a few kB compressed
    task = agent.api.add_task(
        [(data, width, height), (bomb.getvalue(), 12000, 12000), (b"\x89PNG\r\n\x1a\n not really", width, height)]
    )
    x, y = inner_point(gt)
    cases = {
        "no point, no box": dict(),
        "a negative only": dict(neg=[(5, 5)]),
        "NaN": dict(pos=[(x, math.nan)]),
        "outside the image": dict(pos=[(width + 40, y)]),
        "a 144 MP frame": dict(pos=[(10, 10)], frame=1),
        "a corrupt frame": dict(pos=[(10, 10)], frame=2),
    }
    reasons = {
        "NaN": "pos_points[0].y must be a finite number",
        "outside the image": f"is outside the {width}x{height} image",
        "a 144 MP frame": "MAX_IMAGE_MEGAPIXELS",
    }
    for name, prompt in cases.items():
        kind, body, _ = agent.click(task, **prompt)
        if name in ("no point, no box", "a negative only"):
            # Nothing is the object yet: an answer with no shape, not an error notification.
            assert (kind, body.get("shapes")) == ("complete", []), (name, body)
        else:
            assert kind == "fail", (name, body)
            assert TOKEN not in body["exc_info"]
            if name in reasons:
                assert reasons[name] in agent.log(), name  # the reason is in the agent's log
        assert agent.process.poll() is None, f"the agent died on {name}"
        kind, body, _ = agent.click(task, [(x, y)])  # and still answers a good click
        assert kind == "complete" and body["shapes"], (name, body)
    assert not agent.api.unknown, agent.api.unknown  # the stand-in answered every call the agent made


def test_the_agent_serves_the_version_fine_tuning_promotes(tmp_path, tiny_model):
    """``MODEL_DIR``: the agent loads what ``MODEL_DIR/current`` names and follows a promotion without a restart
    (in-process: the same ``AdaptiveClickAgent`` that ``run-agent``'s worker creates)."""
    import copy

    import torch

    from ml_backend.config import Settings
    from ml_backend.cvat.agent import AdaptiveClickAgent
    from ml_backend.finetuning.model_store import ModelStore
    from model.checkpoint import save_checkpoint

    base = save_checkpoint(tiny_model, tmp_path / "base.safetensors")
    store = ModelStore(tmp_path / "models")
    net = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.01)
    job, _ = store.enqueue("1", "test")
    version = store.write_version(job["id"], lambda p: save_checkpoint(net, p), {"parent": "x"}, make_current=False)
    settings = Settings.from_env({})
    settings.model_dir, settings.model_checkpoint, settings.device = str(store.root), str(base), "cpu"
    settings.model_watch_s, settings.finetune_worker = 0.2, "external"
    agent = AdaptiveClickAgent(settings)

    class Prompts:
        pos_points, neg_points, bounding_box = ((40.5, 30.5),), (), None

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    frame = agent.preprocess_image(None, image)
    assert isinstance(agent.detect(None, frame, Prompts()), list)
    engine = agent.interactor.core.engine
    assert engine.model_version == engine.base_version
    store.set_current(version)  # what a promoting fine-tuning job does
    deadline = time.monotonic() + 60
    while engine.model_version != version and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.model_version == version
    assert isinstance(agent.detect(None, frame, Prompts()), list)  # answers on the promoted version
