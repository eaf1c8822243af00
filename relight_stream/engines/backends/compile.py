"""``torch.compile`` backend (inductor), applied per repeated block (torchtitan's ``apply_compile``).

Each ``nn.ModuleList`` of same-class blocks (transformer layers, Hiera blocks, UNet resnets) is compiled block by
block, so compile time grows with the number of distinct block shapes, not with depth. On CUDA, a part whose
inputs have static shapes apart from the batch (every part except the VAE encoder, which takes the caller's size:
the engines resize to the model's input size) is instead compiled whole with ``mode="reduce-overhead"``, i.e. with
CUDA graphs (one per batch size seen); ``RELIGHT_CUDAGRAPHS=0`` turns that off. Outputs are fp32 copies.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from relight_stream.engines.backends.eager import EagerRunner

log = logging.getLogger(__name__)


def available(device: Any = None) -> tuple[bool, str]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False, "torch is not installed"
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    if getattr(device, "type", str(device)) == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed (inductor needs it on CUDA)"
    return True, "torch.compile (inductor)"


def check_precision(precision: str, device: Any) -> None:
    """Every precision compiles."""


def compile_blocks(module: Any) -> int:
    """Compile, in place, every block of every ``ModuleList`` whose items share one class; returns the count."""
    import torch

    count = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.ModuleList) and len(sub) > 1 and len({type(b) for b in sub}) == 1:
            for block in sub:
                block.compile(dynamic=False)
                count += 1
    # The blocks share one code object; blocks of different widths or strides (Hiera's stages, SAM2's
    # windowed/global attention) each add a graph, and past dynamo's limit (8) the rest would silently run eager.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), count + 8))
            break
    return count


class CompileRunner(EagerRunner):
    """An :class:`EagerRunner` whose repeated blocks (or whole module, with CUDA graphs) are compiled."""

    name = "compile"

    def __init__(self, module: Any, *, precision: str, device: Any, static_shapes: bool = False) -> None:
        super().__init__(module, precision=precision, device=device)
        cuda = getattr(device, "type", str(device)) == "cuda"
        self.cudagraphs = cuda and static_shapes and os.environ.get("RELIGHT_CUDAGRAPHS", "1") != "0"
        if self.cudagraphs:
            self.module.compile(mode="reduce-overhead", dynamic=False)
            log.debug("compiled %s whole with CUDA graphs", type(module).__name__)
            return
        n = compile_blocks(self.module)
        if n == 0:  # no repeated blocks (e.g. a small conv net): compile the whole module
            self.module.compile(dynamic=False)
        log.debug("compiled %d blocks of %s", n, type(module).__name__)

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        if not self.cudagraphs:
            return super().__call__(*inputs)
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        # CUDA-graph outputs live in static buffers that the next replay overwrites: hand out copies
        return tuple(o.clone() for o in super().__call__(*inputs))


def make_runner(
    part: str, module: Any, *, spec: Any, built: Any, weights: Any, precision: str, device: Any
) -> CompileRunner:
    static = built is not None and not built.io[part].dynamic_axes
    return CompileRunner(module, precision=precision, device=device, static_shapes=static)
