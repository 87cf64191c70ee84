"""The exported runtimes (model.export_runtime): the ONNX graph predicts the torch runtime's masks, and its cache
beside the checkpoint is reused, rebuilt when corrupt and moved to the user cache when the folder is read-only."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import export_runtime
from model.checkpoint import load_model
from model.predictor import Predictor
from model.weights import STARTER_WEIGHTS

pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install -e '.[export]')")

SIZE = (320, 320)  # the starter's input
# The exporter's fixed cost (tracing, translation: ~15-25 s, the tiny network's hardly less than the starter's) is paid
# once for the module: the tests of the cache's behaviour copy that export instead of exporting again. The starter,
# not the tiny random network: its masks are meaningful (a random decoder's hard attention masks amplify rounding).


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """The starter loaded from a copy alone in a folder, with its onnx graph (batch 1) exported there once; returns
    the network and the graph's bytes."""
    folder = tmp_path_factory.mktemp("ckpt")
    shutil.copyfile(STARTER_WEIGHTS, folder / STARTER_WEIGHTS.name)
    model = load_model(folder / STARTER_WEIGHTS.name, "cpu")
    graph = export_runtime.ExportedNetwork(model, "onnx", 1, SIZE)
    assert graph.export_seconds > 0 and graph.path.parent == folder, "exported beside the checkpoint"
    return model, graph.path.read_bytes()


@pytest.fixture()
def net(cached, tmp_path, monkeypatch):
    """The network of ``cached`` with its export back in place, an empty user cache, and an export that copies the
    module's graph (the cache logic is what is tested, not the exporter again)."""
    model, graph = cached
    monkeypatch.setattr(export_runtime, "USER_CACHE", tmp_path / "user-cache")
    folder = model.checkpoint_path.parent
    for path in folder.glob("*.onnx"):
        path.unlink()
    name = export_runtime.cache_name(model, "onnx", 1, SIZE)
    (folder / name).write_bytes(graph)
    exports = []

    def copy_export(net, path, batch, size, optimize=True):
        exports.append(path)
        Path(path).write_bytes(graph)

    monkeypatch.setattr(export_runtime, "export_onnx", copy_export)
    model.exports = exports
    return model


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_onnx_runtime_predicts_the_torch_runtimes_masks(net):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:240, :320]
    image[((rows - 120) / 70) ** 2 + ((cols - 150) / 90) ** 2 < 1] //= 4  # a dark ellipse to segment
    clicks = [(120, 150, True), (20, 30, False), (150, 200, True), (60, 260, False)]
    masks = {}
    for runtime in ("torch", "onnx"):
        predictor = Predictor(net, device="cpu", flip=False, target_size=SIZE, runtime=runtime)
        predictor.set_image(image)
        masks[runtime] = [predictor.add_click(*click) > predictor.threshold for click in clicks]
    # The tolerance of every runtime (model.runtime): IoU >= 0.97 with the reference's masks after each click.
    assert min(_iou(a, b) for a, b in zip(masks["onnx"], masks["torch"])) >= 0.97
    assert not net.exports, "the predictor found the graph in the cache"


def test_a_restart_reuses_the_export_and_a_corrupt_file_is_rebuilt(net):
    again = export_runtime.ExportedNetwork(net, "onnx", 1, SIZE)  # what a new process does
    assert again.export_seconds == 0 and not net.exports and again.path.parent == net.checkpoint_path.parent

    good = again.path.read_bytes()
    again.path.write_bytes(good[: len(good) // 3])  # what a killed copy or a full disk leaves
    rebuilt = export_runtime.ExportedNetwork(net, "onnx", 1, SIZE)
    assert len(net.exports) == 1 and rebuilt.path == again.path and rebuilt.path.read_bytes() == good
    assert not list(rebuilt.path.parent.glob(".*.tmp")), "no temporary file is left behind"
    image = torch.rand(1, 4, *SIZE)
    points = torch.tensor([[[100.0, 100.0, 0.0], [-1.0, -1.0, -1.0]]])
    assert torch.isfinite(rebuilt(image, points)).all()


def test_a_read_only_checkpoint_folder_sends_the_export_to_the_user_cache(net, tmp_path, monkeypatch):
    for path in net.checkpoint_path.parent.glob("*.onnx"):
        path.unlink()
    write = export_runtime.atomic_write

    def read_only(path, *args, **kwargs):
        if path.parent == net.checkpoint_path.parent:
            raise PermissionError(13, "Permission denied", str(path.parent))  # root writes anywhere: simulated
        write(path, *args, **kwargs)

    monkeypatch.setattr(export_runtime, "atomic_write", read_only)
    graph = export_runtime.ExportedNetwork(net, "onnx", 1, SIZE)
    assert graph.path.parent == tmp_path / "user-cache"
    assert len(net.exports) == 1


def test_a_missing_package_names_the_extra(net, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if it were not installed
    with pytest.raises(ImportError, match=r"adaptiveclick\[export\]"):
        Predictor(net, device="cpu", target_size=SIZE, runtime="openvino")
