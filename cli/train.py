"""``adaptiveclick train``: flags and config files -> ``model.training.TrainConfig`` -> ``model.training.train``.

adaptiveclick train --model starter --data DIR[,DIR...] --steps N --out DIR
adaptiveclick train --config cfg.json
adaptiveclick train --resume --out DIR          # continues bit-identically from DIR/last.pt
torchrun --standalone --nproc_per_node 4 -m cli train ...   # DDP; --batch-size is per process
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # model.training.trainer imports torch: only when a training command runs
    from model.training.trainer import DistInfo, TrainConfig


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", help="JSON file of training settings (TrainConfig fields); flags given override it")
    add("--resume", action="store_true", help="continue from OUT/last.pt with its saved settings")
    add("--model", help="config name (starter, tiny, vit_b_448, ...) or a JSON AdaptiveClickConfig (default starter)")
    add("--init", help="start from this checkpoint instead of fresh weights")
    add("--mae", help="initialise the backbone from MAE ViT weights ({'model': state_dict})")
    add("--data", help="comma-separated training folders (never GrabCut/Berkeley)")
    add("--out", help="output folder (default runs/train)")
    add("--steps", type=int, help="total optimiser steps (default 1000)")
    add("--until", type=int, help="stop (with a checkpoint) at this step; the schedule still spans --steps")
    add("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    add("--batch-size", type=int, help="samples per step and process (default 8)")
    add("--lr", type=float, help="Adam learning rate (default 5e-5)")
    add("--lr-milestones", help="comma-separated fractions of --steps where lr *= lr-gamma (default 0.6667)")
    add("--lr-gamma", type=float, help="lr factor at each milestone (default 0.1)")
    add("--warmup-steps", type=int, help="linear lr warm-up steps (default 0)")
    add("--layer-decay", type=float, help="layer-wise lr decay for the ViT blocks (default 1 = off)")
    add("--weight-decay", type=float, help="Adam weight decay (default 0)")
    add("--clip-grad", type=float, help="clip the gradient norm to this value (default 0 = off)")
    add("--crop", type=int, help="training crop = network input size (default: the model's)")
    add("--base-scale", type=float, help="image pre-scale before the x0.75-1.40 resize (default crop/448)")
    add("--zoom-in-prob", type=float, help="share of samples cropped around the object like zoom-in (default 0)")
    add("--max-points", type=int, help="initial clicks per kind (default 24)")
    add("--max-extra-clicks", type=int, help="iterative-training rounds are drawn from 0..this (default 3)")
    add("--workers", type=int, help="data-loading processes (default 2; 0 = in the main process)")
    add("--seed", type=int, help="random seed (default 0)")
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add("--device", help="auto, cpu, cuda, cuda:1 (default auto)")
    add("--amp", choices=("auto", "fp32", "bf16", "fp16"), help="autocast dtype (default auto: bf16 on CUDA)")
    add("--save-every-min", type=float, help="minutes between checkpoints (default 10)")
    add("--log-every", type=int, help="steps between log.csv rows (default 10)")
    add("--eval-every", type=int, help="steps between NoC evaluations (default 0 = never)")
    add("--eval-data", help="comma-separated datasets for --eval-every (names under the data root or folders)")
    add("--eval-limit", type=int, help="instances per evaluation dataset (default 20)")
    add(
        "--holdout",
        help="comma-separated names of --data folders whose validation share (images/ + masks/) is "
        "kept out of training and measured by --eval-every",
    )
    add("--holdout-fraction", type=float, help="share of each --holdout folder's objects held out (default 0.1)")
    add("--ema-decay", type=float, help="also keep an EMA of the weights with this decay, e.g. 0.999 (default 0 = off)")
    add(
        "--allow-eval-data",
        action="store_true",
        default=None,
        help="allow training on, or --eval-data with, GrabCut/Berkeley (never do this for benchmarks)",
    )


_LIST_FLAGS = {"data": str, "eval_data": str, "holdout": str, "lr_milestones": float}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """Merge ``--config`` / the resumed run's settings with the flags given; returns (config, resume)."""
    from model.training.trainer import TrainConfig, resume_settings

    resume = bool(getattr(args, "resume", False))
    settings: dict[str, Any] = {}
    if resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR (the run folder holding last.pt)")
        settings.update(resume_settings(args.out))
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} does not exist")
        settings.update(json.loads(path.read_text()))
    for name in (f.name for f in fields(TrainConfig)):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in _LIST_FLAGS and isinstance(value, str):
            value = [_LIST_FLAGS[name](v) for v in value.split(",") if v.strip()]
        settings[name] = value
    return TrainConfig.from_dict(settings), resume


def launch_from_env() -> DistInfo:
    """What ``torchrun`` tells each process it starts (WORLD_SIZE, RANK, LOCAL_RANK); one process without it."""
    from model.training.trainer import DistInfo

    return DistInfo(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``adaptiveclick train``."""
    import torch.distributed as dist

    from model.training.trainer import STATE_FILE, train

    cfg, resume = config_from_args(args)
    cfg.validate()
    result = train(cfg, resume=resume, until=args.until, max_minutes=args.max_minutes, launch=launch_from_env())
    if not dist.is_initialized() or dist.get_rank() == 0:
        state = "finished" if result["finished"] else "stopped"
        print(f"{state} at step {result['step']} (loss {result['loss']:.4f}); state in {Path(cfg.out) / STATE_FILE}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune an AdaptiveClick model",
        description="Train AdaptiveClick with the reference recipe (resumable; torchrun -m cli train ... for "
        "several GPUs).",
    )
    _add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser
