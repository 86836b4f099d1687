import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Caches (rendered worlds, pretrained CPU backbones, feature caches) go to a per-session temp folder."""
    monkeypatch.setenv(
        "UNSEEN_CACHE", os.environ.get("UNSEEN_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    )
    monkeypatch.setenv("CI", "true")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data fixtures are not present")
    return SHARED_DATA
