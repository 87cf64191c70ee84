"""results.json, the mean-IoU-per-click plot and the summary table."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import compute_noc, mean_iou_per_click, noc_of_instance, seconds_per_click, threshold_label
from .runner import InstanceResult

RESULTS_FORMAT = "adaptiveclick-noc/1"
RESULTS_FILE = "results.json"
PLOT_FILE = "miou_vs_clicks.png"
COMPARE_PLOT_FILE = "compare_miou_vs_clicks.png"


def summarize(results: Sequence[InstanceResult], thresholds: Sequence[float], max_clicks: int) -> dict[str, Any]:
    """NoC@t, its std, NoF@t, SPC and the mean IoU per click of one dataset."""
    all_ious = [result.ious for result in results]
    noc_mean, noc_std, nof = compute_noc(all_ious, thresholds, max_clicks)
    labels = [threshold_label(threshold) for threshold in thresholds]
    total_time = sum(result.time_s for result in results)
    total_clicks = sum(result.num_clicks for result in results)
    return {
        "num_instances": len(results),
        "noc": dict(zip(labels, noc_mean)),
        "noc_std": dict(zip(labels, noc_std)),
        "nof": dict(zip(labels, nof)),
        "spc_s": seconds_per_click([total_time], [total_clicks]),
        "total_time_s": total_time,
        "total_clicks": total_clicks,
        "mean_iou_per_click": mean_iou_per_click(all_ious, max_clicks),
    }


def instance_record(result: InstanceResult, thresholds: Sequence[float], max_clicks: int) -> dict[str, Any]:
    record = {
        "name": result.name,
        "clicks": [click.as_list() for click in result.clicks],
        "ious": result.ious,
        "noc": {threshold_label(t): noc_of_instance(result.ious, t, max_clicks) for t in thresholds},
        "time_s": result.time_s,
    }
    if result.box is not None:
        record["box"] = list(result.box)
    return record


def build_results(
    method: str,
    settings: dict[str, Any],
    per_dataset: dict[str, Sequence[InstanceResult]],
    thresholds: Sequence[float],
    max_clicks: int,
    dataset_paths: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole `results.json` document."""
    datasets = {}
    for name, results in per_dataset.items():
        datasets[name] = {
            "path": (dataset_paths or {}).get(name),
            "summary": summarize(results, thresholds, max_clicks),
            "instances": [instance_record(result, thresholds, max_clicks) for result in results],
        }
    return {
        "format": RESULTS_FORMAT,
        "method": method,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**settings, "max_clicks": max_clicks, "iou_thresholds": list(thresholds)},
        "datasets": datasets,
    }


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(results, indent=1))
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results file not found (expected a {RESULTS_FILE} written by evaluate)")
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or "datasets" not in results or "method" not in results:
        raise ValueError(f"{path}: not an evaluation results file (no 'method' / 'datasets')")
    return results


def _line_labels(runs: Sequence[dict[str, Any]], sources: Sequence[str] | None) -> list[str]:
    labels = [run["method"] for run in runs]
    if len(set(labels)) < len(labels) and sources:
        labels = [f"{label} ({source})" for label, source in zip(labels, sources)]
    return labels


def plot_mean_iou(runs: Sequence[dict[str, Any]], path: str | Path, sources: Sequence[str] | None = None) -> Path:
    """One panel per dataset: mean IoU against the number of clicks, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    dataset_names = list(dict.fromkeys(name for run in runs for name in run["datasets"]))
    columns = max(1, len(dataset_names))
    figure, axes = plt.subplots(1, columns, figsize=(4.5 * columns, 3.8), squeeze=False)
    for axis, dataset_name in zip(axes[0], dataset_names):
        for run, label in zip(runs, _line_labels(runs, sources)):
            if dataset_name not in run["datasets"]:
                continue
            curve = run["datasets"][dataset_name]["summary"]["mean_iou_per_click"]
            axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=label)
        axis.set_title(dataset_name)
        axis.set_xlabel("number of clicks")
        axis.set_ylabel("mean IoU")
        axis.set_ylim(0.0, 1.0)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def format_table(runs: Sequence[dict[str, Any]], sources: Sequence[str] | None = None) -> str:
    """Plain-text table: method, dataset, NoC@t and NoF@t for every threshold, SPC and time."""
    labels = list(dict.fromkeys(k for run in runs for d in run["datasets"].values() for k in d["summary"]["noc"]))
    header = ["Method", "Dataset", "N", "IoU@1"]
    header += [f"NoC@{label}" for label in labels] + [f"NoF@{label}" for label in labels]
    header += ["SPC,s", "Time"]
    rows = []
    for run, method in zip(runs, _line_labels(runs, sources)):
        for dataset_name, dataset in run["datasets"].items():
            summary = dataset["summary"]
            first_iou = summary["mean_iou_per_click"][0] if summary["mean_iou_per_click"] else None
            row = [method, dataset_name, str(summary["num_instances"]), _format_number(first_iou, ".3f")]
            row += [_format_number(summary["noc"].get(label), ".2f") for label in labels]
            row += [_format_number(summary["nof"].get(label), "d") for label in labels]
            row += [_format_number(summary["spc_s"], ".3f"), _format_duration(summary["total_time_s"])]
            rows.append(row)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.rjust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _format_number(value: Any, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))
