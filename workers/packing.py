"""A prefill's prompts packed into one sequence: no padding, each prompt attending only to itself.

The continuous engine prefills the prompts it admits together. Padded to a common width, a fleet's
prompts of every length computed a tenth more positions than they held (the 7B's fleet run of
session 19: 680,896 positions for 613,492 prompt tokens, bench/NOTES.md); packed end to end, a
prefill computes exactly its prompts' tokens, and its matrix products see one (1, tokens) input
whatever the prompts' lengths. The attention keeps the prompts apart: on a GPU, flash attention's
variable-length kernel (``cu_seqlens``, as vLLM's prefill and ``torch.nn.attention.varlen``);
elsewhere, one masked attention per prompt.

A prompt may start after a kept prefix (:mod:`nerfleet.workers.prefixes`): its own tokens are
computed at the positions after it, and attend to the prefix's keys, copied into its slot, and to
their own (causal, aligned at the end: query i of n over m keys sees keys up to m - n + i).

The attention reads each prompt's keys where they are, in its slot of the engine's cache, with no
copy: flash's kernel takes a key tensor (rows, heads, d) with any row and head strides, and a start
row and a length per prompt (``seqused_k``); the cache (slots, heads, length, d) seen with rows of
stride d and heads of stride length * d is such a tensor, in which slot s's position p is row
s * heads * length + p. (Gathering the keys of a prefill with kept prefixes into one packed tensor
cost every layer a copy of all of them.)
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Packing:
    """Where a packed prefill's tokens come from and go to (all on the model's device)."""

    #: The computed tokens, end to end (1, T), and each one's position in its prompt.
    ids: torch.Tensor
    positions: torch.Tensor
    #: Each computed token's slot (T,): its key and value go to (slot, position).
    slot_of: torch.Tensor
    #: Each prompt's last token in the packed sequence: where its first answer token's logits are.
    last: torch.Tensor
    #: Queries (computed tokens) per prompt, cumulated from 0 (int32, as the flash kernel takes
    #: them), with their lengths on the host.
    cu_q: torch.Tensor
    q_lens: list[int]
    #: Each prompt's slot, and the keys it reads there (its kept prefix and its own tokens: the
    #: slot's first ``k_lens`` positions), on the device (int32, flash's ``seqused_k``) and on the host.
    slots: list[int]
    k_used: torch.Tensor
    k_lens: list[int]
    #: Each prompt's first row in the cache read :func:`by_row`, and one past the last prompt's
    #: keys (int32, as flash's ``cu_seqlens_k``).
    key_starts: torch.Tensor
    #: Kept prefixes: (slot, position, entry) of every prefix token to copy in; None when no prompt
    #: has a prefix.
    copy: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def _ragged(lengths: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For prompts of these lengths laid end to end: each item's prompt index, its offset within
    its prompt, and the prompts' cumulated starts (int64, on ``device``)."""
    n = torch.tensor(lengths, device=device)
    starts = torch.zeros(len(lengths) + 1, dtype=torch.long, device=device)
    starts[1:] = n.cumsum(0)
    total = sum(lengths)
    index = torch.repeat_interleave(torch.arange(len(lengths), device=device), n, output_size=total)
    return index, torch.arange(total, device=device) - starts[index], starts


def pack(
    prompts: Sequence[Sequence[int]],
    kept: Sequence[int],
    slots: Sequence[int],
    entries: Sequence[int] | None,
    device,
    slot_rows: int,
) -> Packing:
    """The packing of these prompts (token ids) into these slots of a cache with ``slot_rows`` rows
    a slot when read :func:`by_row` (kv heads × slot length), each computed after its ``kept``
    first tokens (0: none), which are copied from prefix entry ``entries[i]``."""
    q_lens = [len(p) - k for p, k in zip(prompts, kept)]
    if min(q_lens) < 1:
        raise ValueError("every packed prompt needs a token of its own after its kept prefix")
    flat = array.array("q", itertools.chain.from_iterable(p[k:] for p, k in zip(prompts, kept)))
    ids = torch.frombuffer(flat, dtype=torch.int64).to(device)[None]
    slot_index = torch.tensor(slots, device=device)
    prompt, offset, starts = _ragged(q_lens, device)
    at = torch.tensor(kept, device=device)
    k_lens = [len(p) for p in prompts]
    packing = Packing(
        ids=ids,
        positions=(offset + at[prompt])[None],
        slot_of=slot_index[prompt],
        last=starts[1:] - 1,
        cu_q=starts.to(torch.int32),
        q_lens=q_lens,
        slots=list(slots),
        k_used=torch.tensor(k_lens, dtype=torch.int32, device=device),
        k_lens=k_lens,
        key_starts=torch.tensor(
            [s * slot_rows for s in slots] + [slots[-1] * slot_rows + k_lens[-1]], dtype=torch.int32, device=device
        ),
    )
    if any(kept):
        entry_index = torch.tensor(entries, device=device)
        pre, pre_pos, _ = _ragged(kept, device)
        packing.copy = (slot_index[pre], pre_pos, entry_index[pre])
    return packing


def _flash_runs(query: torch.Tensor) -> bool:
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] % 8 == 0


def by_row(cache: torch.Tensor) -> torch.Tensor:
    """A slot cache (slots, heads, length, d) seen as rows of keys (rows, heads, d), no copy: slot
    s's position p is row s * heads * length + p (rows of stride d, heads of stride length * d)."""
    if not cache.is_contiguous():
        raise ValueError("the slot cache must be contiguous to be read by rows")
    slots, heads, length, d = cache.shape
    rows = (slots - 1) * heads * length + length  # past the last slot's last position: other heads' rows
    return cache.as_strided((rows, heads, d), (d, length * d, 1), cache.storage_offset())


def packed_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    packing: Packing,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of each packed prompt's queries (T, heads, d) over its keys in its slot of
    the cache ``keys``/``values`` (slots, kv heads, length, d), aligned at the end, within a
    sliding ``window`` if given: (T, heads, d)."""
    if _flash_runs(query):
        if query.stride(-1) != 1:
            query = query.contiguous()
        left, right = (window - 1, 0) if window else (None, None)
        return torch.ops.aten._flash_attention_forward(
            query, by_row(keys), by_row(values), packing.cu_q, packing.key_starts,
            max(packing.q_lens), max(packing.k_lens), 0.0, True, False,
            scale=scale, window_size_left=left, window_size_right=right, seqused_k=packing.k_used,
        )[0]  # fmt: skip
    outs, q0 = [], 0
    for slot, n, m in zip(packing.slots, packing.q_lens, packing.k_lens):
        rows = torch.arange(n, device=query.device)[:, None] + (m - n)
        cols = torch.arange(m, device=query.device)[None, :]
        mask = cols <= rows
        if window:
            mask &= rows - cols < window
        q = query[q0 : q0 + n].transpose(0, 1)[None]
        k, v = (t[slot, :, :m][None] for t in (keys, values))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))
        q0 += n
    return torch.cat(outs)
