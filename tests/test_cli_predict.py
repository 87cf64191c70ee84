"""`adaptiveclick predict`: clicks in, mask/probabilities/overlay out; user errors are one-line messages."""

import cv2
import numpy as np
import pytest

from cli import main

from prerequisites import missing


@pytest.fixture()
def grabcut_image(shared_dir):
    path = shared_dir / "datasets" / "GrabCut" / "images" / "37073.jpg"
    if not path.is_file():
        missing(f"{path} not found")
    return path


def test_predict_writes_mask_probabilities_and_overlay(tmp_path, golden_dir, grabcut_image):
    out, prob, over = tmp_path / "mask.png", tmp_path / "prob.npy", tmp_path / "overlay.png"
    status = main(
        [
            "predict",
            str(grabcut_image),
            "--checkpoint",
            str(golden_dir / "tiny_official.pth"),
            "--click",
            "104,204",
            "--click",
            "86,241",
            "--click",
            "20,20,neg",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--prob",
            str(prob),
            "--overlay",
            str(over),
        ]
    )
    assert status == 0
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    probs = np.load(prob)
    assert mask.shape == probs.shape == (321, 481) and probs.dtype == np.float32
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, probs > 0.49)
    assert cv2.imread(str(over)).shape == (321, 481, 3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--click", "1000,5"], "outside the 321x481 image"),
        (["--click", "-5,100"], "click (row=-5, col=100) is outside"),  # not argparse's "expected one argument"
        (["--click", "5,5", "--refine", "sharpen"], "unknown refinement 'sharpen'"),
        (["--click", "5,5", "--checkpoint", "/nonexistent.pth"], "checkpoint not found"),
        (["--click", "5,5", "--dtype", "fp16", "--device", "cpu"], "fp16"),
    ],
)
def test_predict_reports_user_errors(tmp_path, golden_dir, grabcut_image, capsys, extra, message):
    args = ["predict", str(grabcut_image), "--out", str(tmp_path / "m.png"), "--device", "cpu"]
    if "--checkpoint" not in extra:
        args += ["--checkpoint", str(golden_dir / "tiny_official.pth")]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_click_syntax_errors_exit_with_usage(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["predict", "x.png", "--click", "5;5", "--out", str(tmp_path / "m.png")])
    assert info.value.code == 2
    assert "must be ROW,COL" in capsys.readouterr().err


def test_missing_image_is_reported(capsys, tmp_path):
    assert main(["predict", str(tmp_path / "none.png"), "--click", "1,1", "--out", str(tmp_path / "m.png")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_version_and_the_zoom_flag_spelled_as_in_evaluate(capsys, tmp_path, golden_dir, grabcut_image):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("adaptiveclick ")
    args = [
        "predict",
        str(grabcut_image),
        "--checkpoint",
        str(golden_dir / "tiny_official.pth"),
        "--device",
        "cpu",
        "--click",
        "104,204",
        "--out",
    ]
    assert main(args + [str(tmp_path / "a.png"), "--no-zoom-in"]) == 0
    assert main(args + [str(tmp_path / "b.png"), "--no-zoom"]) == 0  # the old spelling still works
    assert np.array_equal(cv2.imread(str(tmp_path / "a.png")), cv2.imread(str(tmp_path / "b.png")))


def test_weights_list_prints_a_checkpoint_path_that_works(capsys):
    from pathlib import Path

    assert main(["weights", "list"]) == 0
    uses = [
        line.split("MODEL_CHECKPOINT=", 1)[1]
        for line in capsys.readouterr().out.splitlines()
        if "MODEL_CHECKPOINT=" in line
    ]
    assert uses and all(Path(u).is_absolute() and u.endswith(".pth") for u in uses)
