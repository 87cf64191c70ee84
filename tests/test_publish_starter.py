"""scripts/publish_starter.py: choose a run's weights on its validation rows, publish only what beats the shipped."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import read_metadata, save_checkpoint
from model.evaluation.report import build_results, write_results
from model.evaluation.runner import InstanceResult
from model.weights import sha256_file

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("publish_starter", REPO / "scripts" / "publish_starter.py")
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)


def _eval_csv(run: Path, rows: list[tuple[int, str, str, float, float]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = ["step,dataset,weights,instances,noc85,noc90,iou1"]
    lines += [f"{step},{data},{weights},30,{n85},{n90},0.5" for step, data, weights, n85, n90 in rows]
    (run / "eval.csv").write_text("\n".join(lines) + "\n")


def _clicks_to(mean: float, instances: int) -> list[int]:
    """Integer clicks per instance whose mean is ``mean`` (to 1/instances)."""
    total = round(mean * instances)
    return [total // instances + (i < total % instances) for i in range(instances)]


def _results(folder: Path, noc: dict[str, tuple[float, float]]) -> None:
    """A results.json written by the evaluation's own report code, with these NoC@85 / NoC@90 means."""
    per_dataset = {}
    for name, (n85, n90) in noc.items():
        per_dataset[name] = [
            InstanceResult(f"{name}-{i}", [0.5] * (a - 1) + [0.87] * (b - a) + [0.95], time_s=0.2 * b)
            for i, (a, b) in enumerate(zip(_clicks_to(n85, 10), _clicks_to(n90, 10)))
        ]
    settings = {"stop_iou": 0.9, "zoom_in": True, "flip": False, "refine": "guided,clean", "target_size": "native"}
    write_results(build_results("adaptiveclick", settings, per_dataset, (0.85, 0.90), 20), folder)


def test_the_run_publishes_the_weights_its_validation_prefers(tmp_path):
    run = tmp_path / "run"
    _eval_csv(run, [(0, "ECSSD:val", "last", 4.5, 8.7), (9, "ECSSD:val", "last", 4.0, 7.5)])
    (run / "final.safetensors").write_bytes(b"")
    with open(run / "eval.csv", "a") as handle:
        handle.write("9,ECSSD:val,ema,30,4.1,7.1,0.5\n")
    with pytest.raises(publish.PublishError, match="has not finished"):
        publish.choose_weights(run)  # the EMA wins at the last step, and its final file is missing
    (run / "final_ema.safetensors").write_bytes(b"")
    chosen, rows = publish.choose_weights(run)
    assert chosen.name == "final_ema.safetensors" and len(rows) == 3
    with open(run / "eval.csv", "a") as handle:  # a second set where the final weights win by more
        handle.write("9,COCO-MVal:val,last,30,5.0,7.0,0.5\n9,COCO-MVal:val,ema,30,5.0,8.0,0.5\n")
    assert publish.choose_weights(run)[0].name == "final.safetensors"
    assert publish.choose_weights(run, ["ECSSD:val"])[0].name == "final_ema.safetensors"
    with pytest.raises(publish.PublishError, match="no rows for Pets:val"):
        publish.choose_weights(run, ["Pets:val"])
    with pytest.raises(publish.PublishError, match="no eval.csv"):
        publish.choose_weights(tmp_path / "elsewhere")


def test_only_a_candidate_that_beats_the_shipped_starter_is_published(tmp_path, tiny_model, capsys):
    weights, results = tmp_path / "weights", tmp_path / "results"
    weights.mkdir()
    shipped = weights / "starter.safetensors"
    save_checkpoint(tiny_model, shipped, {"version": "starter-s7600", "train_wall_time_s": "19958"})
    (weights / "MODEL_CARD.md").write_text("the shipped card\n")
    trained = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)
    config = {"init": str(shipped), "steps": 8, "data": ["/d/ECSSD"], "holdout": ["ECSSD"], "ema_decay": 0.999}
    candidate = save_checkpoint(
        trained,
        tmp_path / "final.safetensors",
        {"train_steps": "8", "train_wall_time_s": "3600", "train_config": json.dumps(config), "train_weights": "last"},
    )
    _results(results / "shipped", {"GrabCut": (3.5, 5.4), "Berkeley": (5.7, 8.6)})
    _results(results / "grabcut", {"GrabCut": (3.5, 4.8), "Berkeley": (8.2, 10.8)})
    argv = ["--checkpoint", str(candidate), "--results", str(results), "--skip-eval", "--weights-dir", str(weights)]

    _results(results / "candidate", {"GrabCut": (3.0, 4.5), "Berkeley": (5.8, 8.0)})  # better @90, worse @85
    before = shipped.read_bytes()
    assert publish.main(argv) == 1
    assert "Berkeley NoC@85 5.80 is above the shipped 5.70" in capsys.readouterr().err
    assert shipped.read_bytes() == before and (weights / "MODEL_CARD.md").read_text() == "the shipped card\n"

    _results(results / "candidate", {"GrabCut": (3.0, 4.5), "Berkeley": (5.5, 8.0)})
    assert publish.main(argv) == 0
    meta = read_metadata(shipped)
    assert meta["version"] == "starter-s7600+s8" and meta["train_wall_time_total_s"] == str(19958 + 3600)
    assert (weights / "starter.sha256").read_text().split()[0] == sha256_file(shipped)
    card = (weights / "MODEL_CARD.md").read_text()
    assert "continues `starter-s7600`" in card and "6.54 h with the runs it" in card
    for row in ("| new starter | GrabCut | 10 | 3.00 | 4.50 |", "| previous starter | Berkeley | 10 | 5.70 | 8.60 |"):
        assert row in card
    assert "refine `guided,clean`" in card and "10% of ECSSD held out" in card
