"""``adaptiveclick weights``: list the known checkpoints, download them, check them.

    adaptiveclick weights list
    adaptiveclick weights fetch NAME [--dest DIR] [--url URL] [--sha256 HEX] [--force] [--retries N]
    adaptiveclick weights verify [NAME|FILE] [--sha256 HEX] [--load]

Where files go and are looked for: ``--dest``, else ``$MODEL_DIR`` when set (the container's ``/data/models``),
else the weights folder (``$ADAPTIVECLICK_WEIGHTS_DIR``, else the project's ``weights/``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ml_backend.config import Settings
from model.weights import (
    REGISTRY,
    WeightsEntry,
    download,
    expected_sha256,
    find_local,
    lookup,
    sha256_file,
)

from .errors import CommandError


def weights_dir() -> Path:
    """``$ADAPTIVECLICK_WEIGHTS_DIR`` (an installed package has no ``weights/`` beside it), else the project's."""
    return Settings.from_env().shipped_weights_dir


def default_dest() -> Path:
    model_dir = Settings.from_env().model_dir
    return Path(model_dir) if model_dir else weights_dir()


def search_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    dirs: list[Path] = []
    for d in (*extra, weights_dir(), default_dest()):
        if d not in dirs:
            dirs.append(d)
    return dirs


def _pinned(entry: WeightsEntry, near: Path | None) -> str | None:
    return expected_sha256(entry, near, weights_dir())


def _entry_or_error(name: str) -> WeightsEntry:
    entry = lookup(name)
    if entry is None:
        raise CommandError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)} (see `adaptiveclick weights list`)")
    return entry


def run_list(args: argparse.Namespace) -> int:
    dirs = search_dirs()
    print(f"looked for in: {', '.join(str(d) for d in dirs)}")
    for entry in REGISTRY.values():
        path = find_local(entry, dirs)
        pinned = _pinned(entry, path)
        state = (
            f"present: {path}" if path else ("missing; it ships with the project" if entry.local else "not downloaded")
        )
        source = "local" if entry.local else (entry.url or "manual download (Google Drive, see `fetch`)")
        print(f"\n{entry.name}  [{entry.kind}]  {entry.description}")
        print(f"  file:   {entry.filename}  ({state})")
        print(f"  source: {source}")
        print(f"  sha256: {pinned or 'unknown (computed and printed by fetch / verify)'}")
        if entry.use:
            # The path that works from here: where the file is, or where `fetch` would put it.
            where = path or (default_dest() / entry.filename)
            print(f"  use:    {entry.use.replace('{path}', str(Path(where).resolve()))}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    entry = _entry_or_error(args.name)
    dest_dir = Path(args.dest) if args.dest else default_dest()
    dest = dest_dir / entry.filename
    expected = (args.sha256 or "").lower() or _pinned(entry, dest)
    if entry.local and not args.url:
        found = find_local(entry, search_dirs([dest_dir]))
        if not found:
            raise CommandError(
                f"{entry.name} is shipped with the project in {weights_dir()} and cannot be downloaded; "
                f"{entry.filename} is missing there (a checkout without it, or a moved file)"
            )
        print(f"{entry.name}: shipped with the project at {found} (nothing to download)")
        return 0
    if dest.is_file() and not args.force:
        digest = sha256_file(dest, not args.no_progress)
        if expected and digest != expected:
            raise CommandError(
                f"{dest} exists but its sha256 {digest} is not the expected {expected}; "
                "rerun with --force to download it again"
            )
        print(f"{dest}: already present (sha256 {digest}{', verified' if expected else ''})")
        return 0
    url = args.url or entry.url
    if not url:
        print(
            (entry.manual or "No download link is known for {filename}.").format(
                filename=entry.filename, dest=dest, name=entry.name
            ),
            file=sys.stderr,
        )
        raise CommandError(f"no download link known for {entry.name}: get the file manually (see above) or pass --url")
    if args.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise CommandError(f"--sha256 {args.sha256!r} is not 64 hexadecimal digits")
    print(f"downloading {entry.name} from {url}\n  to {dest}", file=sys.stderr)
    digest = download(url, dest, expected, timeout=args.timeout, retries=args.retries, progress=not args.no_progress)
    size = dest.stat().st_size
    print(f"{dest}: {size} bytes, sha256 {digest}")
    if expected:
        print("  sha256 verified")
    else:
        print(
            f"  (no sha256 is pinned for {entry.name}: keep this one to check later copies, e.g. "
            f"`adaptiveclick weights verify {dest} --sha256 {digest}`)"
        )
    if entry.use:
        print(f"  use: {entry.use.replace('{path}', str(dest.resolve()))}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    targets: list[tuple[WeightsEntry | None, Path]] = []
    if args.target:
        as_path = Path(args.target)
        entry = lookup(args.target)
        if as_path.is_file():
            targets.append((entry, as_path))
        elif entry is not None:
            dirs = search_dirs([Path(args.dest)] if args.dest else [])
            found = find_local(entry, dirs)
            if not found:
                raise CommandError(
                    f"{entry.filename} not found in {', '.join(str(d) for d in dirs)}; "
                    f"`adaptiveclick weights fetch {entry.name}` first"
                )
            targets.append((entry, found))
        else:
            raise CommandError(f"{args.target}: neither a file nor a known weights name ({', '.join(REGISTRY)})")
    else:
        dirs = search_dirs([Path(args.dest)] if args.dest else [])
        targets = [(e, p) for e in REGISTRY.values() if (p := find_local(e, dirs))]
        if not targets:
            print(f"no known weights found in {', '.join(str(d) for d in dirs)}")
            return 0
    bad = 0
    for entry, path in targets:
        digest = sha256_file(path, not args.no_progress)
        expected = (args.sha256 or "").lower() or (_pinned(entry, path) if entry else None)
        if expected and digest != expected:
            status, bad = f"MISMATCH (expected {expected})", bad + 1
        elif expected:
            status = "OK"
        else:
            status = "not pinned (compare with the publisher's checksum, then pin it)"
        print(f"{path}: sha256 {digest}  {status}")
        if args.load:
            print(f"  {_load_check(entry, path)}")
    return 1 if bad else 0


def _load_check(entry: WeightsEntry | None, path: Path) -> str:
    """Open the file with the project's safe loaders (raises CheckpointError when it is not a valid checkpoint)."""
    from model.checkpoint import load_checkpoint, safe_torch_load

    if entry is not None and entry.kind == "mae":
        data = safe_torch_load(path)
        weights = data.get("model") if isinstance(data, dict) else None
        if not isinstance(weights, dict):
            raise CommandError(f"{path}: not MAE weights ({{'model': state_dict}} expected)")
        return f"loads: MAE state dict with {len(weights)} tensors"
    model = load_checkpoint(path)
    params = sum(p.numel() for p in model.parameters())
    return f"loads: AdaptiveClick {model.config.name}, {params / 1e6:.1f} M parameters"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``weights`` (list / fetch / verify) on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "weights",
        help="list, download and verify checkpoints",
        description="Known checkpoints: the released AdaptiveClick models, MAE backbones, the starter model. "
        "Downloads go to --dest, else $MODEL_DIR, else the project's weights/ folder.",
    )
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION")
    sub.required = True

    listing = sub.add_parser("list", help="the known checkpoints, where they are and their sha256")
    listing.set_defaults(handler=run_list)

    fetch = sub.add_parser("fetch", help="download a checkpoint (resumable, checksum-verified when pinned)")
    fetch.add_argument("name", help="a name from `weights list` (or its file name)")
    fetch.add_argument("--dest", help="folder to save into (default: $MODEL_DIR, else the project's weights/)")
    fetch.add_argument("--url", help="download from this URL instead (Google Drive links: best effort)")
    fetch.add_argument("--sha256", help="expected sha256 (overrides the registry's)")
    fetch.add_argument("--force", action="store_true", help="download again even when the file is present")
    fetch.add_argument("--retries", type=int, default=5, help="resumed retries after a dropped connection (default 5)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up a try (60)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=run_fetch)

    verify = sub.add_parser("verify", help="print (and check, when pinned) the sha256 of checkpoints")
    verify.add_argument("target", nargs="?", help="a known name or a file (default: every known file present)")
    verify.add_argument("--dest", help="also look in this folder")
    verify.add_argument("--sha256", help="expected sha256 of the file")
    verify.add_argument("--load", action="store_true", help="also open it with the safe checkpoint loader")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(handler=run_verify)
    return parser
