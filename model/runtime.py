"""How the predictor runs the network: one setting (``MODEL_RUNTIME``, ``--runtime``) that serve, evaluate and predict
share, parsed here only.

* ``torch``: eager PyTorch with the reference's arithmetic (explicit attention, ``grid_sample`` deformable sampling in
  fp32): the released models bit for bit, what the parity tests check and the predictor's own default.
* ``fast``: eager PyTorch with the fused attention kernel (``scaled_dot_product_attention``) and the gather deformable
  sampler: the same network up to float rounding, fewer and larger operations (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "RUNTIME_HELP", "check_runtime", "is_exported"]

# The exported graphs (model.export_runtime): ONNX Runtime in fp32, with int8 linear layers, and OpenVINO.
EXPORTED_RUNTIMES = ("onnx", "onnx-int8", "openvino")
RUNTIMES = ("torch", "fast", *EXPORTED_RUNTIMES)
# What serve, evaluate and predict use unless told otherwise: the fastest runtime whose masks hold the tolerance
# (IoU >= 0.97 with the reference's over a 20-click session, measured in benchmarks/runtimes.py).
DEFAULT_RUNTIME = "fast"
RUNTIME_HELP = (
    "how the network runs: torch (the reference's arithmetic, bit for bit), fast (fused attention and the gather "
    "deformable sampler, equal up to float rounding), onnx / onnx-int8 / openvino (an exported graph, cached beside "
    "the checkpoint; needs the export extra) (default %(default)s, what serve uses)"
)


def check_runtime(name: str) -> str:
    """``name`` if it is a runtime, else a ValueError that lists them."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)}")
    return name


def is_exported(name: str) -> bool:
    """Whether runtime ``name`` runs an exported graph (model.export_runtime names its backends by the runtime)."""
    return name in EXPORTED_RUNTIMES
