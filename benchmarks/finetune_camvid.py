"""Fine-tuning demonstration on CamVid through the backend's own loop, against a real Label Studio.

1. Picks ``--limit-frames`` frames of CamVid's ``finetune`` split and ``--heldout-frames`` of its ``heldout`` split
   (``splits.json``: whole video sequences, so no frame of a held-out sequence is ever trained on), evenly spread
   over each list, and up to ``--limit-instances`` instances per frame (the largest ones) from ``regions/``.
2. Starts Label Studio 1.23.2 (``.cache/ls-venv``, the e2e harness) and ``adaptiveclick serve`` with ``MODEL_DIR``
   and the checkpoint to start from, imports the fine-tune frames as Local Files tasks, and creates one annotation
   per frame through the API whose brush regions (RLE) are the chosen instances.
3. Presses "Start Training" (``POST /api/ml/{id}/train``) and waits for the backend's job (its worker process
   pulls the annotations, holds out a validation split, fine-tunes with AFL + click simulation, promotes when
   NoC@85 on that split is not worse) and checks that the served version and a prediction's ``model_version``
   changed.
4. Measures NoC@85/90 on the held-out frames with the evaluation command (robot clicker): the starting checkpoint,
   the fine-tuned one (promoted, or kept as a rejected candidate: ``FINETUNE_KEEP_REJECTED``), and the GrabCut
   baseline (``--method grabcut``), in the same run.

    python benchmarks/finetune_camvid.py --limit-frames 48 --heldout-frames 12 --out results/ft_camvid

Writes ``report.json`` and ``report.md`` to ``--out``. The default checkpoint is a snapshot of
``runs/starter/model_last.safetensors`` when present (else ``weights/starter.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.masks.rle import mask2rle  # noqa: E402
from testkit.ls_harness import LS_LEGACY_TOKEN, Backend, LabelStudio, keypoint, running  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    default_ckpt = REPO / "runs" / "starter" / "model_last.safetensors"
    if not default_ckpt.is_file():
        default_ckpt = REPO / "weights" / "starter.safetensors"
    default_data = Path(os.environ.get("ADAPTIVECLICK_DATA", REPO.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(default_ckpt), help="the model to start from (copied first)")
    p.add_argument("--data", default=str(default_data / "CamVid"), help="the CamVid folder")
    p.add_argument("--limit-frames", type=int, default=16, help="fine-tune frames imported and annotated")
    p.add_argument(
        "--heldout-frames", type=int, default=None, help="held-out frames measured (default: --limit-frames)"
    )
    p.add_argument("--limit-instances", type=int, default=3, help="largest instances per frame (annotated / measured)")
    # Unset recipe options leave the backend on its own defaults (model.training.finetune.FINETUNE_DEFAULTS), so the
    # demonstration measures what a user gets.
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (FINETUNE_STEPS; default: the job's)")
    p.add_argument("--batch-size", type=int, default=None, help="FINETUNE_BATCH_SIZE (default: the job's)")
    p.add_argument("--lr", type=float, default=None, help="FINETUNE_LR (default: the job's)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="FINETUNE_VAL_FRACTION (the job's own split)")
    p.add_argument("--max-clicks", type=int, default=20, help="robot clicks per instance (job and held-out)")
    p.add_argument("--max-extra-clicks", type=int, default=3, help="FINETUNE_MAX_EXTRA_CLICKS (iterative rounds 0..N)")
    p.add_argument("--amp", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="FINETUNE_AMP")
    p.add_argument(
        "--zoom-in-prob", type=float, default=None, help="FINETUNE_ZOOM_IN_PROB (share of zoom-in crops; the job's)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of the worker and of the measurements")
    p.add_argument("--job-timeout-min", type=float, default=60.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (Label Studio data, MODEL_DIR)")
    p.add_argument("--out", default=str(REPO / "results" / "finetune_camvid"))
    return p.parse_args(argv)


def spread(items: list[str], n: int) -> list[str]:
    if n >= len(items):
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, n).round().astype(int).tolist()))]


def largest_ids(regions: np.ndarray, k: int) -> list[int]:
    """Ids of the ``k`` largest regions, largest first (ties by id)."""
    ids, counts = np.unique(regions[regions > 0], return_counts=True)
    return [int(i) for i in ids[np.lexsort((ids, -counts))][:k]]


def largest_instances(regions: np.ndarray, k: int) -> list[np.ndarray]:
    return [regions == i for i in largest_ids(regions, k)]


def instance_classes(data: Path) -> dict[str, list[str]]:
    """Frame -> class name of each region id (``instances.csv`` + ``classes.csv``; index 0 is id 1)."""
    names = dict(line.split(",", 1) for line in (data / "classes.csv").read_text().splitlines()[1:] if line)
    rows = [line.split(",") for line in (data / "instances.csv").read_text().splitlines()[1:] if line]
    return {row[0]: [names[c] for c in row[4].split()] for row in rows}


def brush_region(mask: np.ndarray, i: int) -> dict:
    h, w = mask.shape
    return {
        "id": f"r{i}",
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]},
    }


RECIPE_ENV = {
    "steps": "FINETUNE_STEPS",
    "batch_size": "FINETUNE_BATCH_SIZE",
    "lr": "FINETUNE_LR",
    "zoom_in_prob": "FINETUNE_ZOOM_IN_PROB",
}


def recipe_env(args: argparse.Namespace) -> dict[str, str]:
    """The backend variables of the recipe options given on the command line (the rest: the job's defaults)."""
    return {var: str(getattr(args, name)) for name, var in RECIPE_ENV.items() if getattr(args, name) is not None}


def recipe(args: argparse.Namespace) -> dict:
    """The recipe the job trains with: the options given, else the job's defaults."""
    from model.training.finetune import finetune_config

    cfg = finetune_config()
    return {name: getattr(args, name) if getattr(args, name) is not None else getattr(cfg, name) for name in RECIPE_ENV}


def start_evaluation(
    args: argparse.Namespace, data_root: Path, out: Path, method: str, checkpoint: Path | None
) -> subprocess.Popen:
    """``adaptiveclick evaluate`` on the held-out set in a process of its own (``--threads`` torch threads)."""
    argv = [
        "--data-root",
        str(data_root),
        "--datasets",
        "CamVid-heldout",
        "--max-clicks",
        str(args.max_clicks),
        "--out",
        str(out),
        "--no-progress",
        "--method",
        method,
        "--device",
        "cpu",
    ]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    return subprocess.Popen([sys.executable, "-m", "cli", "evaluate", *argv], cwd=REPO, env=env)


def evaluate_all(
    args: argparse.Namespace,
    data_root: Path,
    out: Path,
    runs: dict[str, tuple[str, Path | None]],
    classes: dict[str, str],
) -> dict:
    """Run the evaluations side by side; returns their summaries by name (``classes``: instance name -> class)."""
    t0 = time.perf_counter()
    procs = {name: start_evaluation(args, data_root, out / name, method, ckpt) for name, (method, ckpt) in runs.items()}
    results = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"evaluation {name} ({runs[name]}) failed with exit code {proc.returncode}")
        measured = json.loads((out / name / "results.json").read_text())["datasets"]["CamVid-heldout"]
        summary = measured["summary"]
        by_class: dict[str, list[int]] = {}
        for instance in measured["instances"]:
            by_class.setdefault(classes[instance["name"]], []).append(instance["noc"]["85"])
        results[name] = {
            "noc85": summary["noc"]["85"],
            "noc90": summary["noc"]["90"],
            "nof85": summary["nof"]["85"],
            "nof90": summary["nof"]["90"],
            "instances": summary["num_instances"],
            "iou_at_1": summary["mean_iou_per_click"][0],
            "iou_at_5": summary["mean_iou_per_click"][min(4, args.max_clicks - 1)],
            "seconds": round(summary["total_time_s"], 1),
            "noc85_by_class": {
                c: {"instances": len(v), "noc85": round(float(np.mean(v)), 2)} for c, v in sorted(by_class.items())
            },
        }
    print(f"held-out evaluations (side by side): {time.perf_counter() - t0:.0f} s", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from model.checkpoint import read_metadata

    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    data = Path(args.data)
    splits = json.loads((data / "splits.json").read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ft-camvid-"))
    try:
        # --- data: fine-tune frames for Label Studio, a held-out dataset folder for the evaluation command ---
        root = tmp / "ls-root"
        (root / "images").mkdir(parents=True)
        finetune_frames, annotations = [], {}
        for frame in spread(splits["finetune"], args.limit_frames):
            regions = cv2.imread(str(data / "regions" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
            masks = largest_instances(regions, args.limit_instances)
            if not masks:
                continue
            shutil.copy(data / "images" / f"{frame}.jpg", root / "images" / f"{frame}.jpg")
            finetune_frames.append(frame)
            annotations[frame] = masks
        heldout = tmp / "eval" / "CamVid-heldout"
        (heldout / "images").mkdir(parents=True)
        (heldout / "regions").mkdir(parents=True)
        heldout_frames, heldout_instances, heldout_classes = [], 0, {}
        classes = instance_classes(data)
        for frame in spread(splits["heldout"], args.heldout_frames or args.limit_frames):
            regions = cv2.imread(str(data / "regions" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
            ids = largest_ids(regions, args.limit_instances)
            masks = [regions == i for i in ids]
            heldout_classes.update({f"{frame}#{n}": classes[frame][i - 1] for n, i in enumerate(ids, 1)})
            if not masks:
                continue
            label_map = np.zeros(regions.shape, np.uint16)
            for i, mask in enumerate(masks, 1):
                label_map[mask] = i
            cv2.imwrite(str(heldout / "regions" / f"{frame}.png"), label_map)
            shutil.copy(data / "images" / f"{frame}.jpg", heldout / "images" / f"{frame}.jpg")
            heldout_frames.append(frame)
            heldout_instances += len(masks)
        base = tmp / "base.safetensors"
        shutil.copy(args.checkpoint, base)  # a snapshot: a training run may rewrite its model_last
        meta = read_metadata(base)
        print(
            f"start checkpoint {args.checkpoint} ({meta.get('train_steps', '?')} training steps); "
            f"{len(finetune_frames)} fine-tune frames ({sum(map(len, annotations.values()))} instances), "
            f"{len(heldout_frames)} held-out frames ({heldout_instances} instances)",
            flush=True,
        )

        # --- Label Studio + backend, annotations through the API, Start Training ---
        t0 = time.perf_counter()
        model_dir = tmp / "models"
        ls = LabelStudio(tmp / "ls-data", root).start()
        backend = Backend(
            {
                "MODEL_ENGINE": "adaptiveclick",
                "MODEL_CHECKPOINT": str(base),
                "MODEL_DIR": str(model_dir),
                "DEVICE": "cpu",
                "LABEL_STUDIO_URL": ls.url,
                "LABEL_STUDIO_API_KEY": LS_LEGACY_TOKEN,
                "LOCAL_FILES_DOCUMENT_ROOT": str(root),
                "FINETUNE_VAL_FRACTION": str(args.val_fraction),
                "FINETUNE_MAX_CLICKS": str(args.max_clicks),
                "FINETUNE_THREADS": str(args.threads),
                "FINETUNE_MAX_MINUTES": str(args.job_timeout_min),
                "FINETUNE_AMP": args.amp,
                "FINETUNE_MAX_EXTRA_CLICKS": str(args.max_extra_clicks),
                "FINETUNE_KEEP_REJECTED": "true",
                "WORKERS": "1",
                "THREADS": "2",
                "NO_TRAFFIC_WARNING_S": "0",
                **recipe_env(args),
            },
            tmp / "backend.log",
        ).start()
        with running(ls, backend):
            client = ls.client()
            project = client.create_project("CamVid fine-tune")
            client.add_local_storage(project, root / "images")
            client.import_tasks(
                project, [{"data": {"image": f"/data/local-files/?d=images/{f}.jpg"}} for f in finetune_frames]
            )
            ml = client.connect_backend(project, backend.url)
            base_version = ml["model_version"]
            for task in client.tasks(project):
                frame = task["data"]["image"].rsplit("/", 1)[1].rsplit(".", 1)[0]
                result = [brush_region(m, i) for i, m in enumerate(annotations[frame])]
                client.call("POST", f"/api/tasks/{task['id']}/annotations", json={"task": task["id"], "result": result})
            phases["label_studio_setup_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            client.call("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
            deadline = time.monotonic() + args.job_timeout_min * 60 + 600
            job = None
            while time.monotonic() < deadline:
                jobs = [json.loads(p.read_text()) for p in sorted((model_dir / "jobs").glob("job-*.json"))]
                if jobs and jobs[-1]["state"] not in ("queued", "running"):
                    job = jobs[-1]
                    break
                time.sleep(5)
            if job is None:
                raise TimeoutError("the fine-tuning job did not finish")
            phases["job_s"] = round(time.perf_counter() - t0, 1)
            print(f"job {job['id']}: {job['state']}: {job.get('message')}", flush=True)
            served = None
            if job.get("promoted"):
                time.sleep(5)  # MODEL_WATCH_S
                health = requests.get(backend.url + "/health", timeout=10).json()
                task = client.tasks(project)[0]
                reply = client.interactive(ml["id"], task["id"], [keypoint(180, 240, True, 480, 360)])
                served = {
                    "health": health["model_version"],
                    "prediction": reply["data"]["model_version"],
                    "versions": client.call("GET", f"/api/ml/{ml['id']}/versions")["versions"],
                }
                print(f"served after the job: {served}", flush=True)
            job_log = (model_dir / "jobs" / f"{job['id']}.log").read_text()
        if job["state"] != "done":
            raise RuntimeError(f"job ended {job['state']}: {job.get('message')}\n{job_log[-3000:]}")
        tuned = (
            (model_dir / "versions" / job["version"] / "model.safetensors")
            if job.get("promoted")
            else Path(job["candidate"])
        )

        # --- held-out measurements: before, after, GrabCut ---
        t0 = time.perf_counter()
        results = evaluate_all(
            args,
            tmp / "eval",
            out,
            {"before": ("adaptiveclick", base), "after": ("adaptiveclick", tuned), "grabcut": ("grabcut", None)},
            heldout_classes,
        )
        phases["heldout_eval_s"] = round(time.perf_counter() - t0, 1)
        phases["total_s"] = round(time.perf_counter() - t_start, 1)
        used = recipe(args)
        report = {
            "settings": {
                k: getattr(args, k)
                for k in (
                    "checkpoint",
                    "limit_frames",
                    "heldout_frames",
                    "limit_instances",
                    "val_fraction",
                    "max_clicks",
                    "max_extra_clicks",
                    "amp",
                    "threads",
                )
            },
            "recipe": used,  # steps, batch_size, lr, zoom_in_prob: as given, else the job's defaults
            "start_checkpoint_train_steps": meta.get("train_steps"),
            "base_version": base_version,
            "finetune_frames": finetune_frames,
            "heldout_frames": heldout_frames,
            "heldout_instances": heldout_instances,
            "job": {
                k: job.get(k)
                for k in (
                    "id",
                    "state",
                    "promoted",
                    "version",
                    "message",
                    "data",
                    "split",
                    "metrics",
                    "training",
                    "seconds",
                )
            },
            "served_after_job": served,
            "heldout": results,
            "wall_times": phases,
        }
        (out / "report.json").write_text(json.dumps(report, indent=2))
        lines = [
            (
                f"Start: `{args.checkpoint}` ({meta.get('train_steps', '?')} steps), {len(finetune_frames)} fine-tune "
                f"frames / {sum(map(len, annotations.values()))} instances annotated through Label Studio, "
                f"{used['steps']} steps x batch {used['batch_size']}, lr {used['lr']}, "
                f"zoom-in crops {used['zoom_in_prob']:.0%}, "
                f"autocast {args.amp}, {args.threads} thread(s)."
            ),
            f"Job {job['id']}: {job['message']}",
            "",
            f"Held-out CamVid ({len(heldout_frames)} frames, {heldout_instances} instances, "
            f"max {args.max_clicks} clicks):",
            "",
            "| model | NoC@85 | NoC@90 | NoF@85 | NoF@90 | IoU@1 | IoU@5 | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results.items():
            lines.append(
                f"| {name} | {r['noc85']:.2f} | {r['noc90']:.2f} | {r['nof85']} | {r['nof90']} | "
                f"{r['iou_at_1']:.3f} | {r['iou_at_5']:.3f} | {r['seconds']} |"
            )
        lines += [
            "",
            "s: each evaluation's own wall time; the three ran side by side on the CPU.",
            "",
            "NoC@85 by class (instances): "
            + "; ".join(
                f"{c} ({v['instances']}): "
                + " / ".join(f"{name} {r['noc85_by_class'][c]['noc85']:.2f}" for name, r in results.items())
                for c, v in results["before"]["noc85_by_class"].items()
            ),
        ]
        lines += ["", "Wall times: " + ", ".join(f"{k} {v} s" for k, v in phases.items())]
        (out / "report.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
