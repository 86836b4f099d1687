import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Caches (rendered worlds, pretrained CPU backbones, feature caches) go to a per-session temp folder. Session
    scope: module-scoped fixtures run before function-scoped ones and would otherwise use the user's cache."""
    saved = {k: os.environ.get(k) for k in ("UNSEEN_CACHE", "CI")}
    os.environ["UNSEEN_CACHE"] = os.environ.get("UNSEEN_TEST_CACHE") or str(
        tmp_path_factory.getbasetemp() / "cache"
    )
    os.environ["CI"] = "true"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data fixtures are not present")
    return SHARED_DATA
