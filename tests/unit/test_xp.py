"""Array-module selection (NumPy here; CuPy parity tests are GPU-marked in the kernel tests)."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.kernels.xp import asnumpy, get_xp, has_cupy, resolve_xp, to_device


def test_numpy_path():
    x = np.ones(3)
    assert get_xp(x) is np
    assert resolve_xp("numpy") is np
    assert to_device(x, np) is x
    assert asnumpy([1, 2]).tolist() == [1, 2]


def test_torch_tensor_to_numpy():
    torch = pytest.importorskip("torch")
    assert asnumpy(torch.arange(3)).tolist() == [0, 1, 2]


@pytest.mark.skipif(has_cupy(), reason="this machine has a usable CuPy")
def test_explicit_cupy_without_gpu_is_an_error():
    with pytest.raises(ValueError, match="cupy.*unavailable"):
        resolve_xp("cupy")
    assert resolve_xp("auto") is np


def test_unknown_array_backend():
    with pytest.raises(ValueError, match="unknown array backend"):
        resolve_xp("jax")


@pytest.mark.gpu
def test_cupy_roundtrip(needs_cupy):
    cp = resolve_xp("cupy")
    x = to_device(np.arange(4.0), cp)
    assert get_xp(x) is cp
    assert asnumpy(x * 2).tolist() == [0, 2, 4, 6]
