"""Shared fixtures. Data in ../shared (beside the project root) is optional: tests skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the project root; skips the test when it is absent (a user's clone)."""
    if not (SHARED_DIR / "data" / "real").is_dir():
        pytest.skip(f"real reference data not available: {SHARED_DIR / 'data' / 'real'} is absent")
    return SHARED_DIR


@pytest.fixture(scope="session")
def real_data_dir(shared_dir: Path) -> Path:
    """`../shared/data/real`: real detector calibrations and patterns."""
    return shared_dir / "data" / "real"
