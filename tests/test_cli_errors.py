"""Command-line trips: a misspelled option, a stray argument, a folder given as ``--checkpoint`` and a misspelt
dataset name each get one line that names what was wrong (and the near match), in the command's own usage."""

import cv2
import numpy as np
import pytest

from cli import build_parser, main


def _image(tmp_path):
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.zeros((32, 48, 3), np.uint8))
    return str(path)


@pytest.mark.parametrize(
    "argv, typo, near",
    [
        (["predict", "x.png", "--clik", "100,100", "--out", "m.png"], "--clik", "--click"),
        (["predict", "x.png", "--click", "1,1", "--out", "m.png", "--overlya", "o.png"], "--overlya", "--overlay"),
        (["evaluate", "--datasts", "GrabCut"], "--datasts", "--datasets"),
        (["weights", "fetch", "starter", "--dset", "d"], "--dset", "--dest"),
    ],
)
def test_a_misspelled_option_is_named_with_its_near_match_in_the_commands_usage(capsys, argv, typo, near):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    command = " ".join(argv[: 2 if argv[0] == "weights" else 1])
    assert info.value.code == 2
    assert f"usage: adaptiveclick {command}" in err
    assert f"unrecognized option {typo} (did you mean {near}?)" in err
    assert "required" not in err  # not the missing option the typo was meant to be


def test_an_option_with_no_near_match_and_a_stray_argument_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--click", "1,1", "--out", "m.png", "--zzzz"])
    assert "adaptiveclick predict: error: unrecognized option --zzzz\n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "a.png", "b.png", "--click", "1,1", "--out", "m.png"])
    err = capsys.readouterr().err
    assert "usage: adaptiveclick predict" in err and "unrecognized arguments: b.png" in err


def test_prefixes_values_and_negative_numbers_still_parse():
    args = build_parser().parse_args(
        ["predict", "x.png", "--click=-5,100", "--out", "m.png", "--over", "o.png", "--threshold", "-0.5"]
    )
    assert args.click == [(-5, 100, True)] and args.overlay == "o.png" and args.threshold == -0.5


def test_a_folder_given_as_checkpoint_is_named_with_the_checkpoints_in_it(tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "starter.safetensors").write_bytes(b"")
    (folder / "notes.txt").write_text("not a checkpoint")
    argv = ["predict", _image(tmp_path), "--click", "1,1", "--out", str(tmp_path / "m.png"), "--device", "cpu"]
    assert main([*argv, "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is a folder, not a checkpoint file; checkpoints in it: starter.safetensors\n" in err
    assert "Traceback" not in err


def test_a_misspelt_dataset_names_the_near_match_and_the_datasets_there(tmp_path, capsys):
    for name in ("GrabCut", "Berkeley", "ECSSD"):
        (tmp_path / name).mkdir()
    argv = ["evaluate", "--method", "grabcut", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main([*argv, "--datasets", "Grabcut"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'Grabcut' not found: did you mean 'GrabCut'?" in err
    assert f"the data root {tmp_path} holds Berkeley, ECSSD, GrabCut\n" in err
    assert main([*argv, "--datasets", "ecssd:val"]) == 2  # a validation split of a misspelt name too
    assert "did you mean 'ECSSD'?" in capsys.readouterr().err
