"""Checkpoint input/output.

Three formats are read:

* the released AdaptiveClick files (``torch.save({'state_dict', 'config'})`` with an EasyDict
  config): read by a restricted unpickler that never runs code from the file; the network config is
  inferred from the tensors;
* MAE-pretrained ViT weights (``{'model': state_dict}``) to initialise a backbone for training;
* the project's own format, written by :func:`save_checkpoint`: one ``.safetensors`` file whose
  metadata holds the config as JSON. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .build import CONFIGS, AdaptiveClickConfig, build_adaptiveclick
from .files import atomic_write
from .modeling.adaptiveclick import AdaptiveClick
from .modeling.vit import resize_pos_embed

FORMAT_TAG = "adaptiveclick/1"
# The reference registers two pixel-decoder modules under two names each.
ALIAS_PREFIXES = {
    "pixel_decoder.adapter_1.": "pixel_decoder.lateral_convs.0.",
    "pixel_decoder.layer_1.": "pixel_decoder.output_convs.0.",
}


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the network; the message says why."""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling of released .pth files


class _ConfigDict(dict):
    """Inert stand-in for ``easydict.EasyDict``: a dict whose pickled ``__dict__`` state is ignored."""

    def __setstate__(self, state: Any) -> None:  # BUILD: the same items again, as attributes
        pass


def _posix_path(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("easydict", "EasyDict"): _ConfigDict,
    ("pathlib", "PosixPath"): _posix_path,
    ("pathlib", "WindowsPath"): _posix_path,
    ("torch", "device"): _device,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the handful of globals that checkpoint files name; refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': the file asks to run code that a checkpoint never needs"
            ) from None


class _RestrictedPickleModule:
    """Passed to ``torch.load`` as ``pickle_module`` so torch's storage handling still applies."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


def require_checkpoint_file(path: Path) -> None:
    """Raise a :class:`CheckpointError` that says what ``path`` is when it is not a file: missing, or a folder
    (then naming the checkpoints in it, so the user can pick one)."""
    if path.is_file():
        return
    if path.is_dir():
        inside = sorted(child.name for child in path.iterdir() if child.suffix in CHECKPOINT_SUFFIXES)
        listed = ", ".join(inside[:8]) + (f" and {len(inside) - 8} more" if len(inside) > 8 else "")
        hint = f"; checkpoints in it: {listed}" if inside else "; it holds no checkpoint file"
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    raise CheckpointError(f"checkpoint not found: {path}")


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Read a ``torch.save`` file without executing code from it; tensors are mapped to the CPU."""
    path = Path(path)
    require_checkpoint_file(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head == b"PK":
            raise CheckpointError(f"{path} is truncated or corrupt (a zip archive without its directory)")
        if head != b"\x80\x02":  # the legacy (non-zip) torch.save format starts with a protocol-2 pickle
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        # An open file, not the path: torch.load would pick its reader by the file name (".safetensors"), and
        # what this file is was decided above from its content.
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(error).__name__}: {error})") from None


# ---------------------------------------------------------------------------------------------
# Config inference


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def _pickled_value(config: Any, *path: str) -> Any:
    node = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def infer_config(state_dict: dict[str, torch.Tensor], pickled_config: Any = None) -> AdaptiveClickConfig:
    """Derive the network config from tensor shapes.

    Head counts and the global-attention pattern cannot be read from shapes: they come from the
    named config with the same dimensions, else from the pickled config, else from the reference's
    rules (64-dim heads; every ``depth/4``-th block global, every 6th for depth 12).
    """
    try:
        patch_weight = state_dict["backbone.patch_embed.proj.weight"]
        pos_embed = state_dict["backbone.pos_embed"]
        embed_dim, _, patch, _ = patch_weight.shape
        depth = _count(state_dict, r"backbone\.blocks\.(\d+)\.")
        grid = int(round((pos_embed.shape[1] - 1) ** 0.5))
        fpn_dims = (
            state_dict["pixel_decoder.neck.down_4.5.weight"].shape[0],
            state_dict["pixel_decoder.neck.down_8.2.weight"].shape[0],
            state_dict["pixel_decoder.neck.down_16.0.weight"].shape[0],
            state_dict["pixel_decoder.neck.down_32.2.weight"].shape[0],
        )
        enc_prefix = "pixel_decoder.transformer.encoder.layers.0."
        dec_prefix = "click_aware_decoder."
        query_feat = state_dict[dec_prefix + "query_feat.weight"]
        empty_weight = state_dict.get("criterion.empty_weight")
        dims = dict(
            image_size=grid * patch,
            patch_size=patch,
            embed_dim=embed_dim,
            depth=depth,
            mlp_ratio=state_dict["backbone.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
            fpn_dims=fpn_dims,
            conv_dim=state_dict["pixel_decoder.input_proj.0.0.weight"].shape[0],
            mask_dim=state_dict["pixel_decoder.mask_features.weight"].shape[0],
            encoder_heads=state_dict[enc_prefix + "self_attn.attention_weights.weight"].shape[0] // (3 * 4),
            encoder_ffn_dim=state_dict[enc_prefix + "linear1.weight"].shape[0],
            encoder_layers=_count(state_dict, r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."),
            hidden_dim=query_feat.shape[1],
            num_queries=query_feat.shape[0],
            decoder_ffn_dim=state_dict[dec_prefix + "transformer_ffn_layers.0.linear1.weight"].shape[0],
            decoder_layers=_count(state_dict, r"click_aware_decoder\.transformer_ffn_layers\.(\d+)\."),
            no_object_weight=round(float(empty_weight[1]), 6) if empty_weight is not None else 0.1,
        )
    except KeyError as error:
        raise CheckpointError(f"not an AdaptiveClick state dict: missing {error.args[0]!r}") from None

    for known in CONFIGS.values():
        if all(getattr(known, k) == v for k, v in dims.items() if k != "no_object_weight"):
            return replace(known, **dims)

    model_cfg = _pickled_value(pickled_config, "MODEL") or {}
    vit_heads = _pickled_value(model_cfg, "BACKBONE", "NUM_HEADS") or max(1, embed_dim // 64)
    decoder_heads = _pickled_value(model_cfg, "MASK_FORMER", "NHEADS") or 8
    group = 6 if depth == 12 else max(1, depth // 4)
    global_blocks = tuple(i for i in range(depth) if (i + 1) % group == 0)
    return AdaptiveClickConfig(
        name=f"custom_{embed_dim}x{depth}",
        num_heads=int(vit_heads),
        decoder_heads=int(decoder_heads),
        global_attn_indexes=global_blocks,
        **dims,
    )


# ---------------------------------------------------------------------------------------------
# Loading into a network


def _with_aliases(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the reference's duplicate pixel-decoder names where only one of the pair is present."""
    full = dict(state_dict)
    for alias, canonical in ALIAS_PREFIXES.items():
        for key, value in state_dict.items():
            if key.startswith(canonical):
                full.setdefault(alias + key[len(canonical) :], value)
            elif key.startswith(alias):
                full.setdefault(canonical + key[len(alias) :], value)
    return full


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """``load_state_dict(strict=True)`` with a readable report of missing, unexpected and misshapen keys."""
    expected = model.state_dict()
    state_dict = _with_aliases(state_dict)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshapen = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or misshapen:
        lines = [f"{source} does not fit the network ({type(model).__name__}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if items:
                shown = items[:12] + ([f"... and {len(items) - 12} more"] if len(items) > 12 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def load_official_checkpoint(path: str | os.PathLike) -> AdaptiveClick:
    """Load a released AdaptiveClick ``.pth`` safely; the pickled device and paths are ignored."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointError(
            f"{path}: expected a dict with 'state_dict' (an AdaptiveClick .pth), got {type(data).__name__}"
        )
    state_dict = {k: v.float() for k, v in data["state_dict"].items()}
    pickled_cfg = _pickled_value(data.get("config"), "params", "cfg", "value")
    config = infer_config(state_dict, pickled_cfg)
    model = build_adaptiveclick(config)
    load_state_dict_strict(model, state_dict, source=str(path))
    return model.eval()


def save_checkpoint(model: AdaptiveClick, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as ``.safetensors`` with its config in the metadata; atomic (temp file + rename)."""
    path = Path(path)
    aliases = tuple(ALIAS_PREFIXES)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(aliases)}
    meta = {"format": FORMAT_TAG, "config": json.dumps(model.config.to_dict())}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a project checkpoint (config JSON, version, provenance)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable .safetensors checkpoint ({error})") from None


def load_project_checkpoint(path: str | os.PathLike) -> AdaptiveClick:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT_TAG or "config" not in meta:
        raise CheckpointError(
            f"{path} is a .safetensors file but not an AdaptiveClick checkpoint (no '{FORMAT_TAG}' metadata)"
        )
    try:
        config = AdaptiveClickConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{path}: the config in its metadata is not valid ({error})") from None
    _check_config_fits_tensors(config, _tensor_shapes(path), path)
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: the tensors cannot be read ({error})") from None
    model = build_adaptiveclick(config)
    load_state_dict_strict(model, state_dict, source=str(path))
    return model.eval()


def _tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a .safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable .safetensors checkpoint ({error})") from None


def _check_config_fits_tensors(config: AdaptiveClickConfig, shapes: dict[str, tuple[int, ...]], path: Any) -> None:
    """Refuse a metadata config that does not describe the file's tensors, before any memory is spent on it.

    The network is built on the ``meta`` device (shapes only, no storage), so an absurd config costs nothing.
    """
    try:
        with torch.device("meta"):
            skeleton = build_adaptiveclick(config)
    except Exception as error:  # any failure to build from untrusted metadata is the file's fault
        raise CheckpointError(
            f"{path}: the config in its metadata does not describe a buildable network "
            f"({type(error).__name__}: {error})"
        ) from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = dict(shapes)
    for alias, canonical in ALIAS_PREFIXES.items():  # files may name shared modules either way
        for key in [k for k in found if k.startswith(alias)]:
            found.setdefault(canonical + key[len(alias) :], found[key])
        for key in [k for k in expected if k.startswith(alias)]:
            found.setdefault(key, found.get(canonical + key[len(alias) :]))
    missing = sorted(k for k in expected if found.get(k) is None)
    wrong = sorted(
        f"{k}: file {found[k]} vs config {expected[k]}"
        for k in expected
        if found.get(k) is not None and found[k] != expected[k]
    )
    unexpected = sorted(k for k in found if k not in expected)
    if missing or wrong or unexpected:
        details = "; ".join(
            f"{title} ({len(items)}): {', '.join(items[:4])}"
            for title, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected))
            if items
        )
        raise CheckpointError(f"{path}: the config in its metadata does not match the tensors in the file ({details})")


def load_checkpoint(path: str | os.PathLike) -> AdaptiveClick:
    """Load any supported AdaptiveClick checkpoint, choosing the reader by content."""
    path = Path(path)
    require_checkpoint_file(path)
    with open(path, "rb") as handle:
        head = handle.read(512)
    if len(head) < 8:
        raise CheckpointError(f"{path} is empty or truncated ({path.stat().st_size} bytes)")
    if head[:2] in (b"PK", b"\x80\x02"):
        model = load_official_checkpoint(path)
    elif head[8:9] != b"{":  # a .safetensors file: an 8-byte header length, then its JSON header
        raise CheckpointError(f"{path} is not a checkpoint: {_what_it_is(head)}")
    else:
        model = load_project_checkpoint(path)
    model.checkpoint_path = path.resolve()
    return model


def _what_it_is(head: bytes) -> str:
    """A guess at what a file that is no checkpoint is, from its first bytes, for the error message."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:200]:
        return (
            "it is an HTML page. A checkpoint downloaded from Google Drive is often the 'cannot scan this file for "
            "viruses' page instead of the file: download it again from the page's 'Download anyway' button, or use "
            "`adaptiveclick weights fetch NAME --url ...`"
        )
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"it is a text file (it starts with {head[:40].decode('ascii', 'replace')!r})"
    return "neither a .safetensors file nor a PyTorch checkpoint (zip archive or pickle)"


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> AdaptiveClick:
    """Load a checkpoint in eval mode on ``device`` (default: cuda when available).

    Which checkpoint to serve or evaluate by default (MODEL_CHECKPOINT, MODEL_DIR's current version, the
    starter) is the caller's choice: ``ml_backend.finetuning.model_store.served_checkpoint``."""
    from .device import resolve_device

    return load_checkpoint(path).to(resolve_device(device)).eval()


def load_mae_backbone(model: AdaptiveClick, path: str | os.PathLike) -> list[str]:
    """Initialise ``model.backbone`` from MAE ViT weights (``{'model': state_dict}``).

    The position embedding is resized bicubically to the network's grid. Returns the backbone keys
    the file did not provide (none for a matching ViT).
    """
    data = safe_torch_load(path)
    weights = data.get("model") if isinstance(data, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: expected MAE weights as {{'model': state_dict}}")
    weights = {k: v.float() for k, v in weights.items() if not k.startswith(("decoder", "mask_token"))}
    backbone = model.backbone
    pos = weights.get("pos_embed")
    if pos is not None and pos.shape != backbone.pos_embed.shape:
        old = int(round((pos.shape[1] - 1) ** 0.5))
        weights["pos_embed"] = resize_pos_embed(pos, (old, old), backbone.native_grid)
    expected = backbone.state_dict()
    misshapen = [k for k in weights if k in expected and weights[k].shape != expected[k].shape]
    if misshapen:
        raise CheckpointError(f"{path}: MAE weights do not fit this backbone: " + ", ".join(misshapen[:8]))
    result = backbone.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
    return list(result.missing_keys)
