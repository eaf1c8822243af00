"""Eager PyTorch backend: the module itself, cast to the requested precision, under ``torch.inference_mode``.

Inputs are moved to the runner's device; floating inputs are cast to the compute dtype; outputs come back fp32.
"""

from __future__ import annotations

from typing import Any

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, DTYPES[precision])


def available(device: Any = None) -> tuple[bool, str]:
    return True, "always available"


def check_precision(precision: str, device: Any) -> None:
    """Every precision runs in eager (fp16 on a CPU is slow but correct)."""


class EagerRunner:
    """Runs ``module(*inputs)`` in eager mode; see the module docstring for the conventions."""

    name = "eager"

    def __init__(self, module: Any, *, precision: str, device: Any) -> None:
        self.device = device
        self.dtype = torch_dtype(precision)
        self.module = module.to(device=device, dtype=self.dtype).eval()

    def available(self) -> tuple[bool, str]:
        return available(self.device)

    def _prepare(self, inputs: tuple[Any, ...]) -> list[Any]:
        return [
            x.to(self.device, self.dtype if x.is_floating_point() else None, non_blocking=True) for x in inputs
        ]

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        import torch

        with torch.inference_mode():
            out = self.module(*self._prepare(inputs))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.float() for o in out)


def make_runner(
    part: str, module: Any, *, spec: Any, built: Any, weights: Any, precision: str, device: Any
) -> EagerRunner:
    return EagerRunner(module, precision=precision, device=device)
