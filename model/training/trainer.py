"""The reference AdaptiveClick training recipe, resumable and DDP-ready (command line: ``cli/train.py``).

Recipe (AdaptiveClick / SimpleClick on COCO+LVIS): crop 448, batch 32, Adam lr 5e-5 (betas 0.9 /
0.999, no weight decay), lr x0.1 after 2/3 of training, MAE-initialised backbone, multi-point initial
clicks (<= 24, gamma 0.8), 0..3 iterative-training rounds, and the golden-exact set criterion (AFL +
CE + dice, deep supervision). The reference's 60 epochs x 30,000 samples at batch 32 are 56,250 steps
with the drop at step 37,500 (epoch 40).

Reproduce the reference on 4 GPUs with COCO+LVIS (RITM layout) and MAE ViT-B weights::

    torchrun --standalone --nproc_per_node 4 -m cli train \\
        --model vit_b_448 --mae weights/mae_pretrain_vit_base.pth --data /data/cocolvis \\
        --steps 56250 --batch-size 8 --lr 5e-5 --crop 448 --workers 8 --amp bf16 --out runs/vit_b_cocolvis

(``--batch-size`` is per process: 4 x 8 = 32.) Single process, from a config file, or resuming::

    adaptiveclick train --config cfg.json
    adaptiveclick train --model starter --data DIR[,DIR...] --steps N --out DIR
    adaptiveclick train --resume --out DIR          # continues bit-identically from DIR/last.pt

Outputs in ``--out``: ``last.pt`` (full training state, atomic), ``model_last.safetensors`` (the
weights at that checkpoint), ``final.safetensors`` (at the end), ``train_config.json``, ``log.csv``,
``eval.csv`` (with ``--eval-every``) and TensorBoard events when ``tensorboard`` is installed.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..build import CONFIGS, AdaptiveClickConfig, build_adaptiveclick
from ..checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_mae_backbone,
    load_state_dict_strict,
    save_checkpoint,
)
from ..files import atomic_write
from ..modeling.adaptiveclick import AdaptiveClick
from ..modeling.vit import resize_pos_embed
from .click_sampler import MultiPointSampler, add_error_clicks
from .criterion import build_criterion, downsample_gt, total_loss
from .data import (
    DEFAULT_HOLDOUT_FRACTION,
    EVALUATION_ONLY,
    AugmentConfig,
    ClickTrainDataset,
    StreamSampler,
    TrainSource,
    hold_out_validation,
    open_train_sources,
)

STATE_FORMAT = "adaptiveclick-train/1"
STATE_FILE = "last.pt"
CONFIG_FILE = "train_config.json"
UNUSED_PREFIXES = ("backbone.cls_token", "backbone.fc_norm.", "backbone.head.")
EVAL_COLUMNS = ("step", "dataset", "weights", "instances", "noc85", "noc90", "iou1")
LOG_COLUMNS = (
    "step",
    "samples",
    "loss",
    "loss_ce",
    "loss_mask",
    "loss_dice",
    "train_iou",
    "extra_clicks",
    "lr",
    "s_per_step",
    "wall_s",
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (``--config`` JSON keys are these field names)."""

    data: list[str] = field(default_factory=list)
    out: str = "runs/train"
    steps: int = 1000
    model: str = "starter"  # a config name from model.build.CONFIGS or a JSON file of AdaptiveClickConfig
    init: str | None = None  # checkpoint to start from (any format load_checkpoint reads)
    mae: str | None = None  # MAE ViT weights for the backbone
    batch_size: int = 8  # per process
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_milestones: tuple[float, ...] = (2 / 3,)  # fractions of `steps` where the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    layer_decay: float = 1.0  # < 1: backbone block i gets lr * layer_decay ** (depth - i)
    clip_grad: float = 0.0
    crop: int | None = None  # default: the model's native input size
    scale_range: tuple[float, float] = (0.75, 1.40)
    base_scale: float | None = None  # default crop / 448, so a smaller crop sees the reference field of view
    zoom_in_prob: float = 0.0  # share of samples cropped around the object as the predictor's zoom-in sees it
    max_points: int = 24
    max_extra_clicks: int = 3
    workers: int = 2
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16
    save_every_min: float = 10.0
    log_every: int = 10
    eval_every: int = 0
    eval_data: list[str] = field(default_factory=list)
    eval_limit: int = 20
    holdout: list[str] = field(default_factory=list)  # training folders (names) whose validation share is held out
    holdout_fraction: float = (
        DEFAULT_HOLDOUT_FRACTION  # share of each holdout folder's objects kept out of training for validation
    )
    ema_decay: float = 0.0  # > 0: also keep an exponential moving average of the weights (model_ema.safetensors)
    allow_eval_data: bool = False

    def validate(self) -> None:
        if not self.data:
            raise ValueError("no training data: pass --data DIR[,DIR...] or set 'data' in the config")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("--steps and --batch-size must be positive")
        if self.amp not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"--amp must be auto, fp32, bf16 or fp16, not {self.amp!r}")
        if not 0 <= self.zoom_in_prob <= 1:
            raise ValueError(f"zoom_in_prob is a probability in [0, 1], got {self.zoom_in_prob}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction is a share in (0, 1), got {self.holdout_fraction}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        names = {Path(d).name for d in self.data}
        if set(self.holdout) - names:
            raise ValueError(
                f"--holdout names folders that are not in --data: {', '.join(sorted(set(self.holdout) - names))}"
            )
        monitored = sorted({Path(name).name.split(":")[0] for name in self.eval_data} & set(EVALUATION_ONLY))
        if monitored and not self.allow_eval_data:
            raise ValueError(
                f"--eval-data {', '.join(monitored)}: evaluation sets are measured for the report, not watched while "
                "training (a schedule or checkpoint chosen on them is tuned on them); hold a validation split out "
                "of the training data with --holdout instead, or pass --allow-eval-data"
            )
        if any(not 0 < m <= 1 for m in self.lr_milestones):
            raise ValueError(f"lr milestones are fractions of the run in (0, 1], got {self.lr_milestones}")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        data = dict(data)
        for key in ("betas", "lr_milestones", "scale_range"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        for key in ("data", "eval_data", "holdout"):
            if isinstance(data.get(key), str):
                data[key] = [p for p in data[key].split(",") if p]
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Model, optimiser, schedule


def build_training_model(cfg: TrainConfig) -> AdaptiveClick:
    """The network to train: from ``init``, or a fresh ``model`` config (+ MAE backbone); input = crop."""
    if cfg.init:
        model = load_checkpoint(cfg.init)
    else:
        if cfg.model in CONFIGS:
            config = CONFIGS[cfg.model]
        elif Path(cfg.model).is_file():
            config = AdaptiveClickConfig.from_dict(json.loads(Path(cfg.model).read_text()))
        else:
            raise ValueError(f"--model {cfg.model!r} is neither a config name ({', '.join(CONFIGS)}) nor a JSON file")
        torch.manual_seed(cfg.seed)
        model = build_adaptiveclick(replace(config, image_size=cfg.crop or config.image_size))
    if cfg.crop and model.image_size != (cfg.crop, cfg.crop):
        model = resize_model_input(model, cfg.crop)
    if cfg.mae:
        missing = load_mae_backbone(model, cfg.mae)
        if missing:
            print(f"MAE weights lacked {len(missing)} backbone keys: {', '.join(missing[:6])}", file=sys.stderr)
    return model.train()


def resize_model_input(model: AdaptiveClick, size: int) -> AdaptiveClick:
    """A copy of ``model`` whose native input is ``size`` (position embedding resized bicubically)."""
    config = replace(model.config, image_size=size)
    resized = build_adaptiveclick(config)
    state = model.state_dict()
    old = model.backbone.native_grid
    grid = (size // config.patch_size, size // config.patch_size)
    state["backbone.pos_embed"] = resize_pos_embed(state["backbone.pos_embed"], old, grid)
    load_state_dict_strict(resized, state, source="resized model")
    return resized


def parameter_groups(model: AdaptiveClick, lr: float, layer_decay: float) -> list[dict]:
    """One group per lr scale: ViT block i gets ``layer_decay ** (depth - i)``, the embeddings
    ``layer_decay ** (depth + 1)``, everything else (neck, decoders) 1."""
    depth = len(model.backbone.blocks)
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if layer_decay != 1.0:
            if name.startswith("backbone.blocks."):
                scale = layer_decay ** (depth - int(name.split(".")[2]))
            elif name.startswith(("backbone.", "patch_embed_coords.")):
                scale = layer_decay ** (depth + 1)
        groups.setdefault(scale, []).append(param)
    return [{"params": params, "lr": lr * scale, "lr_scale": scale} for scale, params in sorted(groups.items())]


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then x ``lr_gamma`` at every milestone (fractions of ``steps``)."""
    factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    for milestone in cfg.lr_milestones:
        if step >= int(round(milestone * cfg.steps)):
            factor *= cfg.lr_gamma
    return factor


# ---------------------------------------------------------------------------------------------
# Distributed helpers


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, launch: DistInfo | None = None) -> DistInfo:
    """Join the process group ``torchrun`` started (``launch``: its WORLD_SIZE and LOCAL_RANK, read by the
    command line), or use one the caller already initialised; a single process otherwise."""
    launch = launch or DistInfo()
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), launch.local_rank)
    if launch.world_size > 1:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")  # the rendezvous is torchrun's env://
        return DistInfo(dist.get_rank(), dist.get_world_size(), launch.local_rank)
    return DistInfo()


def resolve_train_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype:
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return dtype


# ---------------------------------------------------------------------------------------------
# Training state (atomic, resumable)


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "gauss": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_train_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable training state ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an AdaptiveClick training state ({STATE_FORMAT})")
    return state


# ---------------------------------------------------------------------------------------------
# Logging


class RunLog:
    """``log.csv`` (rows after the resumed step are dropped), optional TensorBoard."""

    def __init__(self, out: Path, resume_step: int) -> None:
        self.path = out / "log.csv"
        rows = []
        if self.path.is_file() and resume_step > 0:
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)
        except Exception:
            self.tensorboard = None

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, LOG_COLUMNS).writerow({k: _fmt(row.get(k)) for k in LOG_COLUMNS})
        if self.tensorboard is not None:
            for key in LOG_COLUMNS[2:]:
                if row.get(key) is not None:
                    self.tensorboard.add_scalar(f"train/{key}", row[key], int(row["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


# ---------------------------------------------------------------------------------------------
# One training step


def _float_outputs(outputs: dict) -> dict:
    result = {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    if "aux_outputs" in outputs:
        result["aux_outputs"] = [{k: v.float() for k, v in aux.items()} for aux in outputs["aux_outputs"]]
    return result


def iterative_clicks(
    net: AdaptiveClick,
    images: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    points: torch.Tensor,
    num_rounds: int,
    rng: np.random.Generator,
    amp_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's iterative training: ``num_rounds`` no-grad predictions in eval mode, each adding
    one click in the larger error region; returns the final clicks and the last prediction (prev mask)."""
    prev = torch.zeros_like(images[:, :1])
    if num_rounds == 0:
        return points, prev
    was_training = net.training
    net.eval()
    first_index = int(points[..., 2].max().item()) + 1
    with torch.no_grad():
        for round_index in range(num_rounds):
            with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                logits = net(torch.cat([images, prev], dim=1), points)["instances"]
            prev = torch.sigmoid(logits.float())
            points = add_error_clicks(prev, gt, valid, points, rng, first_index + round_index)
    net.train(was_training)
    return points, prev


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Holds the model, optimiser and data stream of one process; :meth:`run` trains to ``steps``."""

    def __init__(
        self,
        cfg: TrainConfig,
        dist_info: DistInfo | None = None,
        resume: bool = False,
        sources: Sequence[TrainSource] | None = None,
    ) -> None:
        """``sources``: data already opened (e.g. annotations in memory) instead of the folders of ``cfg.data``."""
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        self.dist = init_distributed("cuda" if wants_cuda else "cpu", dist_info)
        self.device = resolve_train_device(cfg.device, self.dist)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        state = load_train_state(self.out / STATE_FILE) if resume else None
        if state is not None:
            config = AdaptiveClickConfig.from_dict(state["model_config"])
            self.net = build_adaptiveclick(config)
            load_state_dict_strict(self.net, state["model"], source=str(self.out / STATE_FILE))
            self.net.train()
        else:
            self.net = build_training_model(cfg)
        for name, param in self.net.named_parameters():
            if name.startswith(UNUSED_PREFIXES):
                param.requires_grad_(False)  # kept for strict checkpoint loading; DDP needs every trained param used
        self.net.to(self.device)
        self.crop = self.net.image_size[0]
        self.model = self.net
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

        self.optimizer = torch.optim.Adam(
            parameter_groups(self.net, cfg.lr, cfg.layer_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_multiplier(step, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = build_criterion(
            no_object_weight=self.net.config.no_object_weight, num_aux_layers=self.net.config.decoder_layers
        ).to(self.device)

        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.ema_decay > 0:
            saved = state.get("ema") if state is not None else None
            source = saved if saved else self.net.state_dict()
            self.ema = {
                k: v.detach().to(self.device, torch.float32, copy=True)
                for k, v in source.items()
                if v.is_floating_point()
            }

        self.step = 0
        self.wall_time = 0.0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.step = int(state["step"])
            self.wall_time = float(state["wall_time"])
            set_rng_state(state["rng"])
        else:
            random.seed(cfg.seed + self.dist.rank)
            np.random.seed(cfg.seed + self.dist.rank)
            torch.manual_seed(cfg.seed + self.dist.rank)

        if sources is None:
            sources = open_train_sources(cfg.data, allow_evaluation_sets=cfg.allow_eval_data)
            sources = [hold_out_validation(s, cfg.holdout_fraction) if s.name in cfg.holdout else s for s in sources]
        augment = AugmentConfig(
            crop_size=self.crop,
            scale_range=cfg.scale_range,
            base_scale=cfg.base_scale if cfg.base_scale is not None else self.crop / 448,
            zoom_in_prob=cfg.zoom_in_prob,
        )
        self.dataset = ClickTrainDataset(sources, augment, MultiPointSampler(cfg.max_points), seed=cfg.seed)
        self._stop_requested = False

    # -- data ---------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        sampler = StreamSampler(self.dist.rank, self.dist.world_size, start=self.step * self.cfg.batch_size)
        workers = self.cfg.workers
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
            worker_init_fn=_worker_init if workers else None,
        )

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "samples_per_rank": self.step * self.cfg.batch_size,
            "world_size": self.dist.world_size,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "model_config": self.net.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_state(),
            "train_config": json.dumps(asdict(self.cfg)),
            "wall_time": self.wall_time,
            "ema": {k: v.cpu() for k, v in self.ema.items()} if self.ema is not None else None,
        }

    def save(self) -> None:
        """Write ``last.pt`` and ``model_last.safetensors`` (rank 0 only; both atomic)."""
        if not self.dist.is_main:
            return
        atomic_torch_save(self.state_dict(), self.out / STATE_FILE)
        save_checkpoint(self.net, self.out / "model_last.safetensors", self._metadata())
        if self.ema is not None:
            save_checkpoint(self.ema_model(), self.out / "model_ema.safetensors", self._metadata(ema=True))

    def ema_model(self) -> AdaptiveClick:
        """A copy of the network holding the averaged weights (buffers that are not float come from the net)."""
        model = copy.deepcopy(self.net)
        state = model.state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in self.ema.items()})
        model.load_state_dict(state)
        return model

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Bias-corrected warm-up (as timm's ModelEmaV3): early on the average must not stay near the init.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        current = self.net.state_dict()
        keys = list(self.ema)
        torch._foreach_lerp_([self.ema[k] for k in keys], [current[k].float() for k in keys], 1 - decay)

    def _metadata(self, ema: bool = False) -> dict[str, str]:
        return {
            "train_weights": f"ema {self.cfg.ema_decay}" if ema else "last",
            "train_steps": str(self.step),
            "train_samples": str(self.step * self.cfg.batch_size * self.dist.world_size),
            "train_data": ",".join(self.cfg.data),
            "train_wall_time_s": f"{self.wall_time:.0f}",
            "train_config": json.dumps(asdict(self.cfg)),
        }

    # -- loop -----------------------------------------------------------------------------------

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Iterative clicks (no grad), then one forward/backward/update; returns the step's metrics."""
        device = self.device
        images = batch["image"].to(device, non_blocking=True).float().div_(255)
        gt = batch["gt"].to(device, non_blocking=True)
        valid = batch["valid"].to(device, non_blocking=True)
        points = batch["points"].to(device, non_blocking=True)
        rng = np.random.default_rng([self.cfg.seed, 7919, self.step, self.dist.rank])
        num_rounds = int(rng.integers(0, self.cfg.max_extra_clicks + 1))
        points, prev = iterative_clicks(self.net, images, gt, valid, points, num_rounds, rng, self.amp_dtype)

        self.model.train()
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
            outputs = self.model(torch.cat([images, prev], dim=1), points)
        outputs = _float_outputs(outputs)
        losses = self.criterion(outputs, downsample_gt(gt, outputs["pred_masks"].shape[-2:]))
        loss = total_loss(losses, self.criterion.weight_dict)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; lower --lr or use --clip-grad")

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[-1]["lr"]
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self._update_ema()

        with torch.no_grad():
            pred = outputs["instances"] > 0
            target = gt > 0.5
            inter = (pred & target).flatten(1).sum(1).float()
            union = (pred | target).flatten(1).sum(1).float().clamp_min(1)
            train_iou = (inter / union).mean()
        metrics = torch.stack(
            [
                loss.detach(),
                losses["loss_ce"].detach(),
                losses["loss_mask"].detach(),
                losses["loss_dice"].detach(),
                train_iou,
                torch.tensor(float(num_rounds), device=device),
            ]
        )
        if self.dist.world_size > 1:
            dist.all_reduce(metrics)
            metrics /= self.dist.world_size
        names = ("loss", "loss_ce", "loss_mask", "loss_dice", "train_iou", "extra_clicks")
        result = dict(zip(names, metrics.tolist()))
        result["lr"] = lr
        return result

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def run(self, until: int | None = None, max_minutes: float | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or stop early at step ``until`` / after ``max_minutes``) with a
        checkpoint every ``save_every_min`` minutes and at the end."""
        from tqdm import tqdm

        cfg = self.cfg
        end = min(cfg.steps, until) if until else cfg.steps
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        log = RunLog(self.out, self.step) if self.dist.is_main else None
        previous_handlers = _install_stop_handlers(self.request_stop)
        started = time.perf_counter()
        last_save = started
        last_loss = float("nan")
        bar = tqdm(
            total=end,
            initial=self.step,
            disable=not self.dist.is_main,
            unit="step",
            mininterval=1.0 if sys.stderr.isatty() else 60.0,
            dynamic_ncols=True,
        )
        loader = iter(self._loader()) if self.step < end else None
        if cfg.eval_every and self.step == 0 and self.dist.is_main:
            self.evaluate()  # the starting point (e.g. the --init weights) is the first row to compare against
        try:
            while self.step < end and not self._stop_requested:
                step_start = time.perf_counter()
                metrics = self.train_step(next(loader))
                now = time.perf_counter()
                self.wall_time += now - step_start
                last_loss = metrics["loss"]
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", iou=f"{metrics['train_iou']:.3f}", refresh=False)
                if log is not None and (self.step % cfg.log_every == 0 or self.step == end):
                    log.write(
                        {
                            "step": self.step,
                            "samples": self.step * cfg.batch_size * self.dist.world_size,
                            "s_per_step": now - step_start,
                            "wall_s": self.wall_time,
                            **metrics,
                        }
                    )
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.dist.is_main:
                    self.evaluate()
                if now - last_save >= cfg.save_every_min * 60 and self.step < end:
                    self.save()
                    last_save = time.perf_counter()
                if max_minutes is not None and now - started >= max_minutes * 60:
                    break
        finally:
            bar.close()
            _restore_handlers(previous_handlers)
            del loader
        self.save()
        finished = self.step >= cfg.steps
        if finished and cfg.eval_every and self.dist.is_main and self.step not in self.validated_steps():
            # The final weights are what a run publishes, and publishing chooses between them and their EMA on the
            # last validation: it must be of these weights, not of a step before (8000 steps, every 750: 7500).
            # After the save, so a validation that fails loses no training.
            self.evaluate()
        if finished and self.dist.is_main:
            save_checkpoint(self.net, self.out / "final.safetensors", self._metadata())
            if self.ema is not None:
                save_checkpoint(self.ema_model(), self.out / "final_ema.safetensors", self._metadata(ema=True))
        if log is not None:
            log.close()
        return {"step": self.step, "finished": finished, "loss": last_loss, "wall_time": self.wall_time}

    def evaluation_sets(self) -> list:
        """``eval_data`` sets, then the validation share of every ``holdout`` folder."""
        from ..evaluation.datasets import load_dataset, validation_dataset

        sets = []
        for name in self.cfg.eval_data:
            path = Path(name)
            sets.append(load_dataset(path.name, path.parent) if path.is_dir() else load_dataset(name))
        for folder in self.cfg.data:
            if Path(folder).name in self.cfg.holdout:
                sets.append(validation_dataset(folder, self.cfg.holdout_fraction))
        return sets

    def validated_steps(self) -> set[int]:
        """The steps ``eval.csv`` already holds rows for."""
        path = self.out / "eval.csv"
        if not path.is_file():
            return set()
        with open(path, newline="") as handle:
            return {int(row["step"]) for row in csv.DictReader(handle)}

    def evaluate(self) -> None:
        """NoC on the first ``eval_limit`` instances of each evaluation set, for the trained weights and
        their EMA; appends to ``eval.csv``."""
        from ..evaluation.metrics import compute_noc
        from ..evaluation.runner import evaluate_dataset
        from ..predictor import Predictor

        rows = []
        weights = [("last", self.net)] + ([("ema", self.ema_model())] if self.ema is not None else [])
        for dataset in self.evaluation_sets():
            for label, net in weights:
                predictor = Predictor(net, device=self.device)
                results = evaluate_dataset(predictor, dataset, limit=self.cfg.eval_limit, progress=False)
                ious = [r.ious for r in results]
                (noc85, noc90), _, _ = compute_noc(ious, (0.85, 0.90))
                iou1 = float(np.mean([r[0] for r in ious]))
                rows.append(
                    {
                        "step": self.step,
                        "dataset": dataset.name,
                        "weights": label,
                        "instances": len(results),
                        "noc85": noc85,
                        "noc90": noc90,
                        "iou1": iou1,
                    }
                )
        self.net.train()
        path = self.out / "eval.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, EVAL_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)


def _worker_init(_: int) -> None:
    import cv2

    # A worker leaves the trainer's process group, so a Ctrl-C or a `kill -- -PGID` reaches only the trainer, which
    # finishes its step, saves and then shuts the workers down; a worker killed first would make the next batch
    # raise and the run die unsaved. The DataLoader still ends its workers by pid.
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
        # Outside the terminal's foreground group, a worker printing a warning to a `stty tostop` terminal would be
        # stopped by SIGTTOU and stall the run; with the signal ignored the write goes through.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _install_stop_handlers(callback) -> dict:
    """SIGTERM / SIGINT finish the current step, save, and stop (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, callback)
    return previous


def _restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def train(
    cfg: TrainConfig,
    resume: bool = False,
    until: int | None = None,
    max_minutes: float | None = None,
    launch: DistInfo | None = None,
) -> dict[str, Any]:
    """Build a :class:`Trainer` (joining ``torchrun``'s process group when ``launch`` has several processes) and
    run it."""
    trainer = Trainer(cfg, dist_info=launch, resume=resume)
    return trainer.run(until=until, max_minutes=max_minutes)


def resume_settings(out: str | Path) -> dict[str, Any]:
    """The settings a run in ``out`` was started with (``train_config.json``), to resume it."""
    saved = Path(out) / CONFIG_FILE
    if not saved.is_file():
        raise FileNotFoundError(f"cannot resume: {saved} does not exist")
    return json.loads(saved.read_text())
