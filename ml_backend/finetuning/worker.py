"""The fine-tuning worker: a separate process that runs the queued jobs under ``MODEL_DIR/jobs``, one at a time.

``adaptiveclick worker --once`` (what the server starts after enqueueing a job) drains the queue and exits;
``adaptiveclick worker`` keeps polling (``FINETUNE_WORKER=external``: run it yourself, e.g. in its own container).
Only one worker runs jobs at a time (``ModelStore.worker_lock``); a second one exits at once.

A job (:func:`run_job`):

1. reads the project's accepted annotations from the platform the job names (``sources.py``): Label Studio's
   submitted annotations (``ml_backend.labelstudio.training_data``) or the finished jobs of a CVAT project
   (``ml_backend.cvat.annotations``), each mask or polygon one instance mask, each image fetched under the
   media fetcher's rules;
2. holds out a validation split, deterministic by task id (``FINETUNE_VAL_FRACTION``, at least one task);
3. measures NoC@85/90 on it with the served model (robot clicker), fine-tunes from the served checkpoint with
   the training recipe (AFL, click simulation; ``model.training.finetune``), measures again;
4. promotes the new checkpoint only when NoC@85 is not worse (ties allowed): ``versions/<version>/`` with
   ``model.safetensors`` and ``manifest.json``, written atomically, then ``current`` is replaced.

A job that crashes ends "failed" with the error; one that is killed or runs out of memory is found "running" by
the next worker (or server start) and marked "interrupted". Neither touches the served version or its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Settings, env_choice, env_float, env_int, env_probability
from ..interactive.engine import base_version_name
from ..labelstudio.training_data import LabelStudioAPI, collect_annotations
from .model_store import (
    BASE,
    DONE,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SKIPPED,
    ModelStore,
    now_iso,
    served_checkpoint,
)
from .sources import CVAT, AnnotationSource, JobSkipped, TaskData, describe_job, job_platform

if TYPE_CHECKING:
    from model.training.trainer import TrainConfig

log = logging.getLogger("adaptiveclick.finetune")


@dataclasses.dataclass
class JobConfig:
    """A fine-tuning job's settings (environment ``FINETUNE_*``): the training run (a ``model.training.TrainConfig``
    from ``model.training.finetune.finetune_config``) and what the worker does around it."""

    train: TrainConfig | None = None  # None: finetune_config() (imported on use: it pulls in torch)
    max_minutes: float = 60.0  # wall-time cap of the training run (0: none)
    val_fraction: float = 0.2
    min_tasks: int = 2
    max_tasks: int = 1000
    max_clicks: int = 20
    val_max_instances: int = 100
    min_instance_px: int = 100
    nice: int = 10
    keep_rejected: bool = False  # keep a not-promoted candidate as jobs/<job>.rejected.safetensors (analysis)

    def __post_init__(self) -> None:
        if self.train is None:
            from model.training.finetune import finetune_config

            self.train = finetune_config()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobConfig:
        from model.training.finetune import finetune_config

        env = os.environ if env is None else env
        defaults = finetune_config()
        # The TrainConfig fields a job takes from FINETUNE_<NAME>; the rest keep model.training.finetune's defaults.
        train: dict[str, Any] = {
            "steps": max(1, env_int(env, "FINETUNE_STEPS", defaults.steps)),
            "batch_size": max(1, env_int(env, "FINETUNE_BATCH_SIZE", defaults.batch_size)),
            "lr": env_float(env, "FINETUNE_LR", defaults.lr),
            "max_extra_clicks": max(0, env_int(env, "FINETUNE_MAX_EXTRA_CLICKS", defaults.max_extra_clicks)),
            "seed": env_int(env, "FINETUNE_SEED", defaults.seed),
            "amp": env_choice(env, "FINETUNE_AMP", defaults.amp, ("auto", "fp32", "bf16", "fp16")),
            "zoom_in_prob": env_probability(env, "FINETUNE_ZOOM_IN_PROB", defaults.zoom_in_prob),
            # Half the cores by default: serving keeps the rest.
            "threads": max(1, env_int(env, "FINETUNE_THREADS", max(1, (os.cpu_count() or 2) // 2))),
        }
        return cls(
            train=finetune_config(**train),
            max_minutes=env_float(env, "FINETUNE_MAX_MINUTES", 60.0),
            val_fraction=min(0.9, max(0.0, env_float(env, "FINETUNE_VAL_FRACTION", 0.2))),
            min_tasks=max(2, env_int(env, "FINETUNE_MIN_TASKS", 2)),
            max_tasks=max(2, env_int(env, "FINETUNE_MAX_TASKS", 1000)),
            max_clicks=max(1, env_int(env, "FINETUNE_MAX_CLICKS", 20)),
            val_max_instances=max(1, env_int(env, "FINETUNE_VAL_MAX_INSTANCES", 100)),
            min_instance_px=max(0, env_int(env, "FINETUNE_MIN_INSTANCE_PX", 100)),
            nice=env_int(env, "FINETUNE_NICE", 10),
            keep_rejected=env.get("FINETUNE_KEEP_REJECTED", "").strip().lower() in ("1", "true", "yes", "on"),
        )


# --- split, evaluation, training --------------------------------------------------------------------


def _task_hash(project: str, task_id: int) -> int:
    return int(hashlib.sha256(f"{project}:{task_id}".encode()).hexdigest()[:12], 16)


def split_tasks(project: str, tasks: list[TaskData], val_fraction: float) -> tuple[list[TaskData], list[TaskData]]:
    """(train, validation), deterministic by task id: tasks ranked by a hash of (project, task id); a task whose
    hash falls below the fraction is always validation, and the ranking tops the split up to
    ``round(fraction * n)`` tasks (small projects), with at least one task on each side (given two or more)."""
    ranked = sorted(tasks, key=lambda t: _task_hash(project, t.task_id))
    limit = int(val_fraction * (1 << 48))
    below = sum(1 for t in ranked if _task_hash(project, t.task_id) < limit)
    count = max(below, int(round(val_fraction * len(ranked))), 1)
    count = min(count, len(ranked) - 1) if len(ranked) > 1 else len(ranked)
    ids = {t.task_id for t in ranked[:count]}
    return [t for t in tasks if t.task_id not in ids], [t for t in tasks if t.task_id in ids]


@dataclasses.dataclass
class JobSteps:
    """The parts of a job, replaceable in tests."""

    collect: Callable[..., tuple[list[TaskData], dict[str, int]]] | None = None
    evaluate: Callable[..., dict[str, Any]] | None = None
    train: Callable[..., tuple[Any, dict[str, Any]]] | None = None
    save: Callable[[Any, Path, dict[str, str]], None] | None = None


def _evaluate(net: Any, samples: list[tuple[np.ndarray, np.ndarray]], cfg: JobConfig, settings: Settings) -> dict:
    from model.training.finetune import evaluate_noc

    from ..interactive.engine import predictor_options

    options = predictor_options(settings)  # the job measures the candidate the way the server will serve it
    return evaluate_noc(
        net,
        samples,
        max_clicks=cfg.max_clicks,
        device=_device(settings),
        flip=options["flip"],
        zoom_in=options["zoom_in"],
        refine=options["refine"].spec,
    ).to_dict()


def _train(init: Path, train: list[TaskData], cfg: JobConfig, settings: Settings, work: Path) -> tuple[Any, dict]:
    from model.training.finetune import finetune, memory_source

    samples = [(t.image, [m for m in t.masks if int(m.sum()) >= cfg.min_instance_px]) for t in train]
    source = memory_source(samples, names=[str(t.task_id) for t in train])
    if not source.records:
        raise JobSkipped(f"no training instance of at least FINETUNE_MIN_INSTANCE_PX={cfg.min_instance_px} pixels")
    run = dataclasses.replace(cfg.train, device=_device(settings))
    net, info = finetune(init, source, run, out=work / "train", max_minutes=cfg.max_minutes or None)
    info["train_instances"] = sum(len(r.objects) for r in source.records)
    return net, info


def _save(net: Any, path: Path, metadata: dict[str, str]) -> None:
    from model.checkpoint import save_checkpoint

    save_checkpoint(net, path, metadata)


def _device(settings: Settings) -> str:
    return settings.device if settings.device not in ("", "auto") else ("cuda" if _cuda_available() else "cpu")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _served(settings: Settings, store: ModelStore) -> tuple[str, Path]:
    """(version, checkpoint) the server serves now: the fine-tuned version or the base model (by its name)."""
    version, path = served_checkpoint(settings, store)
    return (base_version_name(settings) if version == BASE else version), path


def run_job(
    store: ModelStore, job: dict[str, Any], settings: Settings, cfg: JobConfig, steps: JobSteps | None = None
) -> dict[str, Any]:
    """Run one job to a terminal state and record it; never raises for a job's own failure."""
    steps = steps or JobSteps()
    job_id = job["id"]
    handler = logging.FileHandler(store.jobs_dir / f"{job_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("adaptiveclick").addHandler(handler)
    work = store.jobs_dir / f"{job_id}.work"
    t0 = time.perf_counter()
    store.update_job(job_id, state=RUNNING, pid=os.getpid(), started=now_iso(), message="running")
    try:
        fields = _run(store, job, settings, cfg, steps, work)
    except JobSkipped as exc:
        log.warning("job %s skipped: %s", job_id, exc)  # in the job's log too
        fields = {"state": SKIPPED, "promoted": False, "message": str(exc)}
    except MemoryError:
        fields = {
            "state": FAILED,
            "promoted": False,
            "message": "out of memory: lower FINETUNE_BATCH_SIZE or "
            "FINETUNE_MAX_TASKS; the served model was not changed",
        }
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        fields = {
            "state": FAILED,
            "promoted": False,
            "message": f"{type(exc).__name__}: {exc} (the served model was not changed; see {job_id}.log)",
        }
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        logging.getLogger("adaptiveclick").removeHandler(handler)
        handler.close()
    fields.update(finished=now_iso(), seconds=round(time.perf_counter() - t0, 1))
    log.info("job %s: %s: %s", job_id, fields["state"], fields.get("message"))
    return store.update_job(job_id, **fields)


def annotation_source(job: dict[str, Any], settings: Settings) -> AnnotationSource:
    """The reader of the job's platform (``sources.job_platform``)."""
    if job_platform(job) == CVAT:
        from ..cvat.annotations import CvatSource

        return CvatSource(settings, job)
    from ..labelstudio.training_data import LabelStudioSource

    return LabelStudioSource(settings, str(job["project"]))


def _run(
    store: ModelStore, job: dict[str, Any], settings: Settings, cfg: JobConfig, steps: JobSteps, work: Path
) -> dict[str, Any]:
    job_id, project, where = job["id"], str(job["project"]), describe_job(job)
    parent, parent_path = _served(settings, store)
    store.update_job(job_id, parent=parent)
    log.info("job %s: %s, fine-tuning from %s (%s)", job_id, where, parent, parent_path)

    if steps.collect is not None:
        from ..labelstudio.training_data import nothing_usable

        tasks, stats = steps.collect(project, cfg)
    else:
        source = annotation_source(job, settings)
        tasks, stats = source.collect(cfg)
        nothing_usable = source.nothing_usable
    store.update_job(job_id, data=stats)
    if not tasks:
        raise JobSkipped(f"{where} has no usable annotations ({nothing_usable(stats)}): nothing to fine-tune on")
    if len(tasks) < cfg.min_tasks:
        raise JobSkipped(
            f"{where} has {len(tasks)} annotated image(s); fine-tuning needs at least "
            f"FINETUNE_MIN_TASKS={cfg.min_tasks} (one is held out for validation)"
        )
    train, val = split_tasks(project, tasks, cfg.val_fraction)
    val_samples = [(t.image, m) for t in val for m in t.masks][: cfg.val_max_instances]
    split = {
        "train_tasks": [t.task_id for t in train],
        "val_tasks": [t.task_id for t in val],
        "val_instances": len(val_samples),
        "train_instances": sum(len(t.masks) for t in train),
    }
    store.update_job(job_id, split=split)
    log.info(
        "job %s: %d train tasks (%d instances), %d validation tasks (%d instances)",
        job_id,
        len(train),
        split["train_instances"],
        len(val),
        len(val_samples),
    )

    evaluate = steps.evaluate or (lambda net, samples: _evaluate(net, samples, cfg, settings))
    if steps.evaluate is None:
        from model.checkpoint import load_checkpoint

        base_net = load_checkpoint(parent_path)
    else:
        base_net = parent_path
    before = evaluate(base_net, val_samples)
    store.update_job(job_id, metrics={"before": before})
    log.info("job %s: before: %s", job_id, before)

    train_fn = steps.train or (lambda init, data: _train(init, data, cfg, settings, work))
    net, info = train_fn(parent_path, train)
    if info.get("stopped"):
        return {
            "state": INTERRUPTED,
            "promoted": False,
            "training": _training_summary(info, cfg),
            "message": "stopped by a signal during training: not promoted; the served model was not changed",
        }
    after = evaluate(net, val_samples)
    metrics = {
        "before": before,
        "after": after,
        "rule": "promote when NoC@85 on the validation split is not worse (ties allowed)",
    }
    log.info("job %s: after: %s", job_id, after)
    result: dict[str, Any] = {"metrics": metrics, "training": _training_summary(info, cfg)}
    change = (
        f"NoC@85 {before['noc85']:.2f} -> {after['noc85']:.2f}, NoC@90 {before['noc90']:.2f} -> "
        f"{after['noc90']:.2f} on {after['instances']} validation instances"
    )
    save = steps.save or _save
    platform = job_platform(job)
    metadata = {
        "parent": parent,
        "job": job_id,
        "platform": platform,
        "project": project,
        "finetune_steps": str(info.get("step", "")),
    }
    if not after["noc85"] <= before["noc85"] + 1e-9:
        if cfg.keep_rejected:
            candidate = store.jobs_dir / f"{job_id}.rejected.safetensors"
            save(net, candidate, metadata)
            result["candidate"] = str(candidate)
        return dict(
            result,
            state=DONE,
            promoted=False,
            version=None,
            message=f"not promoted ({change}: worse); still serving {parent}",
        )
    manifest = {
        "parent": parent,
        "platform": platform,
        "project": project,
        "source": job.get("source") or {},
        "job": job_id,
        "data": {
            "tasks": len(tasks),
            "train_tasks": len(train),
            "val_tasks": len(val),
            "train_instances": info.get("train_instances", split["train_instances"]),
            "val_instances": len(val_samples),
            **{f"{'cvat' if platform == CVAT else 'ls'}_{k}": v for k, v in stats.items()},
        },
        "metrics": metrics,
        "training": result["training"],
    }
    version = store.write_version(job_id, lambda path: save(net, path, metadata), manifest)
    return dict(result, state=DONE, promoted=True, version=version, message=f"promoted {version} ({change})")


def _training_summary(info: dict[str, Any], cfg: JobConfig) -> dict[str, Any]:
    return {
        "steps": info.get("step"),
        "planned_steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "loss": info.get("loss"),
        "seconds": round(float(info.get("wall_time", 0.0)), 1),
        "train_instances": info.get("train_instances"),
    }


# --- the worker loop -------------------------------------------------------------------------------


def worker_loop(
    settings: Settings, cfg: JobConfig, once: bool = True, poll_s: float = 5.0, steps: JobSteps | None = None
) -> int:
    """Run queued jobs one at a time. ``once``: drain the queue and return (at once when another worker holds
    the lock: it picks up what was queued). Returns the number of jobs run."""
    if not settings.model_dir:
        raise ValueError("the fine-tuning worker needs MODEL_DIR")
    store = ModelStore(settings.model_dir)
    ran = 0
    while True:
        with store.worker_lock() as got:
            if got:
                for job_id in store.recover():
                    log.warning("job %s had been interrupted (its worker died): marked so", job_id)
                while (job := store.next_queued()) is not None:
                    run_job(store, job, settings, cfg, steps)
                    ran += 1
        # Released: a job queued while we held the lock (whose own worker gave up) is ours to run.
        if store.next_queued() is not None and got:
            continue
        if once:
            return ran
        time.sleep(poll_s)


def run_rq_job(job_id: str) -> str:
    """What an RQ worker runs for a job: wait for the ``MODEL_DIR`` worker lock, then run the record if it is
    still queued (``finetune_worker.run_job``). Returns the record's final state."""
    from .job_queue import valid_job_id

    job_id = valid_job_id(job_id)  # the argument came through Redis: a record id, nothing else
    settings = Settings.from_env()
    cfg = JobConfig.from_env()
    store = ModelStore(settings.model_dir)
    while True:
        with store.worker_lock() as got:
            if got:
                for stale in store.recover():
                    log.warning("job %s had been interrupted (its worker died): marked so", stale)
                job = store.read_job(job_id)
                if job is None or job.get("state") != QUEUED:
                    state = "missing" if job is None else job.get("state")
                    log.info("job %s is %s, not queued: nothing to run", job_id, state)
                    return str(state)
                return str(run_job(store, job, settings, cfg).get("state"))
        time.sleep(1.0)  # another worker runs a job on this MODEL_DIR


def yield_to_serving(cfg: JobConfig) -> None:
    """The worker's place beside a serving process on the same machine: its nice level and torch threads
    (``FINETUNE_NICE``, ``FINETUNE_THREADS``). benchmarks/click_during_finetune.py measures what a click pays."""
    if cfg.nice:
        try:
            os.nice(cfg.nice)  # serving keeps the CPU first
        except OSError:
            pass
        # Nice alone still gives the job about a tenth of a core that serving wants: measured, a click took 1.53x
        # as long beside the job. Linux's idle class runs the job only on cores nothing else wants.
        if hasattr(os, "sched_setscheduler"):
            try:
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)


def main_worker(once: bool, poll_s: float) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = Settings.from_env()
    cfg = JobConfig.from_env()
    yield_to_serving(cfg)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .job_queue import job_queue

    queue = job_queue(settings)
    if queue is not None:  # FINETUNE_QUEUE resolves to rq: take the jobs from Redis (job_queue.py)
        queue.work(once=once)
        return 0
    worker_loop(settings, cfg, once=once, poll_s=poll_s)
    return 0


__all__ = [
    "JobConfig",
    "JobSkipped",
    "JobSteps",
    "LabelStudioAPI",
    "TaskData",
    "collect_annotations",
    "main_worker",
    "run_job",
    "split_tasks",
    "worker_loop",
    "yield_to_serving",
]
