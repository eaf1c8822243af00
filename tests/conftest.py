"""Test tiers: unit and integration run everywhere; ``gpu`` tests skip without CUDA, ``slow`` ones need --run-slow."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RELIGHT_NO_PROGRESS", "1")

# multiprocessing shares file descriptors through a Unix socket under TMPDIR (paths are limited to 107 bytes): a
# long TMPDIR makes DataLoader workers hang until the test times out
if len(tempfile.gettempdir()) > 60 and os.path.isdir("/tmp"):
    os.environ["TMPDIR"] = tempfile.tempdir = "/tmp"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = _cuda_available()
    run_slow = config.getoption("--run-slow")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch on this machine)"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: opt in with --run-slow"))


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos that scikit-image ships (no download): name -> HxWx3 uint8."""
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = getattr(data, name)()
        out[name] = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    return out


@pytest.fixture
def needs_cupy() -> None:
    """Skip (with the reason) where CuPy cannot run: it is the optional ``[gpu]`` extra, even on a CUDA machine."""
    from relight_stream.kernels.xp import cupy_status

    ok, why = cupy_status()
    if not ok:
        pytest.skip(f"needs CuPy on a GPU: {why}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests (tiny models: threads cost more than they give on 2 shared cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
