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
    """Mean over a (2r+1)^2 window, windows clipped at the border (so flat maps stay flat); per channel.

    Separable window sums as differences of running sums: six operations whatever the radius (the CPU pooling
    kernels are several times slower on these few-channel maps, and every extra operation costs a thread barrier).
    A clipped window's pixel count is its row count times its column count."""
    height, width = x.shape[-2:]
    side = 2 * radius + 1
    running = F.pad(x, (radius + 1, radius)).cumsum(-1)
    rows = running[..., side:] - running[..., :width]
    running = F.pad(rows, (0, 0, radius + 1, radius)).cumsum(-2)
    sums = running[..., side:, :] - running[..., :height, :]
    return sums / (_clipped_counts(height, radius, x)[:, None] * _clipped_counts(width, radius, x)[None, :])


def _clipped_counts(size: int, radius: int, like: torch.Tensor) -> torch.Tensor:
    """How many of the 2r+1 window positions around each of ``size`` positions lie inside ``0..size-1``."""
    position = torch.arange(size, device=like.device)
    return ((position + radius).clamp(max=size - 1) - (position - radius).clamp(min=0) + 1).to(like.dtype)


def _bilinear_rows(low: torch.Tensor, full_height: int, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``low`` (B, C, h, w) resized to ``full_height`` rows (bilinear, align_corners=True),
    without computing the others."""
    low_height = low.shape[-2]
    position = torch.arange(start, stop, device=low.device, dtype=torch.float32)
    position = position * ((low_height - 1) / max(full_height - 1, 1))
    below = position.floor().clamp_(0, max(low_height - 2, 0)).long()
    above = (below + 1).clamp_(max=low_height - 1)
    weight = (position - below).clamp_(0, 1)[:, None]
    return torch.lerp(low.index_select(-2, below), low.index_select(-2, above), weight)


def _owner_counts(low_size: int, full_size: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """How many of the full-resolution positions ``start..stop-1`` fall on each low-resolution position they reach
    (position ``p`` falls on ``p * low_size // full_size``)."""
    owners = torch.arange(start, stop, device=device) * low_size // full_size
    return torch.bincount(owners - owners[0])


def guided_upsample(
    probs_low: torch.Tensor, guide_low: torch.Tensor, guide_full: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """Fast guided filter: fit ``q = a * I + b`` per window at low resolution, apply at full resolution.

    ``probs_low`` and ``guide_low`` (1, 1, h, w); ``guide_full`` (1, 1, H, W), all in [0, 1]. Returns (1, 1, H, W)
    probabilities, equal to a bilinear resize of ``probs_low`` outside the band around its boundary. The filter is
    evaluated only in the band's bounding box: most of a 2-MP map is far from any boundary.
    """
    height, width = guide_full.shape[-2:]
    low_height, low_width = probs_low.shape[-2:]
    coarse = F.interpolate(probs_low, size=(height, width), mode="bilinear", align_corners=True)
    # The band: where the low-resolution map is undecided, widened by the filter's reach.
    undecided = ((probs_low > 0.01) & (probs_low < 0.99)).float()
    band_low = _box(undecided, radius)[0, 0] > 0
    band_rows, band_cols = band_low.any(1).nonzero()[:, 0], band_low.any(0).nonzero()[:, 0]
    if band_rows.numel() == 0:
        return coarse
    # Full-resolution pixel (y, x) lies on low-resolution pixel (y * h // H, x * w // W): the window is the full rows
    # and columns that lie on the band's box.
    row0, row1 = -(-int(band_rows[0]) * height // low_height), -(-(int(band_rows[-1]) + 1) * height // low_height)
    col0, col1 = -(-int(band_cols[0]) * width // low_width), -(-(int(band_cols[-1]) + 1) * width // low_width)
    row_counts = _owner_counts(low_height, height, row0, row1, band_low.device)
    col_counts = _owner_counts(low_width, width, col0, col1, band_low.device)
    band = band_low[int(band_rows[0]) : int(band_rows[0]) + len(row_counts)]
    band = band[:, int(band_cols[0]) : int(band_cols[0]) + len(col_counts)]
    band = band.repeat_interleave(row_counts, 0).repeat_interleave(col_counts, 1)

    guide_and_probs = torch.cat([guide_low, probs_low, guide_low * probs_low, guide_low * guide_low], 1)
    mean_i, mean_p, mean_ip, mean_ii = _box(guide_and_probs, radius).unbind(1)
    a = (mean_ip - mean_i * mean_p) / (mean_ii - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    coeffs = _box(torch.stack([a, b], 1), radius)
    # The window's rows of the coefficients' bilinear resize, then every column (a resize that keeps the height
    # only resizes the columns), of which the window's.
    coeffs = _bilinear_rows(coeffs, height, row0, row1)
    coeffs = F.interpolate(coeffs, size=(row1 - row0, width), mode="bilinear", align_corners=True)[..., col0:col1]
    refined = torch.addcmul(coeffs[0, 1], coeffs[0, 0], guide_full[0, 0, row0:row1, col0:col1]).clamp_(0, 1)
    window = coarse[0, 0, row0:row1, col0:col1]
    window.copy_(torch.where(band, refined, window))
    return coarse


# ---------------------------------------------------------------------------------------------
# Component cleaning


def drop_unclicked_components(probs: torch.Tensor, roi: Box, clicks: Sequence[Click], threshold: float) -> torch.Tensor:
    """Zero the mask's connected components (8-connected, inside ``roi``) that hold no positive click."""
    rmin, rmax, cmin, cmax = roi
    positives = [(c.row, c.col) for c in clicks if c.positive and rmin <= c.row <= rmax and cmin <= c.col <= cmax]
    if not positives:
        return probs
    mask = (probs[0, 0, rmin : rmax + 1, cmin : cmax + 1] > threshold).cpu().numpy().view(np.uint8)
    # Label only the mask's bounding box: the zoom-in ROI around an object is about twice its area.
    left, top, width, height = cv2.boundingRect(mask)
    if width == 0:
        return probs
    count, labels = cv2.connectedComponents(mask[top : top + height, left : left + width], connectivity=8)
    if count <= 2:
        return probs  # background and at most one component: nothing to drop
    top, left = top + rmin, left + cmin  # the box in image coordinates from here on
    inside = [(r - top, c - left) for r, c in positives if 0 <= r - top < height and 0 <= c - left < width]
    keep_ids = sorted({int(labels[r, c]) for r, c in inside} - {0})
    if not keep_ids:
        return probs  # no positive click is inside the mask: the network disagrees with the user; keep it all
    if len(keep_ids) == count - 1:
        return probs  # every component holds a positive click
    keep = np.zeros(count, np.float32)
    keep[0] = 1.0  # background pixels keep their (sub-threshold) probabilities
    keep[keep_ids] = 1.0
    cleaned = probs.clone()
    cleaned[0, 0, top : top + height, left : left + width].mul_(torch.from_numpy(keep[labels]).to(probs.device))
    return cleaned
