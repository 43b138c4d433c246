"""Does the compiled FlexAttention path of ``workers/attention.py`` equal SDPA on this GPU?

Kernel level, for the attention shapes of SmolLM2-135M (9 query / 3 key-value heads, d 64) and
Mistral-7B (32 / 8, d 128): a decoding step over a left-padded static cache with an unfilled tail,
and a left-padded causal prefill, compiled as the engine compiles them, against SDPA with the dense
mask, in float32 and bfloat16.

    python bench/flex_check.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nerfleet.workers.attention import _flex, block_mask


def case(heads: int, kv_heads: int, d: int, queries: int, dtype) -> float:
    g = torch.Generator(device="cuda").manual_seed(0)
    b, width, total = 8, 768, 896
    keys = total if queries == 1 else width
    lens = torch.randint(200, width + 1, (b,), generator=g, device="cuda")
    pos = torch.arange(keys, device="cuda")
    live = (pos[None, :] >= width - lens[:, None]) & (pos[None, :] < width + (1 if queries == 1 else 0))
    q = torch.randn(b, heads, queries, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, kv_heads, keys, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, kv_heads, keys, d, device="cuda", dtype=dtype, generator=g)
    if queries == 1:
        dense = live[:, None, None, :]
        mask_rows = live[:, None, :]
    else:
        causal = torch.ones(queries, keys, dtype=torch.bool, device="cuda").tril()
        dense = (live[:, None, :] & causal[None])[:, None]
        mask_rows = dense[:, 0]
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=dense, enable_gqa=True)
    ref = ref.transpose(1, 2)

    @torch.compile(fullgraph=False, dynamic=False)
    def run(q, k, v, rows):
        return _flex(q, k, v, block_mask(rows), d**-0.5)

    out = run(q, k, v, mask_rows).float()
    rows = slice(None) if queries == 1 else slice(width - int(lens.min()), None)  # padding queries: no keys
    return float((out[:, rows] - ref[:, rows]).abs().max())


def main() -> None:
    print(f"{'shape':<28} {'step':<8} {'float32':>10} {'bfloat16':>10}")
    for heads, kv_heads, d in ((9, 3, 64), (32, 8, 128)):
        for queries, step in ((1, "decode"), (768, "prefill")):
            diffs = []
            for dtype in (torch.float32, torch.bfloat16):
                try:
                    diffs.append(f"{case(heads, kv_heads, d, queries, dtype):10.3g}")
                except Exception as exc:  # a kernel that does not compile is a result here
                    diffs.append(f"{type(exc).__name__:>10}")
            print(f"{heads}/{kv_heads} heads d{d:<17} {step:<8} {' '.join(diffs)}")


if __name__ == "__main__":
    main()
