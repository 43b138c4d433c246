"""The packed prefill's attention on a GPU: flash's variable-length kernel against the per-prompt
masked attention the engine runs elsewhere, on the study's attention shapes.

The continuous engine packs a prefill's prompts end to end (``nerfleet.workers.packing``); on a GPU
in bf16 their attention is ``aten._flash_attention_forward`` with cumulated lengths, which the CPU
tests cannot run. This checks it against the per-prompt masked SDPA in float32 on the same device:
prompts of a fleet's lengths, without and with kept prefixes (more keys than queries, the causal
mask aligned at the end), and with a sliding window shorter than the prompts, each prompt's keys read
in place from its slot of a cache (slots spread, free ones between). It prints the largest
difference per case and its time against the same prompts right-padded through SDPA's flash
backend; it exits non-zero when a difference passes bf16's tolerance.

    python bench/packed_attention.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nerfleet.workers.packing import pack, packed_attention

HEADS = {"mistral-7b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}
TOLERANCE = 2e-2  # bf16 against float32, outputs of order 1


def timed_ms(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats


def case(name: str, heads: tuple[int, int, int], lengths: list[int], kept: list[int], window: int | None) -> dict:
    h, kvh, d = heads
    dev = torch.device("cuda")
    n = len(lengths)
    # the prompts' slots spread over a cache with free slots between them, as a fleet's refills are
    slots = sorted(random.Random(n).sample(range(2 * n + 1), n))
    length = max(lengths) + 64
    packing = pack([[0] * m for m in lengths], kept, slots, [0] * n, dev, kvh * length)
    q = torch.randn(sum(packing.q_lens), h, d, device=dev, dtype=torch.bfloat16)
    keys, values = (torch.randn(2 * n + 1, kvh, length, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
    scale = d**-0.5
    got = packed_attention(q, keys, values, packing, scale, window)
    want = packed_attention(q.float(), keys.float(), values.float(), packing, scale, window)  # the masked path
    row = {"case": name, "prompts": n, "tokens": sum(packing.q_lens), "keys": sum(packing.k_lens)}
    row["max_abs_diff"] = (got.float() - want).abs().max().item()
    row["packed_ms"] = timed_ms(lambda: packed_attention(q, keys, values, packing, scale, window))
    # what reading the keys in place saves: one layer's copy of every prompt's keys and values out
    # of the cache into one packed tensor (what the packed prefill did before, with kept prefixes)
    slot_of = torch.repeat_interleave(torch.tensor(slots, device=dev), torch.tensor(packing.k_lens, device=dev))
    position = torch.cat([torch.arange(m, device=dev) for m in packing.k_lens])
    row["gather_ms"] = timed_ms(lambda: (keys[slot_of, :, position], values[slot_of, :, position]))
    if not any(kept) and window is None:  # the same prompts right-padded to the longest, SDPA's flash
        width = max(lengths)
        qp = torch.randn(n, h, width, d, device=dev, dtype=torch.bfloat16)
        kp, vp = (torch.randn(n, kvh, width, d, device=dev, dtype=torch.bfloat16) for _ in range(2))

        def padded():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)

        row["padded_ms"] = timed_ms(padded)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = random.Random(0)
    rows = []
    for model, heads in HEADS.items():
        lengths = [rng.randint(300, 1500) for _ in range(48)]
        kept = [rng.randint(40, 200) for _ in lengths]
        rows.append(case(f"{model} prompts", heads, lengths, [0] * len(lengths), None))
        rows.append(case(f"{model} after kept prefixes", heads, lengths, kept, None))
        rows.append(case(f"{model} window 256", heads, lengths, [0] * len(lengths), 256))
        rows.append(case(f"{model} prefixes and window 256", heads, lengths, kept, 256))
        rows.append(case(f"{model} one-token prompts", heads, [1, 1, 5], [0, 0, 4], None))
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "tolerance": TOLERANCE,
        "cases": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    worst = max(r["max_abs_diff"] for r in rows)
    print(f"largest difference {worst:.2e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
