"""Shared pre/post-processing for engines: input checks, resize-and-crop to the model's square, upsampling back."""

from __future__ import annotations

from typing import Any


def check_images(images: Any, *, name: str = "images", lo: float = 0.0, hi: float = 1.0) -> Any:
    """Validate a ``[B,3,H,W]`` floating tensor (values nominally in ``[lo, hi]``); returns it as float32."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B,3,H,W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [B,3,H,W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected floating values in [{lo}, {hi}], got dtype {images.dtype}")
    return images.float()


def resize_crop(images: Any, size: int) -> Any:
    """Resize the short side to ``size`` (bicubic, antialiased) and centre-crop to ``size``² (CLIP preprocessing)."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 1)


def resize_square(images: Any, size: int, *, mode: str = "bilinear") -> Any:
    """Resize (without keeping the aspect ratio) to ``size``²; used where outputs map back pixel-for-pixel."""
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode=mode, antialias=mode != "nearest", align_corners=False)


def resize_back(maps: Any, hw: tuple[int, int]) -> Any:
    """Bilinear resize of ``[B,C,h,w]`` maps to ``hw``; returns ``[B,C,H,W]``."""
    import torch.nn.functional as F

    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    return F.interpolate(maps, size=hw, mode="bilinear", align_corners=False)
