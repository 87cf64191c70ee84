"""Fixtures of the end-to-end tests: a real Label Studio 1.23.2 on 127.0.0.1 (from .cache/ls-venv)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.ls_harness import E2E_IMAGES, LabelStudio

from prerequisites import missing


@pytest.fixture(scope="session")
def e2e_root(shared_dir, tmp_path_factory) -> Path:
    """Label Studio's local-files document root, holding copies of the test images."""
    source = shared_dir / "datasets" / "GrabCut"
    root = tmp_path_factory.mktemp("ls-root")
    (root / "images").mkdir()
    for name in E2E_IMAGES.values():
        if not (source / "images" / name).exists():
            missing(f"{source / 'images' / name} not found")
        shutil.copy(source / "images" / name, root / "images" / name)
    return root


@pytest.fixture(scope="session")
def label_studio(e2e_root, tmp_path_factory):
    """A real Label Studio on a free loopback port with a temporary data dir; always stopped.

    Skips when the Label Studio venv is missing, unless CI is set: then it fails, so CI cannot skip silently."""
    exe = LabelStudio.executable()
    if not exe.exists():
        missing(f"Label Studio is not installed at {exe}: run scripts/install_label_studio.sh")
    ls = LabelStudio(tmp_path_factory.mktemp("ls-data"), e2e_root)
    ls.start()
    try:
        yield ls
    finally:
        ls.stop()


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "docker: the image and compose stacks on a real Docker engine (opt-in: make test-docker; skipped unless "
        "RUN_DOCKER=1)",
    )
