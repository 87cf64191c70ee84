"""The robot clicker against the reference's recorded clicks (golden/clicker_cases.pt)."""

import numpy as np
import pytest
import torch

from model.evaluation.clicker import Clicker, next_click

from prerequisites import missing


@pytest.fixture(scope="module")
def clicker_cases(shared_dir):
    path = shared_dir / "golden" / "clicker_cases.pt"
    if not path.is_file():
        missing(f"{path} not found")
    return torch.load(path, weights_only=True)


def test_has_all_cases(clicker_cases):
    assert len(clicker_cases["cases"]) == 25


@pytest.mark.parametrize("index", range(25))
def test_next_click_matches_reference(clicker_cases, index):
    case = clicker_cases["cases"][index]
    clicker = Clicker(case["gt_mask"].numpy(), init_clicks=case["prev_clicks"])
    click = clicker.make_next_click(case["pred_mask"].numpy())
    expected = case["next_click"]
    assert (click.row, click.col, click.is_positive, click.index) == (
        expected["row"],
        expected["col"],
        expected["is_positive"],
        expected["index"],
    ), case["name"]


def test_click_sequence_matches_reference(clicker_cases):
    sequence = clicker_cases["sequence"]
    clicker = Clicker(sequence["gt_mask"].numpy())
    for pred_mask in sequence["pred_masks"].numpy():
        clicker.make_next_click(pred_mask)
    got = [(c.row, c.col, c.is_positive, c.index) for c in clicker.clicks]
    expected = [(c["row"], c["col"], c["is_positive"], c["index"]) for c in sequence["clicks"]]
    assert got == expected


def test_ignore_pixels_never_clicked():
    gt = np.full((30, 30), -1, dtype=np.int8)
    gt[10:20, 10:20] = 1
    gt[0:5, :] = 0
    pred = np.zeros_like(gt, dtype=bool)
    pred[20:, :] = True  # a false positive only inside the ignore area
    row, col, positive = next_click(gt, pred)
    assert positive and gt[row, col] == 1
