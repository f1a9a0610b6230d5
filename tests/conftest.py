import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _runtime_cache(tmp_path_factory):
    """Services built by the tests keep their measured backend choice in a temporary file, not in ~/.cache."""
    previous = os.environ.get("HEVITPOSE_RUNTIME_CACHE")
    os.environ["HEVITPOSE_RUNTIME_CACHE"] = str(tmp_path_factory.mktemp("runtime") / "runtime.json")
    yield
    if previous is None:
        os.environ.pop("HEVITPOSE_RUNTIME_CACHE", None)
    else:
        os.environ["HEVITPOSE_RUNTIME_CACHE"] = previous
