"""What a test does when something it needs is missing: skip with the reason, or fail under CI.

Outside CI a missing ``../shared``, Label Studio or browser skips the tests that need it, with the reason. Under
``CI=true`` the same absence fails the run, so CI cannot pass by skipping what it was meant to test.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip (outside CI) or fail (CI) because a prerequisite is absent."""
    if in_ci():
        pytest.fail(f"missing prerequisite under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
