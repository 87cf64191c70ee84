"""Checkpoint reading and writing: safety, clear errors, round trips, atomicity."""

import os
import pickle

import pytest
import torch

from model.build import AdaptiveClickConfig, build_adaptiveclick, build_model
from model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_mae_backbone,
    load_official_checkpoint,
    load_state_dict_strict,
    read_metadata,
    safe_torch_load,
    save_checkpoint,
)

SMALL = AdaptiveClickConfig(
    name="test_small",
    image_size=224,
    embed_dim=32,
    depth=4,
    num_heads=2,
    global_attn_indexes=(1, 3),
    window_pixels=112,
    fpn_dims=(32, 32, 64, 64),
    conv_dim=32,
    mask_dim=32,
    encoder_ffn_dim=32,
    encoder_layers=1,
    hidden_dim=32,
    decoder_heads=4,
    decoder_ffn_dim=64,
    decoder_layers=3,
)


class _RunsCode:
    """Pickles to a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_released_format_loads_without_easydict_and_ignores_pickled_device(golden_dir):
    data = safe_torch_load(golden_dir / "tiny_official.pth")
    cfg = data["config"]["params"]["cfg"]["value"]
    assert isinstance(cfg, dict) and cfg["device"] == "cuda:0"  # a harmless string, never a torch.device
    assert isinstance(cfg["EXP_PATH"], str)
    model = load_official_checkpoint(golden_dir / "tiny_official.pth")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.criterion.empty_weight.tolist() == pytest.approx([1.0, 0.1])


def test_torch_weights_only_refuses_the_released_format(golden_dir):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(golden_dir / "tiny_official.pth", weights_only=True)


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "config": _RunsCode(marker)}, path)
    with pytest.raises(
        CheckpointError, match="refusing to load global 'posix.system'|refusing to load global 'os.system'"
    ):
        load_checkpoint(path)
    assert not marker.exists()


def test_not_a_checkpoint_and_truncated_files_give_clear_errors(tmp_path, golden_dir):
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"this is not a checkpoint at all\n" * 4)
    with pytest.raises(CheckpointError, match="is a text file .it starts with 'this is not"):
        load_checkpoint(junk)
    drive = tmp_path / "adaptiveclick_base448_sbd.pth"  # what a browser saves from Google Drive's scan warning
    drive.write_bytes(b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>")
    with pytest.raises(CheckpointError, match="HTML page.*Google Drive"):
        load_checkpoint(drive)
    binary = tmp_path / "random.safetensors"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="neither a .safetensors file nor a PyTorch checkpoint"):
        load_checkpoint(binary)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((golden_dir / "tiny_official.pth").read_bytes()[:2_000_000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_wrong_architecture_lists_missing_unexpected_and_misshapen_keys(tiny_model):
    small = build_adaptiveclick(SMALL)
    state = dict(small.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["click_aware_decoder.query_feat.weight"]
    state["backbone.pos_embed"] = torch.zeros(1, 5, SMALL.embed_dim)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(small, state, source="edited.pth")
    message = str(info.value)
    assert "missing (1): click_aware_decoder.query_feat.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "wrong shape (1): backbone.pos_embed: checkpoint (1, 5, 32) vs network (1, 197, 32)" in message
    with pytest.raises(CheckpointError, match=r"(?s)does not fit the network.*and \d+ more"):
        load_state_dict_strict(small, tiny_model.state_dict(), source="tiny.pth")


def test_project_format_round_trip_is_exact(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors", {"version": "v1"})
    meta = read_metadata(path)
    assert meta["version"] == "v1" and meta["format"] == "adaptiveclick/1"
    loaded = load_checkpoint(path)
    assert loaded.config == tiny_model.config
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_adaptiveclick(SMALL)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("model.checkpoint.save_file", broken_save)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"], "temporary file left behind"


def test_mae_weights_initialise_the_backbone_with_interpolated_position_embedding(tmp_path):
    model = build_adaptiveclick(SMALL)
    mae = {k: torch.randn_like(v) for k, v in model.backbone.state_dict().items()}
    mae["pos_embed"] = torch.randn(1, 1 + 14 * 14, SMALL.embed_dim)  # MAE's 224 px grid
    mae["mask_token"] = torch.zeros(1, 1, SMALL.embed_dim)
    mae["decoder_embed.weight"] = torch.zeros(8, SMALL.embed_dim)
    path = tmp_path / "mae.pth"
    torch.save({"model": mae}, path)
    missing = load_mae_backbone(model, path)
    assert missing == []
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, mae["blocks.0.attn.qkv.weight"])
    assert model.backbone.pos_embed.shape == (1, 1 + 14 * 14, SMALL.embed_dim)
    with pytest.raises(CheckpointError, match="MAE"):
        torch.save({"state_dict": {}}, path)
        load_mae_backbone(model, path)


def test_named_configs_build_and_run(tmp_path):
    model = build_adaptiveclick(SMALL).eval()
    image = torch.rand(1, 4, 224, 224)
    points = torch.tensor([[[100.0, 120.0, 0.0], [-1.0, -1.0, -1.0]]])
    with torch.no_grad():
        out = model(image, points)
    assert out["instances"].shape == (1, 1, 224, 224)
    with pytest.raises(ValueError, match="unknown model config"):
        build_model("vit_z")
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(image[:, :3], points)


def _with_config(src, dst, **changes):
    """Copy a project checkpoint, rewriting fields of the config in its metadata (the tensors stay)."""
    import json

    from safetensors.torch import load_file, save_file

    meta = read_metadata(src)
    config = json.loads(meta["config"])
    config.update(changes)
    save_file(load_file(str(src)), str(dst), metadata=dict(meta, config=json.dumps(config)))
    return dst


def test_a_metadata_config_that_does_not_fit_the_tensors_is_refused_before_building(tmp_path, monkeypatch):
    import model.checkpoint as checkpoint

    src = save_checkpoint(build_adaptiveclick(SMALL), tmp_path / "small.safetensors")
    built_for_real = []
    real_build = checkpoint.build_adaptiveclick

    def spy(config):
        model = real_build(config)
        built_for_real.extend(p.device.type for p in model.parameters() if p.device.type != "meta")
        return model

    monkeypatch.setattr(checkpoint, "build_adaptiveclick", spy)
    cases = [
        ({"embed_dim": 1_000_001}, "does not describe a buildable network"),  # was an AssertionError
        ({"embed_dim": 1_000_000}, "does not match the tensors"),
        ({"embed_dim": 4096, "num_heads": 16}, "does not match the tensors"),  # big but valid: no GBs spent
        ({"depth": 6, "global_attn_indexes": [1, 5]}, "missing"),
        ({"fpn_dims": [16, 16, 16, 16]}, "wrong shape"),
    ]
    for changes, words in cases:
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(_with_config(src, tmp_path / "bad.safetensors", **changes))
    assert built_for_real == []  # only the meta-device skeleton was built
    with pytest.raises(CheckpointError, match="not valid"):
        load_checkpoint(_with_config(src, tmp_path / "bad.safetensors", no_such_field=1))
    assert load_checkpoint(src).config == SMALL


def test_a_zip_checkpoint_renamed_safetensors_is_read_by_content(tmp_path, golden_dir):
    import shutil

    renamed = tmp_path / "tiny.safetensors"
    shutil.copy(golden_dir / "tiny_official.pth", renamed)
    assert load_checkpoint(renamed).config.embed_dim > 0  # a real .pth: loads, whatever its name
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "junk.pth")
    shutil.copy(tmp_path / "junk.pth", renamed)
    with pytest.raises(CheckpointError):
        load_checkpoint(renamed)
