"""Exported runtimes: the network's fixed-shape part (:meth:`AdaptiveClick.forward_disks`) as an ONNX graph, run by
ONNX Runtime (``onnx``, or ``onnx-int8`` with its linear layers dynamically quantised) or OpenVINO (``openvino``).

The clicks are rasterised in torch (their number varies per call); the graph takes the image with its previous map
and the disk maps at the network's input size and returns the summed logits. The deformable attention is exported
through ``grid_sample`` (ONNX ``GridSample``): the embedding-bag gather of the ``fast`` runtime has no ONNX form that
does not materialise every corner's value row.

An export is cached next to its checkpoint, named by the checkpoint's sha256 and by what else shapes the graph
(backend, opset, batch, input size, this module's format), or under the user cache directory when that folder is not
writable or the network has no checkpoint file (then keyed by its weights' sha256). Each backend has its own file:
ONNX Runtime's is optimised by the exporter, OpenVINO's is not (no faster there, half the export time), int8's is
quantised from ONNX Runtime's. Files are written through a
temporary file and a rename, so concurrent workers never read a partial one; a file that does not load is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import atomic_write
from .modeling.adaptiveclick import AdaptiveClick
from .modeling.click_encoding import click_disk_maps
from .weights import sha256_file

__all__ = [
    "BACKENDS",
    "USER_CACHE",
    "ExportedNetwork",
    "cache_dirs",
    "cache_name",
    "exported_network",
    "weights_digest",
]

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "onnx-int8", "openvino")
# The package each backend needs, and the extra of this project that installs it.
_PACKAGES = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino"}
OPSET = 18
# Bumped whenever the export changes what a cached file holds for the same weights, so old files are not reused.
FORMAT = 1


class _Graph(nn.Module):
    """What is exported: image (B, 4, H, W) + disks (B, 2, H, W) -> summed logits (B, 1, H, W)."""

    def __init__(self, net: AdaptiveClick) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, disks: torch.Tensor) -> torch.Tensor:
        return self.net.forward_disks(image, disks)["instances"]


# The user cache of exports whose checkpoint folder is read-only or that have no checkpoint file. The library reads no
# environment variable (tests/test_architecture.py): a caller that wants another folder sets this.
USER_CACHE = Path.home() / ".cache" / "adaptiveclick" / "exported"


def cache_dirs(checkpoint: Path | None) -> list[Path]:
    """Where exports are looked for and written, in order: beside the checkpoint, then :data:`USER_CACHE`."""
    return ([checkpoint.parent] if checkpoint is not None else []) + [USER_CACHE]


_digests: dict[tuple, str] = {}


def weights_digest(net: AdaptiveClick) -> str:
    """The sha256 of the network's checkpoint file (remembered per path, size and mtime), or of its weights when it
    was not loaded from a file."""
    path = net.checkpoint_path
    if path is not None and path.is_file():
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _digests:
            _digests[key] = sha256_file(path)
        return _digests[key]
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_name(net: AdaptiveClick, backend: str, batch: int, size: tuple[int, int]) -> str:
    """The file name of an export: the checkpoint's name and digest, and all else that shapes the graph."""
    stem = net.checkpoint_path.stem if net.checkpoint_path is not None else "weights"
    return f"{stem}.{weights_digest(net)[:16]}.{backend}-opset{OPSET}-b{batch}-{size[0]}x{size[1]}-v{FORMAT}.onnx"


def _require(backend: str) -> None:
    package = _PACKAGES[backend]
    try:
        __import__(package)
    except ImportError:
        raise ImportError(
            f"the {backend} runtime needs {package}: pip install 'adaptiveclick[export]' (or {package})"
        ) from None


def export_onnx(net: AdaptiveClick, path: str, batch: int, size: tuple[int, int], optimize: bool = True) -> None:
    """Write the fp32 graph of ``net`` at ``batch`` x ``size`` to ``path`` (one file, weights inside); ``optimize``:
    the exporter's own graph optimisation (ONNX Runtime runs it ~10% faster, OpenVINO no faster; it doubles the
    export time)."""
    # The sampler with an ONNX operator and the fused attention (fewer nodes); the predictor sets its own again
    # before every torch forward.
    net.set_deformable_sampler("grid_sample")
    net.set_fused_attention(True)
    net.set_image_size(size)
    with torch.inference_mode(False), torch.no_grad():
        image = torch.rand(batch, 4, *size)
        points = torch.tensor([[[size[0] / 2, size[1] / 2, 0.0], [-1.0, -1.0, -1.0]]] * batch, dtype=torch.float64)
        disks = click_disk_maps(points, *size, net.click_radius).float()
        # One eager forward first: the position encodings and reference points are cached per size on the first
        # forward, and the export should find them there as constants, not create them while it traces.
        net.forward_disks(image, disks)
        # The exporter reports every step on stdout and every skipped folding in its log: not a server's business.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            _quiet("onnxscript", "torch.onnx", "onnx_ir"),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # its advice on buffers is about training-time state, not ours
            program = torch.onnx.export(
                _Graph(net).eval(),
                (image, disks),
                dynamo=True,
                opset_version=OPSET,
                input_names=["image", "disks"],
                output_names=["logits"],
                external_data=False,
                optimize=optimize,
            )
            program.save(path, external_data=False)


def _quantize(source: str, path: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Only the matrix products: convolutions, norms and the sampler stay fp32. Unsigned weights: AVX2 without VNNI
    # multiplies u8 x s8 with saturating 16-bit sums, u8 x u8 does not saturate.
    with _quiet("root"):  # its advice to pre-process the graph is for static quantisation
        quantize_dynamic(source, path, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QUInt8)


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class ExportedNetwork:
    """One backend's compiled graph for one batch and input size, built from the cache or exported on creation."""

    def __init__(self, net: AdaptiveClick, backend: str, batch: int, size: tuple[int, int]) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown exported backend {backend!r}: use one of {', '.join(BACKENDS)}")
        _require(backend)
        self.backend, self.batch, self.size, self.click_radius = backend, batch, size, net.click_radius
        started = time.perf_counter()
        self.export_seconds = 0.0  # what this process paid to export (0 when the cache had the file)
        threads = torch.get_num_threads()  # the same thread budget as the torch runtimes (serve sets it)
        self.path = self._cached_file(net, backend)
        try:
            self._run = self._load(self.path, threads)
        except Exception as exc:  # a truncated or foreign file fails in the reader's own way
            if self.export_seconds:
                raise  # just written: not a stale cache, a real error
            log.warning("exported model %s does not load (%s): exporting it again", self.path, exc)
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = self._cached_file(net, backend)
            self._run = self._load(self.path, threads)
        self.load_seconds = time.perf_counter() - started  # export (if any), digest, reading and compiling

    def _cached_file(self, net: AdaptiveClick, backend: str) -> Path:
        """The cached graph of ``backend``, else a new export written to the first writable cache folder."""
        name = cache_name(net, backend, self.batch, self.size)
        folders = cache_dirs(net.checkpoint_path)
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        started = time.perf_counter()
        if backend == "onnx-int8":
            source = self._cached_file(net, "onnx")

            def write(tmp: str) -> None:
                _quantize(str(source), tmp)
        else:

            def write(tmp: str) -> None:
                export_onnx(net, tmp, self.batch, self.size, optimize=backend == "onnx")

        def readable(tmp: str) -> None:
            write(tmp)
            # mkstemp's 0600 would keep workers of other users from the shared file (reading the umask would set it,
            # process-wide, for a moment: a fixed mode instead).
            os.chmod(tmp, 0o644)

        for folder in folders:
            try:
                atomic_write(folder / name, readable)
            except OSError as exc:  # a read-only checkpoint folder: the next one
                log.info("cannot write the exported model in %s (%s)", folder, exc)
                continue
            self.export_seconds = time.perf_counter() - started  # an int8 file: its fp32 source included
            log.info("exported %s in %.1f s", folder / name, self.export_seconds)
            return folder / name
        raise OSError(f"no writable folder for the exported model among {', '.join(map(str, folders))}")

    def _load(self, path: Path, threads: int):
        if self.backend == "openvino":
            import openvino

            compiled = openvino.Core().compile_model(
                str(path),
                "CPU",
                {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
            )
            request = compiled.create_infer_request()
            lock = threading.Lock()  # one request object: calls from several threads take turns

            def run(image: np.ndarray, disks: np.ndarray) -> np.ndarray:
                with lock:
                    return request.infer({"image": image, "disks": disks})[0].copy()

            return run
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # not its notes on nodes it could not fold
        # Its threads otherwise spin for a while after each run, on the cores that the click's refinement needs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda image, disks: session.run(None, {"image": image, "disks": disks})[0]

    def __call__(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """:meth:`AdaptiveClick.forward`'s ``instances`` for ``image`` (B, 4, H, W) and ``points`` (B, 2N, 3)."""
        if tuple(image.shape) != (self.batch, 4, *self.size):
            raise ValueError(f"this graph takes ({self.batch}, 4, {self.size[0]}, {self.size[1]}), not {image.shape}")
        disks = click_disk_maps(points, *self.size, self.click_radius).float()
        logits = self._run(image.float().contiguous().numpy(), disks.numpy())
        return torch.from_numpy(logits)


_registry: weakref.WeakKeyDictionary[AdaptiveClick, dict[tuple, ExportedNetwork]] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def exported_network(net: AdaptiveClick, backend: str, batch: int, size: tuple[int, int]) -> ExportedNetwork:
    """The graph of ``net`` for ``backend``, ``batch`` and ``size``, built once per network and process: the
    predictors of one served model (one per session) share it."""
    with _registry_lock:
        graphs = _registry.setdefault(net, {})
        key = (backend, batch, tuple(size))
        if key not in graphs:
            graphs[key] = ExportedNetwork(net, backend, batch, tuple(size))
        return graphs[key]
