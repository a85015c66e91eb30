"""Shared test set-up: paths to the repo and to the shared fixtures beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

if str(REPO) not in sys.path:  # the core and inference packages as top-level packages
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared fixtures folder {SHARED} is missing")
    return SHARED


@pytest.fixture(scope="session")
def closenet_reference(shared: Path) -> Path:
    """Folder with closenet.pth, closenet_cfg.yaml and cases.npz."""
    return shared / "fixtures" / "closenet_reference"
