"""Compile every Triton kernel of nerfleet for a GPU (sm_90, the H100) on a machine without one.

Triton lowers a kernel to PTX and assembles it with the ``ptxas`` its wheel ships, so a kernel
that would not compile on the GPU (a type error, a shape that is not a constant, shared memory
past the device's) fails here, before any GPU session. The interpreter tests check what the
kernels compute; this checks that they build, specialised as Triton's launcher specialises a
real launch (Mistral-7B's shapes at batch 128, as the ops call them): an integer argument equal
to 1 becomes a constant, one divisible by 16 and every pointer carry ``tt.divisibility=16``;
without that no load is vectorised and the code would not be the GPU's. Run without
``TRITON_INTERPRET`` (under it ``@triton.jit`` gives interpreted functions):

    python -m tests.triton_targets          # one line per kernel: size, shared memory, how it loads
"""

from __future__ import annotations

import inspect
import re
import sys
from collections import Counter
from dataclasses import dataclass

import torch

#: Hopper's shared memory per block (227 KiB opt-in).
SHARED_LIMIT = 232_448
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass
class Launch:
    """One kernel as an op launches it: pointer types, example integers, float arguments, constants."""

    name: str
    kernel: object
    pointers: dict[str, str]
    ints: dict[str, int]
    constants: dict
    floats: tuple[str, ...] = ()
    num_warps: int = 4
    num_stages: int = 3  # Triton's default; the decoding op passes its own

    def specialised(self) -> tuple[dict, dict, dict]:
        """(signature, constants, attributes) as the launcher would make them."""
        names = list(inspect.signature(self.kernel.fn).parameters)
        missing = set(names) - set(self.pointers) - set(self.ints) - set(self.constants) - set(self.floats)
        if missing:
            raise ValueError(f"{self.name}: no example for {sorted(missing)}")
        constants = dict(self.constants) | {n: 1 for n, v in self.ints.items() if v == 1}
        sig, attrs = {}, {}
        for i, n in enumerate(names):
            if n in constants:
                sig[n] = "constexpr"
            elif n in self.pointers:
                sig[n] = self.pointers[n]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif n in self.floats:
                sig[n] = "fp32"
            else:
                sig[n] = "i32"
                if self.ints[n] % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        return sig, constants, attrs


def compile_for(launch: Launch, capability: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constants, attrs = launch.specialised()
    source = ASTSource(fn=launch.kernel, signature=sig, constexprs=constants, attrs=attrs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def launches() -> list[Launch]:
    """Each kernel as nerfleet's ops launch it for Mistral-7B (32 query heads, 8 key/value heads of
    128, hidden 4096) at batch 128, cache 896, prompt 640, in bf16 and float32."""
    from nerfleet.workers import decoding, decoding_kernels, invariant, invariant_kernels
    from nerfleet.workers.triton_support import kernel_flags

    h, kvh, d, n, prompt = 32, 8, 128, 896, 640

    def kv_strides(keys: int) -> dict[str, int]:
        """Strides of contiguous keys and values (batch, kv heads, keys, d)."""
        return {f"stride_{x}{dim}": s for x in "kv" for dim, s in zip("bhn", (kvh * keys * d, keys * d, d))}

    out = []
    for dtype in (torch.bfloat16, torch.float32):
        t, flags, ty = f"*{TYPES[dtype]}", kernel_flags(dtype), TYPES[dtype]
        for splits in (1, 2):
            ints = dict(H=h, KVH=kvh, GROUPS=h // kvh, D=d, CHUNK=n // splits, SPLITS=splits, stride_qb=h * d)
            ints |= kv_strides(n) | dict(stride_qh=d, stride_lb=n, stride_ob=h * d, stride_oh=d)
            pointers = dict(q=t, k=t, v=t, live="*i8", bounds="*i32", out=t, part_acc="*fp32", part_ml="*fp32")
            constants = {"FINAL": splits == 1, **flags, "BM": 16, "BN": decoding.KEY_TILE, "BD": d}
            out.append(
                Launch(
                    f"partial_kernel {ty} splits={splits}",
                    decoding_kernels.partial_kernel,
                    pointers,
                    ints,
                    constants,
                    floats=("scale_log2",),
                    num_warps=decoding.NUM_WARPS,
                    num_stages=decoding.NUM_STAGES,
                )
            )
        out.append(
            Launch(
                f"combine_kernel {ty}",
                decoding_kernels.combine_kernel,
                dict(part_acc="*fp32", part_ml="*fp32", out=t),
                dict(H=h, D=d, SPLITS=2, stride_ob=h * d, stride_oh=d),
                {"BS": 2, "BD": d},
            )
        )
        bm, bn, bk = invariant.MATMUL_TILE
        for rows, bias in ((128, False), (128 * prompt, True)):  # a decoding step's and a prefill's product
            # x (rows × 4096) @ W.t(): the weight's transpose, so its first stride is 1
            ints = dict(M=rows, N=4096, K=4096, stride_am=4096, stride_ak=1, stride_bk=1, stride_bn=4096)
            ints |= dict(stride_cm=4096, stride_cn=1)
            out.append(
                Launch(
                    f"matmul_kernel {ty} rows={rows} bias={bias}",
                    invariant_kernels.matmul_kernel,
                    dict(a=t, b=t, c=t, bias=t),
                    ints,
                    {"HAS_BIAS": bias, **flags, "BM": bm, "BN": bn, "BK": bk},
                    num_warps=invariant.MATMUL_WARPS,
                    num_stages=invariant.MATMUL_STAGES,
                )
            )
        out.append(
            Launch(
                f"row_mean_kernel {ty}",
                invariant_kernels.row_mean_kernel,
                dict(x=t, out="*fp32"),
                dict(N=4096, stride_row=4096),
                {"BLOCK": 1024},
            )
        )
        for lq, lk, bm in ((1, n, 16), (prompt, prompt, 64)):  # a decoding step and a prefill
            ints = dict(Lq=lq, Lk=lk, H=h, GROUPS=h // kvh, D=d, stride_qb=h * lq * d, stride_qh=lq * d, stride_qm=d)
            ints |= kv_strides(lk) | dict(stride_ob=lq * h * d, stride_om=h * d, stride_oh=d)
            out.append(
                Launch(
                    f"attention_kernel {ty} Lq={lq}",
                    invariant_kernels.attention_kernel,
                    dict(q=t, k=t, v=t, o=t, starts="*i32"),
                    ints,
                    {**flags, "BM": bm, "BN": invariant.KEY_TILE, "BD": d},
                    floats=("scale",),
                )
            )
    return out


def loads(ptx: str) -> str:
    """How the kernel reads global memory and multiplies, from its PTX."""
    ops = Counter(re.findall(r"\b(ld\.global(?:\.\w+)*|cp\.async\.cg\.shared\.global|wgmma\.mma_async|mma\.sync)", ptx))
    return ", ".join(f"{op} ×{count}" for op, count in sorted(ops.items()))


def reason(exc: BaseException) -> str:
    """The innermost error's last line: Triton wraps it in the caller's source with a caret."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip().strip("^")]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def main() -> int:
    failed = 0
    for launch in launches():
        try:
            kernel = compile_for(launch)
        except Exception as exc:  # every failure is reported, not only the first
            print(f"FAILED {launch.name}: {reason(exc)}")
            failed += 1
            continue
        shared = kernel.metadata.shared
        ok = shared <= SHARED_LIMIT
        failed += not ok
        size = len(kernel.asm["cubin"])
        print(f"{'ok' if ok else 'FAILED'} {launch.name}: {size:,} B of sm_90 code, {shared:,} B shared; ", end="")
        print(loads(kernel.asm["ptx"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
