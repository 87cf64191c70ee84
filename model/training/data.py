"""Training data: dataset adapters, the reference augmentations, and the sample pipeline.

Supported layouts (detected from the folder content by :func:`open_train_source`):

* ``images/`` + ``masks/``: one object per mask, 0 = background, 1 = object, 255 = ignore
  (this project's ``../shared/datasets`` layout);
* ``images/`` + ``regions/``: 16-bit label maps, every non-zero id is one object; optionally a union
  of touching regions is used as the object. A folder with both (Clothing) gives both kinds;
* SBD: ``img/*.jpg`` + ``inst/*.mat`` (``GTinst.Segmentation``), restricted to ``train.txt`` when
  that list exists;
* COCO+LVIS in RITM's packed layout: ``<root>/train/{images/<id>.jpg, masks/<id>.pickle,
  hannotation.pickle}`` (or the ``train`` folder itself). ``masks/<id>.pickle`` holds
  ``(encoded_layers, objs_mapping)``: PNG-encoded label layers and, per object, ``(layer, id)``;
  ``hannotation.pickle`` maps image id -> ``{'num_instance_masks', 'hierarchy'}``. Both are read with
  a restricted unpickler that accepts only numpy arrays and builtin containers. Root objects are
  training objects; the "stuff" masks after ``num_instance_masks`` are added with ``stuff_prob``.

Every training sample is drawn from a global position ``g`` of an endless stream: the record is
``permutation(epoch)[g % n]`` and all randomness comes from ``numpy.random.default_rng([seed, g])``,
so a sample depends only on ``(seed, g)``: data workers, process count and resuming never change it.

Pipeline per sample (numpy/OpenCV, as the reference's albumentations chain): random resize
x``scale_range`` (times ``base_scale``), horizontal flip, pad to the crop, object-aware random crop
(keeps the chosen object in view), object merging (p 0.15, with a second visible object), brightness
/ contrast (p 0.75), RGB shift +-10 (p 0.75), then the multi-point click sampler. Ignore pixels (255)
never receive clicks; since the set criterion has no ignore mask, they are split in the target at the
middle of the ignore band (each ignore pixel takes the label of the nearer of object / background).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..images import read_label_map, read_rgb
from .click_sampler import MultiPointSampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
EVALUATION_ONLY = ("GrabCut", "Berkeley")
LAYOUTS_HELP = (
    "images/ + masks/ (0/1/255 = ignore), images/ + regions/ (16-bit label maps), "
    "SBD (img/ + inst/*.mat [+ train.txt]) or COCO+LVIS (train/images, train/masks/*.pickle, "
    "train/hannotation.pickle)"
)


class TrainDataError(ValueError):
    """A training data folder is missing or does not have a supported layout; the message says why."""


# ---------------------------------------------------------------------------------------------
# Reading


def read_unchanged(path: Path) -> np.ndarray:
    """The first channel of a mask / label image, as stored."""
    data = read_label_map(path)
    return data[..., 0] if data.ndim == 3 else data


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and numpy arrays only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global '{module}.{name}' in a data pickle")
        return getattr(importlib.import_module(module), name)


def safe_pickle_load(path: Path):
    """Load a COCO+LVIS annotation pickle without running code from it."""
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(io.BufferedReader(handle)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as error:
        raise TrainDataError(f"{path}: unreadable annotation pickle ({error})") from None


@dataclass
class AnnotatedImage:
    """An image with its objects: ``layers`` (H, W, L) int32 label layers, ``objects`` the selectable
    ``(layer, id)`` pairs, ``ignore`` (H, W) bool or ``None``."""

    image: np.ndarray
    layers: np.ndarray
    objects: list[tuple[int, int]]
    ignore: np.ndarray | None = None
    touching_union: bool = False


def _check_size(image: np.ndarray, labels: np.ndarray, path: Path) -> None:
    if image.shape[:2] != labels.shape[:2]:
        raise TrainDataError(f"{path}: label size {labels.shape[:2]} differs from its image size {image.shape[:2]}")


@dataclass(frozen=True)
class MaskRecord:
    """``masks/<name>.png`` (0 / 1 / 255 = ignore) with its image."""

    image_path: Path
    mask_path: Path

    def load(self, rng: np.random.Generator) -> AnnotatedImage:
        image = read_rgb(self.image_path)
        mask = read_unchanged(self.mask_path)
        _check_size(image, mask, self.mask_path)
        if mask.max() > 1 and not np.isin(mask, (0, 1, 255)).all():
            labels = (mask > 128).astype(np.int32)  # a 0/255 mask
            ignore = None
        else:
            labels = (mask == 1).astype(np.int32)
            ignore = mask == 255
        return AnnotatedImage(
            image, labels[..., None], [(0, 1)], ignore if ignore is not None and ignore.any() else None
        )


@dataclass(frozen=True)
class RegionRecord:
    """A 16-bit label map: every non-zero id is an object (touching regions may be united)."""

    image_path: Path
    regions_path: Path

    def load(self, rng: np.random.Generator) -> AnnotatedImage:
        image = read_rgb(self.image_path)
        labels = read_unchanged(self.regions_path).astype(np.int32)
        _check_size(image, labels, self.regions_path)
        ids = [int(i) for i in np.unique(labels) if i > 0]
        return AnnotatedImage(image, labels[..., None], [(0, i) for i in ids], None, touching_union=True)


@dataclass(frozen=True)
class SBDRecord:
    """SBD: ``inst/<id>.mat`` whose ``GTinst.Segmentation`` holds instance ids (255 = ignore)."""

    image_path: Path
    mat_path: Path

    def load(self, rng: np.random.Generator) -> AnnotatedImage:
        from scipy.io import loadmat

        image = read_rgb(self.image_path)
        try:
            labels = np.asarray(loadmat(str(self.mat_path))["GTinst"]["Segmentation"][0, 0]).astype(np.int32)
        except (KeyError, ValueError, IndexError, OSError, TypeError) as error:
            raise TrainDataError(f"{self.mat_path}: expected an SBD .mat with GTinst.Segmentation ({error})") from None
        _check_size(image, labels, self.mat_path)
        ignore = labels == 255
        labels[ignore] = 0
        ids = [int(i) for i in np.unique(labels) if i > 0]
        return AnnotatedImage(image, labels[..., None], [(0, i) for i in ids], ignore if ignore.any() else None)


@dataclass(frozen=True)
class CocoLvisRecord:
    """One image of RITM's packed COCO+LVIS annotations."""

    image_path: Path
    masks_path: Path
    num_instance_masks: int
    root_ids: tuple[int, ...]
    stuff_prob: float = 0.3

    def load(self, rng: np.random.Generator) -> AnnotatedImage:
        image = read_rgb(self.image_path)
        packed = safe_pickle_load(self.masks_path)
        try:
            encoded_layers, objs_mapping = packed
            layers = np.stack([cv2.imdecode(np.asarray(x, np.uint8), cv2.IMREAD_UNCHANGED) for x in encoded_layers], 2)
            mapping = [(int(layer), int(mask_id)) for layer, mask_id in objs_mapping]
        except (TypeError, ValueError, cv2.error) as error:
            raise TrainDataError(f"{self.masks_path}: expected (encoded_layers, objs_mapping) ({error})") from None
        layers = layers.astype(np.int32)
        _check_size(image, layers, self.masks_path)
        objects = [mapping[i] for i in self.root_ids if i < len(mapping)]
        stuff = mapping[self.num_instance_masks :]
        if stuff and rng.random() < self.stuff_prob:
            objects += stuff
        else:
            for layer, mask_id in stuff:
                plane = layers[:, :, layer]
                plane[plane == mask_id] = 0
        return AnnotatedImage(image, layers, objects)


Record = MaskRecord | RegionRecord | SBDRecord | CocoLvisRecord


@dataclass
class TrainSource:
    """The records of one data folder."""

    name: str
    root: Path
    records: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"TrainSource({self.name!r}, {len(self)} records)"


# ---------------------------------------------------------------------------------------------
# Layout detection


def _files(folder: Path, suffixes: Sequence[str], what: str) -> list[Path]:
    if not folder.is_dir():
        raise TrainDataError(f"{folder}: expected a folder of {what}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise TrainDataError(f"{folder}: expected {what}, found no {'/'.join(suffixes)} files")
    return files


def _pair_with_images(images_dir: Path, label_files: list[Path]) -> list[tuple[Path, Path]]:
    images = {p.stem: p for p in _files(images_dir, IMAGE_EXTENSIONS, "images")}
    pairs = []
    for label_path in label_files:
        image_path = images.get(label_path.stem)
        if image_path is None and label_path.stem[-1:].isalpha():
            image_path = images.get(label_path.stem[:-1])  # Berkeley-style "189011a" -> "189011"
        if image_path is None:
            raise TrainDataError(f"{label_path}: no image named {label_path.stem}.* in {images_dir}")
        pairs.append((image_path, label_path))
    return pairs


def _cocolvis_split(root: Path, split: str) -> Path | None:
    for candidate in (root / split, root):
        if (candidate / "hannotation.pickle").is_file():
            return candidate
    return None


def _open_cocolvis(split_dir: Path, name: str, stuff_prob: float) -> TrainSource:
    annotation = safe_pickle_load(split_dir / "hannotation.pickle")
    if not isinstance(annotation, dict):
        raise TrainDataError(f"{split_dir / 'hannotation.pickle'}: expected a dict image_id -> annotation")
    images_dir, masks_dir = split_dir / "images", split_dir / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise TrainDataError(f"{split_dir}: COCO+LVIS needs images/ and masks/ beside hannotation.pickle")
    source = TrainSource(name, split_dir)
    for image_id, info in sorted(annotation.items()):
        try:
            hierarchy = info["hierarchy"]
            num_instances = int(info["num_instance_masks"])
        except (KeyError, TypeError):
            raise TrainDataError(
                f"{split_dir}: annotation of {image_id!r} lacks hierarchy / num_instance_masks"
            ) from None
        roots = tuple(sorted(int(k) for k, v in hierarchy.items() if v is None or v.get("parent") is None))
        source.records.append(
            CocoLvisRecord(
                images_dir / f"{image_id}.jpg", masks_dir / f"{image_id}.pickle", num_instances, roots, stuff_prob
            )
        )
    return source


def open_train_source(
    root: str | Path,
    name: str | None = None,
    split: str = "train",
    stuff_prob: float = 0.3,
    allow_evaluation_sets: bool = False,
) -> TrainSource:
    """Open a training folder, detecting its layout (see the module docstring)."""
    root = Path(root)
    name = name or root.name
    if not root.is_dir():
        raise TrainDataError(f"training data {name!r}: folder {root} does not exist (expected {LAYOUTS_HELP})")
    if name in EVALUATION_ONLY and not allow_evaluation_sets:
        raise TrainDataError(f"{root}: {name} is an evaluation set; never train on it")

    cocolvis = _cocolvis_split(root, split)
    if cocolvis is not None:
        return _open_cocolvis(cocolvis, name, stuff_prob)
    if (root / "dataset" / "inst").is_dir():  # the SBD archive unpacks to benchmark_RELEASE/dataset
        root = root / "dataset"

    source = TrainSource(name, root)
    has = lambda folder: (root / folder).is_dir()  # noqa: E731
    if has("images") and has("masks"):
        pairs = _pair_with_images(root / "images", _files(root / "masks", (".png",), "mask PNGs"))
        source.records += [MaskRecord(i, m) for i, m in pairs]
    if has("images") and has("regions"):
        pairs = _pair_with_images(root / "images", _files(root / "regions", (".png",), "label-map PNGs"))
        source.records += [RegionRecord(i, r) for i, r in pairs]
    if has("img") and has("inst"):
        split_file = root / f"{split}.txt"
        if split_file.is_file():
            stems = [s.strip() for s in split_file.read_text().split() if s.strip()]
            mats = [root / "inst" / f"{s}.mat" for s in stems]
            missing = [m for m in mats if not m.is_file()]
            if missing:
                raise TrainDataError(f"{missing[0]}: listed in {split_file} but missing ({len(missing)} missing)")
        else:
            mats = _files(root / "inst", (".mat",), "SBD instance .mat files")
        source.records += [SBDRecord(i, m) for i, m in _pair_with_images(root / "img", mats)]
    if not source.records:
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir()) or ["no sub-folders"]
        raise TrainDataError(
            f"training data {name!r} at {root}: unknown layout, found {', '.join(found)}; expected {LAYOUTS_HELP}"
        )
    return source


# ---------------------------------------------------------------------------------------------
# Augmentation helpers


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (pixel-centre aligned) of any dtype and channel count."""
    h, w = array.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


def brightness_contrast(
    image: np.ndarray, rng: np.random.Generator, brightness=(-0.25, 0.25), contrast=(-0.15, 0.4)
) -> np.ndarray:
    """``image * (1 + c) + 255 * b`` with c, b uniform in the given ranges, clipped to uint8."""
    alpha = 1.0 + rng.uniform(*contrast)
    beta = 255.0 * rng.uniform(*brightness)
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def rgb_shift(image: np.ndarray, rng: np.random.Generator, limit: int = 10) -> np.ndarray:
    """Add an integer shift in [-limit, limit] to each channel, clipped to uint8."""
    shift = rng.integers(-limit, limit + 1, size=3).astype(np.int16)
    return np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def touching_neighbours(labels: np.ndarray, mask: np.ndarray) -> list[int]:
    """Ids (> 0) of the regions that touch ``mask`` (8-connectivity)."""
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
    return [int(i) for i in np.unique(labels[ring]) if i > 0]


def split_ignore(target: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Give every ignore pixel the label of the nearer of object / non-ignore background."""
    if not ignore.any():
        return target
    to_object = cv2.distanceTransform((~target).astype(np.uint8), cv2.DIST_L2, 3)
    to_background = cv2.distanceTransform((target | ignore).astype(np.uint8), cv2.DIST_L2, 3)
    resolved = target.copy()
    resolved[ignore] = to_object[ignore] < to_background[ignore]
    return resolved


# ---------------------------------------------------------------------------------------------
# The training dataset


@dataclass
class AugmentConfig:
    """Augmentation and object-selection settings (reference values)."""

    crop_size: int = 448
    scale_range: tuple[float, float] = (0.75, 1.40)
    base_scale: float = 1.0
    flip_prob: float = 0.5
    color_prob: float = 0.75
    shift_prob: float = 0.75
    merge_objects_prob: float = 0.15
    touching_union_prob: float = 0.25
    max_touching_regions: int = 3
    min_object_px: int = 80
    min_object_fraction: float = 0.001
    crop_tries: int = 10
    # Zoom-in crops: with this probability a sample is the object's box, expanded and resized to the crop
    # (anisotropically), as the predictor's zoom-in shows it to the network from the second click on. The
    # reference recipe has none (0.0); fine-tuning on images with small objects needs them.
    zoom_in_prob: float = 0.0
    zoom_in_expansion: tuple[float, float] = (1.2, 1.8)  # the predictor uses 1.4
    zoom_in_min_size: tuple[float, float] = (160.0, 240.0)  # image pixels; the predictor uses 200
    zoom_in_shift: float = 0.1  # box centre jitter, a fraction of the box side


class ClickTrainDataset(Dataset):
    """Endless stream of augmented training samples over one or more :class:`TrainSource`.

    ``dataset[g]`` is the sample at global stream position ``g`` (any non-negative int). It returns
    ``image`` (3, S, S) uint8, ``gt`` (1, S, S) float32 in {0, 1}, ``valid`` (1, S, S) bool (may
    receive clicks) and ``points`` (2N, 3) float32. ``len(dataset)`` is the epoch length (records).
    """

    def __init__(
        self,
        sources: Sequence[TrainSource],
        augment: AugmentConfig | None = None,
        sampler: MultiPointSampler | None = None,
        seed: int = 0,
    ) -> None:
        self.sources = list(sources)
        self.records = [record for source in self.sources for record in source.records]
        if not self.records:
            raise TrainDataError("no training records: every data folder was empty")
        self.augment = augment or AugmentConfig()
        self.sampler = sampler or MultiPointSampler()
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    @lru_cache(maxsize=4)  # noqa: B019 - one dataset per run: the cache pins it, and it lives as long anyway
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(len(self.records))

    def record_at(self, position: int):
        epoch, offset = divmod(position, len(self.records))
        return self.records[int(self.permutation(epoch)[offset])]

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(position)])
        record = self.record_at(int(position))
        for _ in range(20):
            sample = self._make_sample(record.load(rng), rng)
            if sample is not None:
                return sample
            record = self.records[int(rng.integers(len(self.records)))]  # no usable object: another record
        raise TrainDataError(f"could not build a training sample near stream position {position}")

    # -- pipeline -------------------------------------------------------------------------------

    def _selectable(self, annotated: AnnotatedImage) -> list[tuple[int, int]]:
        cfg = self.augment
        height, width = annotated.layers.shape[:2]
        min_area = max(cfg.min_object_px, cfg.min_object_fraction * height * width)
        areas = [np.bincount(annotated.layers[:, :, k].ravel()) for k in range(annotated.layers.shape[2])]
        return [(k, i) for k, i in annotated.objects if i < len(areas[k]) and areas[k][i] >= min_area]

    def _make_sample(self, annotated: AnnotatedImage, rng: np.random.Generator) -> dict[str, torch.Tensor] | None:
        cfg = self.augment
        objects = self._selectable(annotated)
        if not objects:
            return None
        layer, object_id = objects[rng.integers(len(objects))]
        plane = annotated.layers[:, :, layer]
        target = plane == object_id
        if annotated.touching_union and rng.random() < cfg.touching_union_prob:
            for _ in range(int(rng.integers(1, cfg.max_touching_regions))):
                neighbours = touching_neighbours(plane, target)
                if not neighbours:
                    break
                target |= plane == neighbours[rng.integers(len(neighbours))]

        image, layers, ignore = annotated.image, annotated.layers, annotated.ignore
        size = cfg.crop_size
        zoom_in = cfg.zoom_in_prob > 0 and rng.random() < cfg.zoom_in_prob  # no draw: the reference stream
        if zoom_in:  # the object's box, expanded, resized to the crop
            rmin, rmax, cmin, cmax = self._zoom_in_box(target, rng)
            window = (slice(rmin, rmax + 1), slice(cmin, cmax + 1))
            image, layers, target = image[window], layers[window], target[window]
            ignore = None if ignore is None else ignore[window]
            height = width = size
            interpolation = cv2.INTER_AREA if image.shape[0] * image.shape[1] > size * size else cv2.INTER_LINEAR
        else:  # the whole image, rescaled
            scale = cfg.base_scale * rng.uniform(*cfg.scale_range)
            height = max(1, int(round(image.shape[0] * scale)))
            width = max(1, int(round(image.shape[1] * scale)))
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)
        layers = resize_nearest(layers, height, width)
        target = resize_nearest(target, height, width)
        ignore = np.zeros((height, width), bool) if ignore is None else resize_nearest(ignore, height, width)
        if rng.random() < cfg.flip_prob:
            image, layers, target, ignore = image[:, ::-1], layers[:, ::-1], target[:, ::-1], ignore[:, ::-1]
        if not target.any():
            return None
        valid = ~ignore

        if not zoom_in:
            # Pad to the crop (centred, zeros; padding is background that never receives clicks).
            pad_h, pad_w = max(0, size - height), max(0, size - width)
            if pad_h or pad_w:
                pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
                image = np.pad(image, pads + ((0, 0),))
                layers = np.pad(layers, pads + ((0, 0),))
                target = np.pad(target, pads)
                ignore = np.pad(ignore, pads)
                valid = np.pad(valid, pads)

            top, left = self._object_crop(target, size, rng)
            window = (slice(top, top + size), slice(left, left + size))
            image, layers = image[window], layers[window]
            target, ignore, valid = target[window], ignore[window], valid[window]
        if target.sum() < min(cfg.min_object_px, 0.25 * target.size):
            return None

        parts = [target]
        if rng.random() < cfg.merge_objects_prob:
            extra = self._visible_other(layers, target, rng)
            if extra is not None:
                parts.append(extra)
        target = np.logical_or.reduce(parts)
        others = (layers > 0).any(axis=2) & ~target

        points = self.sampler.sample(parts, others, valid, rng)
        if points[0, 0] < 0:
            return None
        gt = split_ignore(target, ignore)
        if rng.random() < cfg.color_prob:
            image = brightness_contrast(image, rng)
        if rng.random() < cfg.shift_prob:
            image = rgb_shift(image, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "gt": torch.from_numpy(gt[None].astype(np.float32)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid[None])),
            "points": torch.from_numpy(points),
        }

    def _zoom_in_box(self, target: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Inclusive ``(rmin, rmax, cmin, cmax)``: the object's box, jittered, expanded and clamped like a zoom-in
        ROI."""
        cfg = self.augment
        rows = np.flatnonzero(target.any(axis=1))
        cols = np.flatnonzero(target.any(axis=0))
        box_h, box_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        ratio = rng.uniform(*cfg.zoom_in_expansion)
        min_size = rng.uniform(*cfg.zoom_in_min_size)
        half_h = 0.5 * max(ratio * box_h, min_size)
        half_w = 0.5 * max(ratio * box_w, min_size)
        centre_r = 0.5 * (rows[0] + rows[-1]) + cfg.zoom_in_shift * box_h * rng.uniform(-1, 1)
        centre_c = 0.5 * (cols[0] + cols[-1]) + cfg.zoom_in_shift * box_w * rng.uniform(-1, 1)
        height, width = target.shape
        return (
            max(0, int(round(centre_r - half_h))),
            min(height - 1, int(round(centre_r + half_h))),
            max(0, int(round(centre_c - half_w))),
            min(width - 1, int(round(centre_c + half_w))),
        )

    def _object_crop(self, target: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left of a crop that contains a random object pixel and most of the object when possible."""
        cfg = self.augment
        height, width = target.shape
        pixels = np.argwhere(target)
        area = len(pixels)
        wanted = min(0.5 * area, 0.05 * size * size)
        integral = np.pad(target.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        best, best_visible = (0, 0), -1
        for _ in range(cfg.crop_tries):
            row, col = pixels[rng.integers(area)]
            top = int(rng.integers(max(0, row - size + 1), min(row, height - size) + 1))
            left = int(rng.integers(max(0, col - size + 1), min(col, width - size) + 1))
            visible = (
                integral[top + size, left + size]
                - integral[top, left + size]
                - integral[top + size, left]
                + integral[top, left]
            )
            if visible >= wanted:
                return top, left
            if visible > best_visible:
                best, best_visible = (top, left), visible
        return best

    def _visible_other(self, layers: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A random other object with at least ``min_object_px`` pixels in the crop, for merging."""
        candidates = []
        for k in range(layers.shape[2]):
            plane = layers[:, :, k]
            counts = np.bincount(plane[~target].ravel())
            candidates += [(k, i) for i in np.nonzero(counts >= self.augment.min_object_px)[0] if i > 0]
        if not candidates:
            return None
        k, i = candidates[rng.integers(len(candidates))]
        return (layers[:, :, k] == i) & ~target


class StreamSampler(Sampler[int]):
    """Endless global stream positions for one process: ``start*world + rank, (start+1)*world + rank, ...``.

    Plays the role of ``DistributedSampler`` (each rank sees a disjoint shard) but is infinite and can
    start mid-stream, which makes resuming exact: after ``s`` steps of batch ``b`` a rank resumes at
    ``start = s * b``.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        self.rank, self.world_size, self.start = rank, world_size, start

    def __iter__(self):
        position = self.start
        while True:
            yield position * self.world_size + self.rank
            position += 1


def open_train_sources(
    paths: Sequence[str | Path], allow_evaluation_sets: bool = False, stuff_prob: float = 0.3
) -> list[TrainSource]:
    """Open several training folders (see :func:`open_train_source`)."""
    return [open_train_source(p, allow_evaluation_sets=allow_evaluation_sets, stuff_prob=stuff_prob) for p in paths]


# ---------------------------------------------------------------------------------------------
# Validation split held out of the training data


DEFAULT_HOLDOUT_FRACTION = 0.1  # share of a training folder's objects kept for validation (--holdout)


def in_validation_split(source: str, mask_stem: str, fraction: float) -> bool:
    """Whether the object ``masks/<mask_stem>.png`` of folder ``source`` is held out for validation.

    A hash of the name, not a random draw: the split is the same in every run, on every machine, and
    for the training data reader and the evaluation reader alike.
    """
    digest = hashlib.sha1(f"{source}/{mask_stem}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def hold_out_validation(source: TrainSource, fraction: float) -> TrainSource:
    """``source`` without its validation share (only ``images/`` + ``masks/`` records are split)."""
    if fraction <= 0:
        return source
    kept = [
        r
        for r in source.records
        if not (isinstance(r, MaskRecord) and in_validation_split(source.name, r.mask_path.stem, fraction))
    ]
    if not any(isinstance(r, MaskRecord) for r in source.records):
        raise TrainDataError(f"{source.root}: a validation split needs an images/ + masks/ folder")
    return TrainSource(source.name, source.root, kept)
