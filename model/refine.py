"""Inference-time refinement of the predictor's probability map (no training involved).

Three independent steps, each an option of :class:`Refinement`, written as a spec string that the command line,
the backend's ``MODEL_REFINE`` and Python share (one parser, :meth:`Refinement.parse`):

* ``cfr<K>`` / ``cfr<K>@<tol>``: cascade-forward refinement (Sun et al., CFR-ICL, AAAI 2024). After a click, run
  the network up to K more times with the same clicks and ROI, each time feeding back its own last map as the
  previous mask; with ``@tol`` stop as soon as the mask changes in fewer than ``tol`` of its pixels.
* ``guided`` / ``guided<r>`` / ``guided<r>@<eps>``: edge-aware upsampling. The network predicts at a quarter of its
  input; instead of resizing that map bilinearly to the image, a guided filter (He et al., TPAMI 2013, in its
  fast form, He & Sun 2015) fits a local linear model of the map on the grey image at the network's input
  resolution (radius ``r`` px there, regulariser ``eps``) and applies it to the full-resolution image, only in the
  band around the predicted boundary (elsewhere the bilinear map is kept).
* ``clean``: drop connected components of the mask that contain no positive click (stray blobs on similar
  objects); if no component holds one, nothing is dropped.

``none`` is the reference behaviour. Steps combine with commas: ``guided,clean``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .zoom_in import Box, Click

__all__ = [
    "DEFAULT_FLIP",
    "DEFAULT_REFINE",
    "REFINE_HELP",
    "Refinement",
    "RefineSpecError",
    "drop_unclicked_components",
    "guided_upsample",
]

# What `serve`, `evaluate` and `predict` use unless told otherwise: the best setting on the validation split of the
# training data whose per-click time stays under 0.3 s at 2 MP on 2 CPU threads (README, Inference-time refinement).
# Flip test-time augmentation costs a second forward per click, which that budget does not hold.
DEFAULT_REFINE = "guided,clean"
DEFAULT_FLIP = False


class RefineSpecError(ValueError):
    """A refinement spec string that does not parse."""


_CFR = re.compile(r"^cfr(\d+)(?:@([0-9.eE+-]+))?$")
_GUIDED = re.compile(r"^guided(\d+)?(?:@([0-9.eE+-]+))?$")


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Which refinement steps the predictor applies after each click (all off = the reference)."""

    cascade_steps: int = 0  # extra forwards with the same clicks (CFR)
    cascade_tol: float = 0.0  # > 0: stop the cascade once fewer than this share of mask pixels change
    guided: bool = False
    guided_radius: int = 4  # px at the network's input resolution (1 px of its output = 4 px there)
    guided_eps: float = 1e-3  # regulariser on the grey guide's local variance (guide in [0, 1])
    clean: bool = False

    @classmethod
    def parse(cls, spec: str | Refinement | None) -> Refinement:
        """``none``, or comma-separated ``cfr<K>[@tol]``, ``guided[<r>][@eps]``, ``clean``."""
        if spec is None or isinstance(spec, Refinement):
            return spec or cls()
        if not isinstance(spec, str):
            raise RefineSpecError(f"a refinement spec is a string such as 'guided,clean', not {type(spec).__name__}")
        text = spec.strip().lower()
        options: dict = {}
        if text in ("", "none", "off"):
            return cls()
        for token in (t.strip() for t in text.split(",")):
            if match := _CFR.match(token):
                options["cascade_steps"] = int(match.group(1))
                options["cascade_tol"] = _number(match.group(2), token) if match.group(2) else 0.0
            elif match := _GUIDED.match(token):
                options["guided"] = True
                if match.group(1):
                    options["guided_radius"] = int(match.group(1))
                if match.group(2):
                    options["guided_eps"] = _number(match.group(2), token)
            elif token == "clean":
                options["clean"] = True
            else:
                raise RefineSpecError(
                    f"unknown refinement {token!r} in {spec!r}: use none, or comma-separated cfr<K>[@tol] (e.g. cfr2, "
                    "cfr4@0.01), guided[<radius>][@eps] (e.g. guided, guided8@1e-2) and clean"
                )
        refinement = cls(**options)
        refinement.validate()
        return refinement

    def validate(self) -> None:
        if not 0 <= self.cascade_steps <= 10:
            raise RefineSpecError(f"cfr<K>: K must be 0..10, got {self.cascade_steps}")
        if not 0 <= self.cascade_tol < 1:
            raise RefineSpecError(f"cfr<K>@tol: tol is a share of the mask in [0, 1), got {self.cascade_tol}")
        if not 1 <= self.guided_radius <= 32 or not 0 < self.guided_eps < 1:
            raise RefineSpecError(
                f"guided<r>@eps: r in 1..32 and eps in (0, 1), got {self.guided_radius}, {self.guided_eps}"
            )

    @property
    def spec(self) -> str:
        """The canonical spec string (what :meth:`parse` reads back)."""
        parts = []
        if self.cascade_steps:
            parts.append(f"cfr{self.cascade_steps}" + (f"@{self.cascade_tol:g}" if self.cascade_tol else ""))
        if self.guided:
            parts.append(f"guided{self.guided_radius}@{self.guided_eps:g}")
        if self.clean:
            parts.append("clean")
        return ",".join(parts) or "none"


REFINE_HELP = (
    "inference-time refinement: none (the reference), or comma-separated cfr<K>[@tol], guided[<r>][@eps] "
    "and clean (default %(default)s, what serve uses)"
)


def _number(text: str, token: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RefineSpecError(f"{token!r}: {text!r} is not a number") from None


# ---------------------------------------------------------------------------------------------
# Edge-aware upsampling


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, windows clipped at the border (so flat maps stay flat)."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_upsample(
    probs_low: torch.Tensor, guide_low: torch.Tensor, guide_full: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """Fast guided filter: fit ``q = a * I + b`` per window at low resolution, apply at full resolution.

    ``probs_low`` and ``guide_low`` (1, 1, h, w); ``guide_full`` (1, 1, H, W), all in [0, 1]. Returns (1, 1, H, W)
    probabilities, equal to a bilinear resize of ``probs_low`` outside the band around its boundary.
    """
    mean_i, mean_p = _box(guide_low, radius), _box(probs_low, radius)
    cov_ip = _box(guide_low * probs_low, radius) - mean_i * mean_p
    var_i = _box(guide_low * guide_low, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    size = tuple(guide_full.shape[-2:])
    coeffs = F.interpolate(
        torch.cat([_box(a, radius), _box(b, radius)], 1), size=size, mode="bilinear", align_corners=True
    )
    refined = (coeffs[:, :1] * guide_full + coeffs[:, 1:]).clamp_(0, 1)
    # The band: where the low-resolution map is undecided, widened by the filter's reach.
    undecided = ((probs_low > 0.01) & (probs_low < 0.99)).float()
    band = F.max_pool2d(undecided, 2 * radius + 1, stride=1, padding=radius)
    band = F.interpolate(band, size=size, mode="nearest") > 0
    coarse = F.interpolate(probs_low, size=size, mode="bilinear", align_corners=True)
    return torch.where(band, refined, coarse)


# ---------------------------------------------------------------------------------------------
# Component cleaning


def drop_unclicked_components(probs: torch.Tensor, roi: Box, clicks: Sequence[Click], threshold: float) -> torch.Tensor:
    """Zero the mask's connected components (8-connected, inside ``roi``) that hold no positive click."""
    rmin, rmax, cmin, cmax = roi
    positives = [(c.row, c.col) for c in clicks if c.positive and rmin <= c.row <= rmax and cmin <= c.col <= cmax]
    if not positives:
        return probs
    crop = probs[0, 0, rmin : rmax + 1, cmin : cmax + 1]
    mask = (crop > threshold).cpu().numpy().astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count <= 2:
        return probs  # background and at most one component: nothing to drop
    keep_ids = sorted({int(labels[r - rmin, c - cmin]) for r, c in positives} - {0})
    if not keep_ids:
        return probs  # no positive click is inside the mask: the network disagrees with the user; keep it all
    if len(keep_ids) == count - 1:
        return probs  # every component holds a positive click
    keep = np.zeros(count, np.float32)
    keep[0] = 1.0  # background pixels keep their (sub-threshold) probabilities
    keep[keep_ids] = 1.0
    cleaned = probs.clone()
    cleaned[0, 0, rmin : rmax + 1, cmin : cmax + 1].mul_(torch.from_numpy(keep[labels]).to(probs.device))
    return cleaned
