"""The stateful per-image predictor an annotation tool holds.

``Predictor`` reproduces the reference evaluation predictor by default: zoom-in from the second
click (``skip_clicks=-1``), horizontal-flip test-time augmentation averaged on logits, the previous
probability map fed back as the fourth input channel, and 0.49 as the mask threshold.

    predictor = Predictor(load_model(STARTER_WEIGHTS))
    predictor.set_image(rgb_uint8)
    predictor.add_click(120, 200, positive=True)
    mask, probs, score = predictor.prediction()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import state_codec
from .box_prompt import DEFAULT_BOX_STRATEGY, BoxPrompt, BoxStrategy, box_from_corners, clip_to_box, inner_click
from .device import autocast, resolve_device, resolve_dtype
from .interactive import Prediction, prediction_from
from .modeling.adaptiveclick import AdaptiveClick
from .refine import Refinement, drop_unclicked_components, guided_upsample
from .runtime import check_runtime, is_exported
from .zoom_in import Box, Click, ZoomIn, place_on_zeros

__all__ = ["Click", "Predictor", "PredictorState", "to_rgb_uint8"]


@dataclass
class PredictorState:
    """Everything that determines the next prediction: clicks, previous map, zoom ROI and the box prompt (the
    first interaction when there is one; ``clicks`` are the user's clicks after it)."""

    clicks: tuple[Click, ...] = ()
    prev_probs: torch.Tensor | None = None  # (1, 1, H, W) float32, on the predictor's device
    roi: Box | None = None
    history: tuple[PredictorState, ...] = field(default=(), repr=False)
    # The network's low-resolution output that prev_probs was upsampled from (what export_state stores).
    logits: torch.Tensor | None = field(default=None, repr=False)
    box: BoxPrompt | None = None

    @property
    def probs(self) -> np.ndarray | None:
        return None if self.prev_probs is None else self.prev_probs[0, 0].float().cpu().numpy()


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Bring grayscale, RGBA, 16-bit or float [0, 1] images to HxWx3 uint8 RGB."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.dtype == np.uint16:
        image = ((image.astype(np.float32) / 257.0) + 0.5).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float in [0, 1]")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


class Predictor:
    """Click-by-click probability maps for one image at a time.

    Args:
        model: an :class:`AdaptiveClick` network (moved to ``device``, put in eval mode).
        device: ``None``/``"auto"`` picks CUDA when available.
        dtype: ``fp32``, ``bf16`` or ``fp16`` (autocast; the deformable attention stays fp32).
        flip: horizontal-flip test-time augmentation.
        zoom_in: crop around the object from the second click; off = always the whole image.
        target_size: network input size (default: the model's native size, e.g. 448; 672 for DAVIS).
        threshold: probability threshold of :attr:`mask`.
        sampler: deformable-attention kernel, see :meth:`AdaptiveClick.set_deformable_sampler`; the
            default ``"auto"`` keeps fp32 reference-exact and uses the faster gather kernel for bf16 on
            the CPU; ``"gather"`` also speeds up fp32 at the cost of bit-exactness (~1e-6).
        refine: inference-time refinement, a :class:`~model.refine.Refinement` or its spec string
            (``"guided,clean"``, ``"cfr2"``); ``None``/``"none"`` is the reference behaviour.
        box_strategy: how :meth:`set_box` turns a box into network input (default: the measured choice).
        runtime: how the network runs (:mod:`model.runtime`): ``"torch"`` is the reference's arithmetic,
            ``"fast"`` the fused attention and the gather sampler (it overrides ``sampler``); ``"onnx"``,
            ``"onnx-int8"`` and ``"openvino"`` an exported graph (:mod:`model.export_runtime`, CPU, fp32).
    """

    def __init__(
        self,
        model: AdaptiveClick,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
        flip: bool = True,
        zoom_in: bool = True,
        target_size: int | tuple[int, int] | None = None,
        threshold: float = 0.49,
        sampler: str = "auto",
        refine: Refinement | str | None = None,
        box_strategy: BoxStrategy = DEFAULT_BOX_STRATEGY,
        runtime: str = "torch",
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        if target_size is None:
            target_size = self.model.native_image_size
        if isinstance(target_size, int):
            target_size = (target_size, target_size)
        self.model.set_image_size(tuple(target_size))  # validates the size early
        self.model.set_deformable_sampler(sampler)  # validates the name early
        self.sampler = sampler
        self.runtime = check_runtime(runtime)
        self._exported = None
        if is_exported(self.runtime):
            if self.device.type != "cpu" or self.dtype != torch.float32:
                raise ValueError(f"the {self.runtime} runtime runs fp32 on the CPU, not {dtype} on {self.device}")
            from .export_runtime import exported_network

            # Built (or read from the cache) now, so that loading the model pays the export, not the first click.
            self._exported = exported_network(self.model, self.runtime, 2 if flip else 1, target_size)
        self.flip = flip
        self.use_zoom_in = zoom_in
        self.zoom = ZoomIn(target_size=tuple(target_size))
        self.threshold = threshold
        self.refine = Refinement.parse(refine)
        self.box_strategy = box_strategy
        self._image: torch.Tensor | None = None  # (1, 3, H, W) in [0, 1]
        self._grey: torch.Tensor | None = None  # (1, 1, H, W): the guide of edge-aware upsampling
        self._rgb: np.ndarray | None = None
        self._state = PredictorState()
        # The host copy of the current map: add_click returns it and prediction() thresholds it, one device->host
        # copy per click (8 MB at 2 MP on CUDA), not one per reader.
        self._host_probs: tuple[PredictorState | None, np.ndarray | None] = (None, None)

    # -- image and state --------------------------------------------------------------------

    def set_image(self, image: np.ndarray) -> None:
        """Set the image (HxWx3 uint8 RGB; grayscale, RGBA, 16-bit and float are converted) and forget all clicks."""
        rgb = to_rgb_uint8(image)
        if not rgb.flags.writeable:
            rgb = rgb.copy()
        self._rgb = rgb
        tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
        self._image = tensor.unsqueeze(0).to(self.device)
        self._grey = self._image.mean(1, keepdim=True) if self.refine.guided else None
        self._state = PredictorState()

    @property
    def image(self) -> np.ndarray | None:
        """The current image as HxWx3 uint8 RGB."""
        return self._rgb

    @property
    def image_size(self) -> tuple[int, int]:
        self._require_image()
        return int(self._image.shape[-2]), int(self._image.shape[-1])

    @property
    def clicks(self) -> list[Click]:
        return list(self._state.clicks)

    @property
    def probs(self) -> np.ndarray | None:
        """Probability map after the last click (float32 HxW), or ``None`` before any click."""
        state, probs = self._host_probs
        if state is not self._state:
            probs = self._state.probs
            self._host_probs = (self._state, probs)
        return probs

    @property
    def mask(self) -> np.ndarray | None:
        probs = self.probs
        return None if probs is None else probs > self.threshold

    def prediction(self) -> Prediction:
        """Mask (``probs > threshold``), probabilities and score after the last click."""
        probs = self.probs
        if probs is None:
            raise ValueError("no click yet: call add_click() first")
        return prediction_from(probs, self.threshold)

    @property
    def roi(self) -> Box | None:
        return self._state.roi

    @property
    def box(self) -> Box | None:
        """The box prompt ``(rmin, rmax, cmin, cmax)`` the current object started from, if any."""
        return None if self._state.box is None else self._state.box.box

    def get_state(self) -> PredictorState:
        """A snapshot to restore later with :meth:`set_state` (tensors are shared, never modified)."""
        return self._state

    def set_state(self, state: PredictorState) -> None:
        self._require_image()
        if state.prev_probs is not None and tuple(state.prev_probs.shape[-2:]) != self.image_size:
            raise ValueError(f"state is for a {tuple(state.prev_probs.shape[-2:])} image, not {self.image_size}")
        self._state = state

    @property
    def state_tag(self) -> str:
        """Fingerprint of the settings that shape a state (a state only continues under the same ones)."""
        settings = (self.flip, self.use_zoom_in, self.zoom, self.refine, self.threshold, str(self.dtype), self.sampler)
        # The reference runtime keeps the tag that states were stored under before there were runtimes.
        return repr(settings if self.runtime == "torch" else (*settings, self.runtime))

    def export_state(self, state: PredictorState | None = None) -> bytes:
        """``state`` (default: the current one) as bytes for :meth:`import_state` in another process."""
        state = self._state if state is None else state
        if state.prev_probs is None or state.roi is None or not (state.clicks or state.box):
            raise ValueError("only a state after a click or a box can be exported")
        # The smaller of what the map is made from (the logits) and the map itself; both are float32.
        use_logits = state.logits is not None and state.logits.numel() < state.prev_probs.numel()
        source = state.logits if use_logits else state.prev_probs
        array = source.detach().float().cpu().numpy()
        clicks = tuple((int(c.row), int(c.col), bool(c.positive)) for c in state.clicks)
        hw = tuple(int(v) for v in state.prev_probs.shape[-2:])
        box = None
        if state.box is not None:
            prompt = state.box
            box_clicks = tuple((int(c.row), int(c.col), bool(c.positive)) for c in prompt.clicks)
            box = state_codec.BoxParts(prompt.box, box_clicks, prompt.roi, prompt.clip)
        parts = state_codec.StateParts(clicks, state.roi, hw, array, "logits" if use_logits else "probs", box)
        return state_codec.encode(parts, self.state_tag)

    @torch.inference_mode()
    def import_state(self, data: bytes) -> PredictorState:
        """The state :meth:`export_state` wrote, for this image: the map is recomputed from the stored network
        output exactly as :meth:`add_click` computed it (bit-for-bit on the same device kind). It carries no
        undo history. Raises :class:`model.state_codec.StateFormatError` for blobs of other settings or sizes."""
        self._require_image()
        parts = state_codec.decode(data, self.state_tag)
        if parts.image_hw != self.image_size:
            raise state_codec.StateFormatError(f"state is for a {parts.image_hw} image, not {self.image_size}")
        rmin, rmax, cmin, cmax = parts.roi
        if not (0 <= rmin <= rmax < parts.image_hw[0] and 0 <= cmin <= cmax < parts.image_hw[1]):
            raise state_codec.StateFormatError(f"state ROI {parts.roi} is outside the image")
        array = torch.from_numpy(parts.array.copy()).to(self.device)
        if array.dim() != 4 or array.shape[:2] != (1, 1):
            raise state_codec.StateFormatError(f"state array has shape {tuple(array.shape)}, not (1, 1, h, w)")
        clicks = tuple(Click(r, c, p) for r, c, p in parts.clicks)
        prompt = None
        if parts.box is not None:
            for name, box in (("box", parts.box.box), ("box ROI", parts.box.roi), ("box clip", parts.box.clip)):
                if box is not None and not (
                    0 <= box[0] <= box[1] < parts.image_hw[0] and 0 <= box[2] <= box[3] < parts.image_hw[1]
                ):
                    raise state_codec.StateFormatError(f"state {name} {box} is outside the image")
            box_clicks = tuple(Click(r, c, p) for r, c, p in parts.box.clicks)
            prompt = BoxPrompt(parts.box.box, box_clicks, parts.box.roi, parts.box.clip)
        if parts.kind == "probs":
            if tuple(array.shape[-2:]) != self.image_size:
                raise state_codec.StateFormatError("stored map does not have the image's size")
            return PredictorState(clicks, array, parts.roi, (), None, prompt)
        probs = self._finish(self._upsample(array, parts.roi), parts.roi, clicks, prompt)
        return PredictorState(clicks, probs, parts.roi, (), array, prompt)

    def reset(self) -> None:
        """Forget the clicks and the box; keep the image."""
        self._state = PredictorState()

    def undo(self) -> np.ndarray | None:
        """Remove the last click (or the box); returns the map after what remains (``None`` if nothing)."""
        if not self._state.clicks and self._state.box is None:
            raise ValueError("there is no click to undo")
        self._state = self._state.history[-1]
        return self.probs

    # -- prediction -------------------------------------------------------------------------

    def add_click(self, row: float, col: float, positive: bool = True) -> np.ndarray:
        """Add a click at pixel (row, col) and return the new full-resolution probability map."""
        return self.add_clicks([(row, col, positive)])

    def add_clicks(self, clicks: Sequence[tuple[float, float, bool]]) -> np.ndarray:
        """Add several ``(row, col, positive)`` clicks in one forward and return the new map.

        The network sees them together, with the map from before them: a burst of clicks costs one forward
        instead of one each (slightly different from adding them one by one, which feeds each click's map to
        the next). One click is exactly :meth:`add_click`."""
        self._require_image()
        if not clicks:
            raise ValueError("no clicks given: at least one click is needed for a prediction")
        height, width = self.image_size
        new = []
        for row, col, positive in clicks:
            if not (np.isfinite(row) and np.isfinite(col)):
                raise ValueError(f"click ({row}, {col}) is not a finite coordinate")
            if not (0 <= row < height and 0 <= col < width):
                raise ValueError(f"click (row={row}, col={col}) is outside the {height}x{width} image")
            new.append(Click(int(row), int(col), bool(positive)))
        self._state = self._predict(self._state.clicks + tuple(new), self._state.box)
        return self.probs

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Start a new object from a box (left/top edges ``x0, y0``, right/bottom edges ``x1, y1`` in pixels, see
        :func:`model.box_prompt.box_from_corners`) and return its probability map; clicks added after it refine
        the same object. Forgets earlier clicks, like :meth:`reset`."""
        self._require_image()
        box = box_from_corners(x0, y0, x1, y1, self.image_size)
        strategy = self.box_strategy
        prompt = strategy.prompt(box, self.image_size)
        self.reset()
        prior = strategy.prior_map(box, self.image_size, self.device)
        state = self._predict((), prompt, prior)
        if strategy.second_look:
            click = inner_click(state.probs, box, self.threshold) if strategy.click == "inner" else None
            if click is not None:
                # The second look clicks where the first guess is most surely object, as a user would.
                prompt = replace(prompt, clicks=(click,) + prompt.clicks[1:])
            state = self._predict((), prompt, state.prev_probs if strategy.feedback else prior)
        self._state = state
        return self.probs

    def set_previous_mask(self, mask: np.ndarray) -> None:
        """Start a new object from an existing mask (an accepted region being corrected): forget clicks and box;
        the mask (HxW bool, or probabilities in [0, 1]) becomes the previous-mask input of the next click and the
        zoom-in's first ROI, as if earlier clicks had produced it. :meth:`prediction` returns it until a click."""
        self._require_image()
        mask = np.asarray(mask)
        if mask.shape != self.image_size:
            raise ValueError(f"the mask is {mask.shape}, the image {self.image_size}")
        probs = np.clip(mask.astype(np.float32), 0.0, 1.0)
        if not np.isfinite(probs).all():
            raise ValueError("the mask holds NaN or infinite values")
        self._state = PredictorState(prev_probs=torch.from_numpy(probs)[None, None].to(self.device))

    def predict(self, clicks: list[Click] | list[tuple[float, float, bool]]) -> np.ndarray:
        """Replay a whole click sequence from scratch (each click sees the previous map)."""
        if not clicks:
            raise ValueError("no clicks given: at least one click is needed for a prediction")
        self.reset()
        for click in clicks:
            row, col, positive = (click.row, click.col, click.positive) if isinstance(click, Click) else click
            self.add_click(row, col, positive)
        return self.probs

    def _require_image(self) -> None:
        if self._image is None:
            raise ValueError("no image set: call set_image() first")

    @torch.inference_mode()
    def _predict(
        self, clicks: tuple[Click, ...], box: BoxPrompt | None = None, prior: torch.Tensor | None = None
    ) -> PredictorState:
        """The state after the user's ``clicks`` (after ``box`` when given); ``prior``: the previous map of the
        box-only prediction, which runs on the box's ROI."""
        previous = self._state
        height, width = self.image_size
        user_clicks = clicks
        if box is not None:
            clicks = box.clicks + clicks  # the network sees the box's clicks first, as the first interaction
        prev_probs = previous.prev_probs if prior is None else prior
        if prev_probs is None:
            prev_probs = torch.zeros((1, 1, height, width), device=self.device)

        if box is not None and not user_clicks:
            roi = box.roi
        elif self.use_zoom_in:
            prev_np = None if previous.prev_probs is None else previous.probs
            roi, _ = self.zoom.next_roi(previous.roi, prev_np, clicks, (height, width))
        else:
            roi = (0, height - 1, 0, width - 1)
        probs, logits = self._forward(prev_probs, clicks, roi)
        refine = self.refine
        for _ in range(refine.cascade_steps):
            again, logits = self._forward(probs, clicks, roi)
            before, after = probs > self.threshold, again > self.threshold
            probs = again
            if refine.cascade_tol and int((before ^ after).sum()) < refine.cascade_tol * max(1, int(before.sum())):
                break
        probs = self._finish(probs, roi, user_clicks, box)
        return PredictorState(user_clicks, probs, roi, previous.history + (previous,), logits, box)

    def _finish(self, probs: torch.Tensor, roi: Box, clicks: tuple[Click, ...], box: BoxPrompt | None) -> torch.Tensor:
        """The map's last steps after the network (also on import): the box clip, then dropping unclicked blobs."""
        if box is not None:
            probs = clip_to_box(probs, box, clicks)
            clicks = box.clicks + clicks
        if self.refine.clean:
            probs = drop_unclicked_components(probs, roi, clicks, self.threshold)
        return probs

    def _forward(
        self, prev_probs: torch.Tensor, clicks: tuple[Click, ...], roi: Box
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call (with its flip twin) on the ROI: the full-size (1, 1, H, W) probability map and the
        network's (1, 1, h, w) logits it was made from."""
        # Crop image and previous map separately: concatenating them at full resolution first would copy 4 x H x W
        # floats every click (32 MB at 2 MP) for the same result.
        image_crop = self.zoom.crop(self._image, roi)
        net_input = torch.cat([image_crop, self.zoom.crop(prev_probs, roi)], dim=1)
        net_clicks = self.zoom.transform_clicks(clicks, roi)

        batch_clicks = [net_clicks]
        if self.flip:
            net_input = torch.cat([net_input, net_input.flip(-1)], dim=0)
            last_col = net_input.shape[-1] - 1
            batch_clicks.append([Click(c.row, last_col - c.col, c.positive) for c in net_clicks])
        points = clicks_to_points(batch_clicks, self.device)

        if self._exported is not None:
            logits = self._exported(net_input, points)
        else:
            self.model.set_image_size(self.zoom.target_size)
            # The model may be shared with predictors of other settings.
            fast = self.runtime == "fast"
            self.model.set_deformable_sampler("gather" if fast else self.sampler)
            self.model.set_fused_attention(fast)
            with autocast(self.device, self.dtype):
                logits = self.model(net_input, points)["instances"].float()
        if self.flip:
            logits = 0.5 * (logits[:1] + logits[1:].flip(-1))
        return self._upsample(logits, roi, image_crop), logits

    def _upsample(self, logits: torch.Tensor, roi: Box, image_crop: torch.Tensor | None = None) -> torch.Tensor:
        """The network's logits on ``roi`` -> the full-size probability map (edge-aware when refine has guided).
        ``image_crop``: the ROI's image at the network's input size, when the caller has it (else recropped)."""
        height, width = self.image_size
        if not self.refine.guided:
            return self.zoom.paste(torch.sigmoid(logits), roi, (height, width))
        rmin, rmax, cmin, cmax = roi
        if image_crop is None:
            image_crop = self.zoom.crop(self._image, roi)
        guide_low = image_crop.mean(1, keepdim=True)
        guide_full = self._grey[:, :, rmin : rmax + 1, cmin : cmax + 1]
        refined = guided_upsample(
            torch.sigmoid(logits), guide_low, guide_full, self.refine.guided_radius, self.refine.guided_eps
        )
        return place_on_zeros(refined, roi, (height, width))


def clicks_to_points(batch_clicks: list[list[Click]], device: torch.device) -> torch.Tensor:
    """Clicks per batch element -> (B, 2N, 3) float64 ``(row, col, index)``: N positives then N negatives,
    padded with -1; ``index`` is the click's position in its sequence."""
    num = max(
        1, max(max(sum(c.positive for c in clicks), sum(not c.positive for c in clicks)) for clicks in batch_clicks)
    )
    rows = []
    for clicks in batch_clicks:
        positives = [(c.row, c.col, i) for i, c in enumerate(clicks) if c.positive]
        negatives = [(c.row, c.col, i) for i, c in enumerate(clicks) if not c.positive]
        padding = (-1, -1, -1)
        rows.append(positives + [padding] * (num - len(positives)) + negatives + [padding] * (num - len(negatives)))
    return torch.tensor(rows, dtype=torch.float64, device=device)
