"""Readers for interactive-segmentation evaluation sets.

Every reader yields `Sample(name, image, gt)`: `image` is HxWx3 uint8 RGB and `gt` is HxW int8 with
1 = object, 0 = background and -1 = ignore. Supported layouts (detected from the sub-folders):

* `images/` + `masks/`: this project's layout (0 / 1 / 255 = ignore) and the downloaded Berkeley
  layout (0 / 255 masks, possibly 3-channel, > 128 = object). A mask named `189011a.png` belongs to
  `images/189011.*` when there is no `images/189011a.*`.
* `images/` + `regions/`: 16-bit label maps, every non-zero label is one instance.
* `data_GT/` + `boundary_GT/`: downloaded GrabCut (128 = ignore, > 128 = object).
* `img/` + `gt/`: DAVIS and COCO_MVal (any non-zero = object).
* `img/` + `inst/` + `val.txt`: SBD (`GTinst.Segmentation` in `.mat` files, one instance per id).
* `JPEGImages/` + `SegmentationObject/` + `ImageSets/Segmentation/val.txt`: PascalVOC
  (palette index = instance id, 255 = ignore).
* `raw/` + `mitochondria/`: ssTEM (instances = 4-connected components of the mask).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ..images import read_label_map, read_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

LAYOUTS_HELP = (
    "images/ + masks/ (0/1/255 = ignore, or 0/255), images/ + regions/ (16-bit label maps), "
    "data_GT/ + boundary_GT/ (GrabCut), img/ + gt/ (DAVIS, COCO_MVal), img/ + inst/ + val.txt (SBD), "
    "JPEGImages/ + SegmentationObject/ + ImageSets/Segmentation/val.txt (PascalVOC) "
    "or raw/ + mitochondria/ (ssTEM)"
)


class Sample(NamedTuple):
    name: str
    image: np.ndarray
    gt: np.ndarray


class DatasetError(ValueError):
    """A dataset folder exists but does not have the expected content."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder does not exist."""


def _list_files(folder: Path, what: str, suffixes: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: expected a folder of {what}")
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in suffixes)
    if not files:
        raise DatasetError(f"{folder}: expected {what}, found no {'/'.join(suffixes)} files")
    return files


def _first_channel(raw: np.ndarray) -> np.ndarray:
    return raw[..., 0] if raw.ndim == 3 else raw


def decode_mask(raw: np.ndarray) -> np.ndarray:
    """0/1/255 masks (this project's layout) keep 255 as ignore; any other mask is > 128 = object."""
    raw = _first_channel(raw)
    values = np.unique(raw)
    gt = np.zeros(raw.shape, dtype=np.int8)
    if raw.dtype == np.uint8 and 1 in values and np.isin(values, (0, 1, 255)).all():
        gt[raw == 1] = 1
        gt[raw == 255] = -1
    else:
        gt[raw > 128] = 1
    return gt


def decode_grabcut_mask(raw: np.ndarray) -> np.ndarray:
    """Downloaded GrabCut `boundary_GT`: 128 = unlabelled band (ignore), > 128 = object."""
    raw = _first_channel(raw)
    gt = np.zeros(raw.shape, dtype=np.int8)
    gt[raw == 128] = -1
    gt[raw > 128] = 1
    return gt


def decode_nonzero_mask(raw: np.ndarray) -> np.ndarray:
    """DAVIS / COCO_MVal: any non-zero value in any channel = object."""
    raw = raw.max(axis=2) if raw.ndim == 3 else raw
    return (raw > 0).astype(np.int8)


class InteractiveDataset:
    """A sized sequence of samples; subclasses fill `items` and implement `_load`."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = Path(root)
        self.items: list = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        return self._load(self.items[index])

    def __iter__(self) -> Iterator[Sample]:
        for item in self.items:
            yield self._load(item)

    def _load(self, item) -> Sample:
        raise NotImplementedError

    def _check_not_empty(self) -> None:
        if not self.items:
            raise DatasetError(f"{self.root}: no instances found (expected {LAYOUTS_HELP})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root='{self.root}', instances={len(self)})"


def _check_same_size(image: np.ndarray, gt: np.ndarray, path: Path) -> None:
    if image.shape[:2] != gt.shape:
        raise DatasetError(f"{path}: mask size {gt.shape} differs from its image size {image.shape[:2]}")


class MaskFolderDataset(InteractiveDataset):
    """One binary mask per instance in `masks_dir`, its image in `images_dir` (matched by name)."""

    def __init__(
        self,
        root: str | Path,
        images_dir: str = "images",
        masks_dir: str = "masks",
        decode: Callable[[np.ndarray], np.ndarray] = decode_mask,
        name: str | None = None,
    ) -> None:
        super().__init__(name or Path(root).name, Path(root))
        self.decode = decode
        images_path, masks_path = self.root / images_dir, self.root / masks_dir
        images_by_stem = {path.stem: path for path in _list_files(images_path, "images")}
        for mask_path in _list_files(masks_path, "mask images"):
            image_path = _match_image(mask_path.stem, images_by_stem)
            if image_path is None:
                raise DatasetError(
                    f"{mask_path}: no image named {mask_path.stem}.* (or without a trailing letter) in {images_path}"
                )
            self.items.append((mask_path.stem, image_path, mask_path))
        self._check_not_empty()

    def _load(self, item) -> Sample:
        name, image_path, mask_path = item
        image = read_rgb(image_path)
        gt = self.decode(read_label_map(mask_path))
        _check_same_size(image, gt, mask_path)
        return Sample(name, image, gt)


def _match_image(mask_stem: str, images_by_stem: dict[str, Path]) -> Path | None:
    if mask_stem in images_by_stem:
        return images_by_stem[mask_stem]
    if len(mask_stem) > 1 and mask_stem[-1].isalpha():
        return images_by_stem.get(mask_stem[:-1])
    return None


class LabelMapDataset(InteractiveDataset):
    """Label maps where every non-zero id (except `ignore_value`) is one instance."""

    def __init__(
        self,
        name: str,
        root: Path,
        pairs: Sequence[tuple[str, Path, Path]],
        read_labels: Callable[[Path], np.ndarray],
        ignore_value: int | None = None,
    ) -> None:
        super().__init__(name, root)
        self.read_labels = read_labels
        self.ignore_value = ignore_value
        for stem, image_path, labels_path in pairs:
            ids = [int(i) for i in np.unique(read_labels(labels_path)) if i != 0 and i != ignore_value]
            suffix = len(ids) > 1
            for instance_id in ids:
                name = f"{stem}#{instance_id}" if suffix else stem
                self.items.append((name, image_path, labels_path, instance_id))
        self._check_not_empty()

    def _load(self, item) -> Sample:
        name, image_path, labels_path, instance_id = item
        image = read_rgb(image_path)
        labels = self.read_labels(labels_path)
        gt = (labels == instance_id).astype(np.int8)
        if self.ignore_value is not None:
            gt[labels == self.ignore_value] = -1
        _check_same_size(image, gt, labels_path)
        return Sample(name, image, gt)


def _read_region_map(path: Path) -> np.ndarray:
    labels = read_label_map(path)
    if labels.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel label map, got shape {labels.shape}")
    return labels


def _read_sbd_instances(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(str(path))["GTinst"]["Segmentation"][0, 0]).astype(np.int32)
    except (KeyError, ValueError, IndexError, OSError) as error:
        raise DatasetError(f"{path}: expected an SBD .mat file with GTinst.Segmentation ({error})") from error


def _read_voc_instances(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "P" or image.mode == "L":
            return np.asarray(image).astype(np.int32)
    return _first_channel(read_label_map(path)).astype(np.int32)


def _read_sstem_instances(path: Path) -> np.ndarray:
    mask = (_first_channel(read_label_map(path)) > 0).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=4)
    return labels


def _pairs_by_stem(
    images_path: Path, labels_path: Path, stems: Sequence[str] | None, label_suffix: str
) -> list[tuple[str, Path, Path]]:
    images_by_stem = {path.stem: path for path in _list_files(images_path, "images")}
    if stems is None:
        stems = [path.stem for path in _list_files(labels_path, "label maps", (label_suffix,))]
    pairs = []
    for stem in stems:
        labels_file = labels_path / f"{stem}{label_suffix}"
        if stem not in images_by_stem:
            raise DatasetError(f"{images_path}: missing image {stem}.* (listed or labelled instance)")
        if not labels_file.is_file():
            raise DatasetError(f"{labels_file}: missing label file for image {images_by_stem[stem]}")
        pairs.append((stem, images_by_stem[stem], labels_file))
    return pairs


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: expected the split list (one image id per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def open_dataset(root: str | Path, name: str | None = None, split: str = "val") -> InteractiveDataset:
    """Open the dataset at `root`, detecting its layout from the sub-folders."""
    root = Path(root)
    name = name or root.name
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: folder {root} does not exist (expected {LAYOUTS_HELP})")

    def has(*folders: str) -> bool:
        return all((root / folder).is_dir() for folder in folders)

    if has("data_GT", "boundary_GT"):
        return MaskFolderDataset(root, "data_GT", "boundary_GT", decode_grabcut_mask, name)
    if has("images", "masks"):
        return MaskFolderDataset(root, "images", "masks", decode_mask, name)
    if has("images", "regions"):
        pairs = _pairs_by_stem(root / "images", root / "regions", None, ".png")
        return LabelMapDataset(name, root, pairs, _read_region_map)
    if has("img", "gt"):
        return MaskFolderDataset(root, "img", "gt", decode_nonzero_mask, name)
    if has("img", "inst"):
        stems = _read_split(root / f"{split}.txt")
        pairs = _pairs_by_stem(root / "img", root / "inst", stems, ".mat")
        return LabelMapDataset(name, root, pairs, _read_sbd_instances)
    if has("JPEGImages", "SegmentationObject"):
        stems = _read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        pairs = _pairs_by_stem(root / "JPEGImages", root / "SegmentationObject", stems, ".png")
        return LabelMapDataset(name, root, pairs, _read_voc_instances, ignore_value=255)
    if has("raw", "mitochondria"):
        pairs = _pairs_by_stem(root / "raw", root / "mitochondria", None, ".png")
        return LabelMapDataset(name, root, pairs, _read_sstem_instances)
    for nested in ("VOCdevkit/VOC2012", "VOC2012", "stack1"):
        if (root / nested).is_dir():
            return open_dataset(root / nested, name, split)

    found = sorted(path.name + "/" for path in root.iterdir() if path.is_dir()) or ["no sub-folders"]
    raise DatasetError(f"dataset {name!r} at {root}: unknown layout, found {', '.join(found)}; expected {LAYOUTS_HELP}")


def default_data_root() -> Path:
    """`<repo>/../shared/datasets` (the command line's `--data-root` / `$ADAPTIVECLICK_DATA` override it)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def resolve_dataset_path(name: str, data_root: str | Path | None = None) -> Path:
    """Find `name` under the data root, accepting `COCO_MVal` for `COCO-MVal` and the reverse."""
    data_root = Path(data_root) if data_root is not None else default_data_root()
    candidates = [data_root / name, data_root / name.replace("_", "-"), data_root / name.replace("-", "_")]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if Path(name).is_dir():
        return Path(name)
    raise DatasetNotFoundError(f"dataset {name!r} not found: {_datasets_under(data_root, name)}")


def _datasets_under(data_root: Path, name: str) -> str:
    """What the data root holds, the nearest name first: a misspelt name (``Grabcut``) is then fixed at a glance."""
    if not data_root.is_dir():
        return f"the data root {data_root} does not exist (set --data-root or ADAPTIVECLICK_DATA)"
    names = sorted(child.name for child in data_root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not names:
        return f"the data root {data_root} holds no dataset folder (set --data-root or ADAPTIVECLICK_DATA)"
    by_lower = {candidate.lower(): candidate for candidate in names}
    near = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"did you mean {by_lower[near[0]]!r}? " if near else ""
    return f"{hint}the data root {data_root} holds {', '.join(names)}"


HOLDOUT_PARTS = ("val", "train")  # NAME:val / NAME:train, the two sides of a training folder's --holdout split


def load_dataset(name: str, data_root: str | Path | None = None, split: str = "val") -> InteractiveDataset:
    """Resolve `name` under the data root and open it; ``NAME:val`` is the validation share that training with
    ``--holdout NAME`` (default fraction) keeps out of a training folder, ``NAME:train`` the rest (what such a run
    trains on: measuring both tells fitting from generalising)."""
    from ..training.data import DEFAULT_HOLDOUT_FRACTION

    base, _, part = name.rpartition(":")
    if base and part in HOLDOUT_PARTS:
        return validation_dataset(resolve_dataset_path(base, data_root), DEFAULT_HOLDOUT_FRACTION, base, part)
    return open_dataset(resolve_dataset_path(name, data_root), name=name, split=split)


def validation_dataset(
    root: str | Path, fraction: float, name: str | None = None, part: str = "val"
) -> InteractiveDataset:
    """The objects of a training folder (``images/`` + ``masks/``) that training holds out as validation
    (``part="val"``), or the ones it trains on (``part="train"``).

    Same split as :func:`model.training.data.hold_out_validation`, so a run never trains on what it selects on.
    """
    from ..training.data import in_validation_split

    if part not in HOLDOUT_PARTS:
        raise ValueError(f"part must be one of {', '.join(HOLDOUT_PARTS)}, not {part!r}")
    dataset = open_dataset(root, name=name)
    if not isinstance(dataset, MaskFolderDataset):
        raise DatasetError(f"{root}: a validation split needs an images/ + masks/ folder")
    source = Path(root).name
    keep = part == "val"
    dataset.items = [item for item in dataset.items if in_validation_split(source, item[0], fraction) == keep]
    dataset.name = f"{dataset.name}:{part}"
    dataset._check_not_empty()
    return dataset
