"""Shared fixtures: the real data root (../shared/data or $VOL_TRANSFER_DATA).

Tests that need real data take the ``shared_data`` fixture. When the data is missing they skip,
except under ``VOL_TRANSFER_REQUIRE_DATA=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vol_transfer.io.data_root import default_data_root

REQUIRE_DATA = os.environ.get("VOL_TRANSFER_REQUIRE_DATA") == "1"


def _missing(reason: str) -> None:
    if REQUIRE_DATA:
        pytest.fail(f"real data required (VOL_TRANSFER_REQUIRE_DATA=1) but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real datasets; fails under VOL_TRANSFER_REQUIRE_DATA=1 if missing."""
    root = default_data_root()
    if not root.is_dir():
        _missing(f"data root {root} does not exist (set VOL_TRANSFER_DATA)")
    return root


@pytest.fixture(scope="session")
def dataset(shared_data: Path):
    """``dataset("msd_hippocampus")`` → that folder under the data root, or fail/skip."""

    def get(name: str) -> Path:
        path = shared_data / name
        if not path.exists():
            _missing(f"dataset folder {path} does not exist")
        return path

    return get
