"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

from prerequisites import missing

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Torch's thread count as each test found it: the trainer sets it from its config, and a later test's numerics
    (the golden replay's chaotic clicks) must not depend on which tests ran before it."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (``../shared`` beside the repo, or ``$ADAPTIVECLICK_SHARED``); skips if absent."""
    path = Path(os.environ.get("ADAPTIVECLICK_SHARED", DEFAULT_SHARED_DIR))
    if not path.is_dir():
        missing(f"shared data folder {path} not found (set ADAPTIVECLICK_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    path = shared_dir / "golden"
    if not path.is_dir():
        missing(f"golden reference data {path} not found")
    return path


@pytest.fixture(scope="session")
def tiny_model(golden_dir: Path):
    """The golden tiny AdaptiveClick (random weights), loaded through the safe loader."""
    from model.checkpoint import load_official_checkpoint

    return load_official_checkpoint(golden_dir / "tiny_official.pth")


@pytest.fixture()
def redis_server(tmp_path):
    """A private redis-server (Debian's ``redis-server``; ``make test`` installs it): skipped outside CI when it
    or the redis package is missing, a failure under CI=true."""
    from testkit.redis_harness import RedisServer

    if RedisServer.executable() is None:
        missing("redis-server not found (apt-get install redis-server; `make test` installs it)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("the redis package is not installed (pip install -e '.[test]')")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()
