"""Fixtures shared by the ``generate`` integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import fixtures_images as fx


@pytest.fixture
def photos_dir(tmp_path) -> Path:
    """12 FFHQ-like images (PNG and JPEG) plus a zero-byte and a text file posing as images."""
    d = tmp_path / "in"
    fx.ffhq_tree(d, n=6, per_folder=3)
    fx.ffhq_tree(d / "jpg", n=4, fmt="jpg")
    fx.write_tree(d, {"00000/empty.png": b"", "00000/fake.jpg": b"<html>"})
    return d
