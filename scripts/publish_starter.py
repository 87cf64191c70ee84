"""Publish a trained checkpoint as the default starter, only if it beats the shipped one, with its model card.

    python scripts/publish_starter.py --run RUN_DIR [--results results/starter_card] [--skip-eval]
    python scripts/publish_starter.py --checkpoint FILE.safetensors [...]

``--run`` takes a finished training run and picks its final weights or their EMA by the run's own validation rows
(``eval.csv`` at the last step, the ``--select-on`` sets: lower mean NoC@90, then NoC@85), never by the evaluation
sets. The candidate, the shipped starter and the GrabCut baseline are then evaluated in one run on the full GrabCut
and Berkeley sets with the settings ``serve`` uses, one CPU thread each. The candidate is published only if it
beats the shipped starter: NoC@90 lower on both sets and NoC@85 no higher on either. Publishing writes
``starter.safetensors`` (atomic, with its provenance), ``starter.sha256`` and ``MODEL_CARD.md`` in
``--weights-dir``; a refusal writes nothing there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint  # noqa: E402
from model.evaluation.metrics import threshold_label  # noqa: E402
from model.training.data import DEFAULT_HOLDOUT_FRACTION  # noqa: E402
from model.weights import sha256_file  # noqa: E402

DATASETS = ("GrabCut", "Berkeley")
RUNS = ("candidate", "shipped", "grabcut")  # result folders under --results
AT85, AT90 = threshold_label(0.85), threshold_label(0.90)  # the keys of results.json's "noc" and "nof"
LABELS = {"candidate": "new starter", "shipped": "previous starter", "grabcut": "GrabCut baseline"}


class PublishError(Exception):
    """A candidate that cannot or must not be published; the message says why."""


# -- choosing the weights of a run ----------------------------------------------------------------


def validation_rows(run: Path) -> list[dict[str, Any]]:
    path = run / "eval.csv"
    if not path.is_file():
        raise PublishError(
            f"{run}: no eval.csv; train with --eval-every and --holdout so there is something to choose on"
        )
    with open(path, newline="") as handle:
        rows = [
            {**row, "step": int(row["step"]), "noc85": float(row["noc85"]), "noc90": float(row["noc90"])}
            for row in csv.DictReader(handle)
        ]
    if not rows:
        raise PublishError(f"{path} holds no rows")
    return rows


def choose_weights(run: Path, select_on: list[str] | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """The final weights or their EMA, whichever has the lower mean NoC@90 (then NoC@85) at the last validation,
    over the ``select_on`` datasets of ``eval.csv`` (default all)."""
    rows = validation_rows(run)
    last_step = max(row["step"] for row in rows)
    at_end = [row for row in rows if row["step"] == last_step and (not select_on or row["dataset"] in select_on)]
    if select_on and not at_end:
        raise PublishError(f"{run}/eval.csv has no rows for {', '.join(select_on)} at step {last_step}")
    files = {"last": run / "final.safetensors", "ema": run / "final_ema.safetensors"}

    def score(weights: str) -> tuple[float, float]:
        mine = [row for row in at_end if row["weights"] == weights]
        return sum(r["noc90"] for r in mine) / len(mine), sum(r["noc85"] for r in mine) / len(mine)

    candidates = sorted({row["weights"] for row in at_end} & set(files), key=score)
    if not candidates:
        raise PublishError(f"{run}/eval.csv has no 'last' or 'ema' rows at step {last_step}")
    chosen = files[candidates[0]]
    if not chosen.is_file():
        raise PublishError(f"{chosen} does not exist: the run has not finished (resume it, or pass --checkpoint)")
    return chosen, rows


# -- evaluation and the gate ----------------------------------------------------------------------


def evaluate_all(checkpoints: dict[str, Path], results: Path, jobs: int) -> None:
    """`evaluate` every checkpoint and the GrabCut baseline with the served defaults, ``jobs`` at a time, one
    thread each."""
    common = ["--datasets", ",".join(DATASETS), "--device", "cpu", "--no-progress"]
    argv = {name: ["--method", "adaptiveclick", "--checkpoint", str(path)] for name, path in checkpoints.items()}
    argv["grabcut"] = ["--method", "grabcut"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def evaluate(name: str) -> int:
        command = [sys.executable, "-m", "cli", "evaluate", *argv[name], "--out", str(results / name), *common]
        return subprocess.run(command, cwd=REPO, env=env).returncode

    with ThreadPoolExecutor(jobs) as pool:
        failed = [name for name, code in zip(argv, pool.map(evaluate, argv)) if code != 0]
    if failed:
        raise PublishError(f"evaluation failed for: {', '.join(failed)}")


def load_run(results: Path, name: str) -> dict[str, Any]:
    path = results / name / "results.json"
    if not path.is_file():
        raise PublishError(f"{path} is missing: evaluate first (drop --skip-eval)")
    data = json.loads(path.read_text())
    missing = [d for d in DATASETS if d not in data["datasets"]]
    if missing:
        raise PublishError(f"{path} lacks {', '.join(missing)}")
    return data


def gate(candidate: dict[str, Any], shipped: dict[str, Any]) -> list[str]:
    """Why the candidate does not beat the shipped starter (empty: it does)."""
    reasons = []
    for name in DATASETS:
        new, old = candidate["datasets"][name]["summary"]["noc"], shipped["datasets"][name]["summary"]["noc"]
        if not new[AT90] < old[AT90]:
            reasons.append(f"{name} NoC@90 {new[AT90]:.2f} is not below the shipped {old[AT90]:.2f}")
        if new[AT85] > old[AT85]:
            reasons.append(f"{name} NoC@85 {new[AT85]:.2f} is above the shipped {old[AT85]:.2f}")
    return reasons


# -- the model card -------------------------------------------------------------------------------


def summary_rows(run: dict[str, Any], label: str) -> list[str]:
    rows = []
    for name in DATASETS:
        s = run["datasets"][name]["summary"]
        noc, nof, iou = s["noc"], s["nof"], s["mean_iou_per_click"]
        rows.append(
            f"| {label} | {name} | {s['num_instances']} | {noc[AT85]:.2f} | {noc[AT90]:.2f} | "
            f"{nof[AT85]} | {nof[AT90]} | {iou[0]:.3f} | {iou[2]:.3f} | {iou[4]:.3f} | {s['spc_s']:.3f} |"
        )
    return rows


def protocol(settings: dict[str, Any]) -> str:
    on = {True: "on", False: "off"}
    return (
        f"robot clicker, up to {settings['max_clicks']} clicks, stop at IoU {settings['stop_iou']:.2f}; the settings "
        f"`serve` uses: zoom-in {on[bool(settings['zoom_in'])]}, flip TTA {on[bool(settings['flip'])]}, "
        f"refine `{settings['refine']}`, input {settings['target_size']}"
    )


def validation_table(rows: list[dict[str, Any]], chosen: str) -> str:
    first, last = min(r["step"] for r in rows), max(r["step"] for r in rows)
    found = {(r["step"], r["dataset"], r["weights"]): f"{r['noc85']:.2f} / {r['noc90']:.2f}" for r in rows}
    lines = [
        f"| validation split (first {rows[0]['instances']} held-out objects) | step {first} NoC@85 / @90 | "
        f"step {last}, final weights | step {last}, EMA |",
        "|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        cells = [
            found.get(key, "-") for key in ((first, dataset, "last"), (last, dataset, "last"), (last, dataset, "ema"))
        ]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nPublished: the {chosen} (lower NoC@90 on the validation split at the end)."


def model_card(
    digest: str,
    meta: dict[str, str],
    parent: dict[str, str] | None,
    runs: dict[str, dict],
    chosen: str,
    rows: list[dict[str, Any]] | None,
) -> str:
    config = json.loads(meta.get("config", "{}"))
    train = json.loads(meta.get("train_config", "{}"))
    steps = int(train.get("steps", 0) or 0)
    milestones = ", ".join(f"step {round(m * steps)}" for m in train.get("lr_milestones", [])) or "-"
    own_h = float(meta.get("train_wall_time_s", 0) or 0) / 3600
    total_h = float(meta.get("train_wall_time_total_s", 0) or 0) / 3600
    lineage = (
        f"continues `{parent.get('version', train.get('init'))}` (`--init`), itself trained from scratch"
        if parent
        else "trained from scratch"
    )
    holdout = train.get("holdout") or []
    extras = []
    if holdout:
        share = float(train.get("holdout_fraction") or DEFAULT_HOLDOUT_FRACTION)
        extras.append(f"{share:.0%} of {', '.join(holdout)} held out as the validation split")
    if train.get("zoom_in_prob"):
        extras.append(f"zoom-in crops with p {train['zoom_in_prob']}")
    if train.get("ema_decay"):
        extras.append(f"EMA of the weights (decay {train['ema_decay']})")
    table = "\n".join(
        [
            "| method | dataset | instances | NoC@85 | NoC@90 | NoF@85 | NoF@90 | IoU@1 | IoU@3 | IoU@5 | s/click |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(row for name in RUNS if name in runs for row in summary_rows(runs[name], LABELS[name])),
        ]
    )
    minutes = sum(d["summary"]["total_time_s"] for run in runs.values() for d in run["datasets"].values()) / 60
    validation = f"\n## Validation\n{validation_table(rows, chosen)}\n" if rows else ""
    return f"""# Starter model card

`weights/starter.safetensors` is what `adaptiveclick predict`, `evaluate` and `serve` load when no
checkpoint is configured. Version `{meta.get("version")}`, sha256 `{digest}` (also in `starter.sha256`).

## Model
AdaptiveClick architecture (plain ViT with click embedding, SimpleFPN, deformable pixel decoder, CAMD),
`{config.get("name", "?")}` config sized for CPUs, {lineage} (no pretrained weights are available on our machines):

```json
{json.dumps(config, indent=1)}
```

## Training
- Data (training-only folders of the project's shared datasets; never GrabCut, Berkeley or CamVid):
  {", ".join(Path(p).name for p in train.get("data", []))}{"; " + "; ".join(extras) if extras else ""}.
- Steps {meta.get("train_steps")} of a planned {steps}, batch {train.get("batch_size", "?")},
  {meta.get("train_samples", "?")} samples, crop {config.get("image_size", "?")} px, Adam lr {train.get("lr", "?")}
  (warm-up {train.get("warmup_steps", "?")} steps, x{train.get("lr_gamma", "?")} at {milestones}),
  AFL set criterion with deep supervision, 0-{train.get("max_extra_clicks", "?")} iterative click rounds,
  autocast {train.get("amp", "?")}.
- Wall time {own_h:.2f} h on a 2-core CPU (no GPU), resumed across sessions; {total_h:.2f} h with the runs it
  continues. The run log is in `model/training/TRAINING.md`.
{validation}
## Evaluation
Standard protocol ({protocol(runs["candidate"]["settings"])}); the previous starter (the one it replaces)
and the GrabCut baseline measured in the same run on the same machine (one thread each, {minutes:.0f} min of
evaluation in all):

{table}

IoU@k is the mean IoU after k clicks.

## Limits
A small ViT trained from scratch for {max(own_h, total_h):.0f} h on 2 CPU cores on the folders above: expect more
clicks than the released AdaptiveClick models (ViT-B trained on COCO+LVIS on GPUs: GrabCut NoC@90 about 1.5), above
all for fine boundaries (the network predicts at a quarter of its {config.get("image_size", "?")} px input).
Load a released checkpoint with `MODEL_CHECKPOINT` / `--checkpoint` when you have one, and fine-tune on your own
annotations.
"""


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a finished training run's folder (final weights or EMA, chosen on eval.csv)")
    source.add_argument("--checkpoint", help="a .safetensors checkpoint to publish as it is")
    parser.add_argument(
        "--select-on", help="with --run: the eval.csv datasets the choice of weights rests on (default: all)"
    )
    parser.add_argument("--results", default=str(REPO / "results" / "starter_card"))
    parser.add_argument("--skip-eval", action="store_true", help="reuse the evaluations already in --results")
    parser.add_argument("--jobs", type=int, default=2, help="evaluations at a time (default %(default)s: 2 cores)")
    parser.add_argument("--weights-dir", default=str(REPO / "weights"), help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)

    weights, results = Path(args.weights_dir), Path(args.results)
    target = weights / "starter.safetensors"
    try:
        if args.run:
            select_on = [name for name in (args.select_on or "").split(",") if name]
            candidate, rows = choose_weights(Path(args.run), select_on)
        else:
            candidate, rows = Path(args.checkpoint), None
        meta = read_metadata(candidate)
        model = load_checkpoint(candidate)
        parent = read_metadata(target) if target.is_file() else None
        checkpoints = {"candidate": candidate, **({"shipped": target} if parent is not None else {})}
        if not args.skip_eval:
            evaluate_all(checkpoints, results, args.jobs)
        runs = {name: load_run(results, name) for name in [*checkpoints, "grabcut"]}
        reasons = gate(runs["candidate"], runs["shipped"]) if parent is not None else []
        if reasons:
            raise PublishError("not published, it does not beat the shipped starter: " + "; ".join(reasons))
    except (PublishError, CheckpointError) as error:
        print(f"publish_starter: {error}", file=sys.stderr)
        return 1

    train = json.loads(meta.get("train_config", "{}"))
    init = Path(str(train.get("init") or ""))
    init = init if init.is_absolute() else REPO / init  # the trainer runs from the repository root
    inherits = parent is not None and init.resolve() == target.resolve()
    lineage = parent if inherits else None
    own = int(meta.get("train_wall_time_s", 0) or 0)
    before = int(lineage.get("train_wall_time_total_s") or lineage.get("train_wall_time_s") or 0) if lineage else 0
    version = (
        f"{lineage.get('version', 'starter')}+s{meta.get('train_steps')}"
        if lineage
        else f"starter-s{meta.get('train_steps')}"
    )
    provenance = {
        key: meta.get(key, "?")
        for key in ("train_steps", "train_samples", "train_wall_time_s", "train_data", "train_config")
    }
    published = {**provenance, "version": version, "train_wall_time_total_s": str(own + before)}
    published["train_weights"] = meta.get("train_weights", "last")
    save_checkpoint(model, target, published)
    digest = sha256_file(target)
    (weights / "starter.sha256").write_text(f"{digest}  starter.safetensors\n")
    chosen = "EMA of the weights" if published["train_weights"].startswith("ema") else "final weights"
    card = model_card(digest, {**meta, **published}, lineage, runs, chosen, rows)
    (weights / "MODEL_CARD.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
