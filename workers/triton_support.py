"""What nerfleet's Triton kernels (batch-invariant mode, split-KV decoding) need to know of their
surroundings: whether triton is there, and whether its interpreter runs them on the CPU."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_missing() -> str | None:
    """Why the kernels cannot be compiled here, or None when triton imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "needs triton (it comes with torch on CUDA)"
    return None


def kernel_flags(dtype: torch.dtype) -> dict:
    """``FP32_DOT``: the interpreter cannot multiply bf16 tiles, so they are widened first there;
    ``IEEE``: float32 models multiply in full float32 (``tl.dot``'s default is TF32)."""
    return {"FP32_DOT": interpreting(), "IEEE": dtype == torch.float32 and not interpreting()}
