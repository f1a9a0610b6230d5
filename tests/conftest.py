import os

import anyio
import pytest

# anyio is a pytest plugin, so pytest rewrites its modules as they are imported, with ast.parse; and anyio
# imports open_file lazily, on first use, which for Starlette's FileResponse is in a server thread during a
# test. On CPython 3.11 an ast.parse in one thread while another builds an AST can fail with "SystemError:
# AST constructor recursion depth mismatch" (python/cpython#106905, pytest-dev/pytest#10763), and the
# server then drops the connection (seen in test_service_render_video under load). Resolving the name
# here imports the module once, in the main thread, before any server starts.
anyio.open_file  # noqa: B018


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


@pytest.fixture
def restore_torch_threads():
    """The tiny training recipes set run.threads=1 (a shared 2-core box runs 1 thread far faster) and
    some run.deterministic; the rest of the session keeps torch's own settings."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


# ---------------------------------------------------------------------------- the service's
# A test module that uses ``server`` or ``client`` defines a ``settings`` fixture (module scope).
# The imports are inside the fixtures: the training tests need neither FastAPI nor uvicorn.


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """A tiny random HEViTPose-T bundle (``_service_util.make_bundle``), one for the whole session."""
    from _service_util import make_bundle

    return make_bundle(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def server(settings):
    """The real app under uvicorn with the test module's ``settings`` fixture, ready."""
    from _service_util import ServerThread

    srv = ServerThread(settings).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
