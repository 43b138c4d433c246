"""Compile every Triton kernel of nerfleet for a GPU (sm_90, the H100) on a machine without one.

Triton lowers a kernel to PTX and assembles it with the ``ptxas`` its wheel ships, so a kernel
that would not compile on the GPU (a type error, a shape that is not a constant, shared memory
past the device's) fails here, before any GPU session. The interpreter tests check what the
kernels compute; this checks that they build, with the tile sizes and flags the ops launch them
with. Run without ``TRITON_INTERPRET`` (under it ``@triton.jit`` gives interpreted functions):

    python -m tests.triton_targets
"""

from __future__ import annotations

import inspect
import sys

import torch

#: Hopper's shared memory per block (227 KiB opt-in).
SHARED_LIMIT = 232_448
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def signature(fn, pointers: dict[str, str], floats: tuple[str, ...], constants: dict) -> dict:
    """Triton's signature: pointers as given, the named floats fp32, constants constexpr, the rest i32."""
    names = inspect.signature(fn.fn).parameters
    return {n: "constexpr" if n in constants else pointers.get(n) or ("fp32" if n in floats else "i32") for n in names}


def compile_for(fn, sig: dict, constants: dict, num_warps: int = 4, num_stages: int = 2, capability: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=fn, signature=sig, constexprs=constants)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def launches():
    """(name, kernel, signature, constants, warps, stages) for each kernel as nerfleet's ops launch it."""
    from nerfleet.workers import decoding, decoding_kernels, invariant, invariant_kernels
    from nerfleet.workers.triton_support import kernel_flags

    for dtype in (torch.bfloat16, torch.float32):
        t, flags = f"*{TYPES[dtype]}", kernel_flags(dtype)
        for final in (True, False):
            constants = {"FINAL": final, **flags, "BM": 16, "BN": decoding.KEY_TILE, "BD": 128}
            pointers = dict(q=t, k=t, v=t, live="*i8", bounds="*i32", out=t, part_acc="*fp32", part_ml="*fp32")
            sig = signature(decoding_kernels.partial_kernel, pointers, ("scale_log2",), constants)
            yield (
                f"partial_kernel {TYPES[dtype]} FINAL={final}",
                decoding_kernels.partial_kernel,
                sig,
                constants,
                decoding.NUM_WARPS,
                decoding.NUM_STAGES,
            )
        constants = {"BS": 4, "BD": 128}
        sig = signature(decoding_kernels.combine_kernel, dict(part_acc="*fp32", part_ml="*fp32", out=t), (), constants)
        yield f"combine_kernel {TYPES[dtype]}", decoding_kernels.combine_kernel, sig, constants, 4, 2
        bm, bn, bk = invariant.MATMUL_TILE
        for has_bias in (False, True):
            constants = {"HAS_BIAS": has_bias, **flags, "BM": bm, "BN": bn, "BK": bk}
            sig = signature(invariant_kernels.matmul_kernel, dict(a=t, b=t, c=t, bias=t), (), constants)
            yield f"matmul_kernel {TYPES[dtype]} bias={has_bias}", invariant_kernels.matmul_kernel, sig, constants, 4, 3
        constants = {"BLOCK": 1024}
        sig = signature(invariant_kernels.row_mean_kernel, dict(x=t, out="*fp32"), (), constants)
        yield f"row_mean_kernel {TYPES[dtype]}", invariant_kernels.row_mean_kernel, sig, constants, 4, 3
        for bm in (16, 64):  # one query per row (decoding) and a prompt's
            constants = {**flags, "BM": bm, "BN": invariant.KEY_TILE, "BD": 128}
            pointers = dict(q=t, k=t, v=t, o=t, starts="*i32")
            sig = signature(invariant_kernels.attention_kernel, pointers, ("scale",), constants)
            yield f"attention_kernel {TYPES[dtype]} BM={bm}", invariant_kernels.attention_kernel, sig, constants, 4, 3


def reason(exc: BaseException) -> str:
    """The innermost error's last line: Triton wraps it in the caller's source with a caret."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip().strip("^")]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def main() -> int:
    failed = 0
    for name, fn, sig, constants, warps, stages in launches():
        try:
            kernel = compile_for(fn, sig, constants, warps, stages)
        except Exception as exc:  # every failure is reported, not only the first
            print(f"FAILED {name}: {reason(exc)}")
            failed += 1
            continue
        shared = kernel.metadata.shared
        ok = shared <= SHARED_LIMIT
        failed += not ok
        size = len(kernel.asm["cubin"])
        print(f"{'ok' if ok else 'FAILED'} {name}: {size:,} bytes of sm_90 code, {shared:,} B shared")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
