"""Split-KV decoding attention (Triton, run by its interpreter on the CPU) against SDPA."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")


def reference(q, k, v, live, scale):
    groups = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(
        q,
        k.repeat_interleave(groups, 1),
        v.repeat_interleave(groups, 1),
        attn_mask=live.bool()[:, None, None],
        scale=scale,
    )
    return out.transpose(1, 2)


def live_rows(b: int, n: int) -> torch.Tensor:
    """Left padding with an unfilled tail, a full row, one key, and a row with a hole."""
    live = torch.zeros(b, n, dtype=torch.long)
    live[0, 10 : n - 40] = 1
    live[1, :] = 1
    live[2, 77] = 1
    live[3, 5 : n - 3] = 1
    live[3, 50:60] = 0
    return live


@pytest.mark.parametrize("heads,kv_heads,splits", [(8, 2, 1), (8, 2, 3), (9, 3, 1), (6, 6, 4), (9, 3, 64)])
def test_split_kv_decoding_matches_sdpa(heads, kv_heads, splits):
    from nerfleet.workers.decoding import attend, bounds_of

    torch.manual_seed(0)
    b, n, d = 4, 203, 24  # keys not a multiple of the tile, width not a power of two
    q = torch.randn(b, heads, 1, d)
    k, v = torch.randn(b, kv_heads, n, d), torch.randn(b, kv_heads, n, d)
    live = live_rows(b, n)
    ours = attend(q, k, v, live, bounds_of(live), d**-0.5, splits=splits)
    ref = reference(q, k, v, live, d**-0.5)
    assert ours.shape == ref.shape == (b, 1, heads, d)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_keys_outside_the_bounds_are_never_read():
    """NaN in the left padding and the unfilled tail would poison any read of them."""
    from nerfleet.workers.decoding import attend, bounds_of

    torch.manual_seed(1)
    b, h, kvh, n, d = 2, 4, 2, 150, 16
    q, k, v = torch.randn(b, h, 1, d), torch.randn(b, kvh, n, d), torch.randn(b, kvh, n, d)
    live = torch.zeros(b, n, dtype=torch.long)
    live[0, 30:100] = 1
    live[1, 64:65] = 1
    ref = reference(q, k, v, live, 0.25)
    k[0, :, :30] = k[0, :, 100:] = float("nan")
    v[0, :, :30] = v[0, :, 100:] = float("nan")
    k[1, :, :64] = k[1, :, 65:] = float("nan")
    v[1, :, :64] = v[1, :, 65:] = float("nan")
    for splits in (1, 5):
        ours = attend(q, k, v, live, bounds_of(live), 0.25, splits=splits)
        assert torch.allclose(ours, ref, atol=1e-5)


def test_bounds_and_split_plan():
    from nerfleet.workers.decoding import KEY_TILE, bounds_of, plan_splits

    live = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0]])
    assert bounds_of(live).tolist() == [[2, 5], [0, 6], [0, 0], [1, 4]]
    assert plan_splits(128 * 8, 896, sms=132) == 1  # Mistral-7B at batch 128 fills an H100
    assert plan_splits(8, 896, sms=132) == 896 // KEY_TILE  # batch 1: as many chunks as tiles
    assert plan_splits(128 * 3, 896, sms=132) == 1  # SmolLM2 at batch 128
    assert plan_splits(100, 896, sms=132) == 3  # fewer programs than two waves: split to fill them


def test_bounds_compiled_as_in_the_step_equal_eager():
    """The step computes the bounds inside its compiled graph. Under inductor on CUDA an argmax over
    the mask gave ends past the last live key (session 11). The CPU's inductor computes them right
    either way, so the compiled code is also checked for the argmax itself; the GPU check was
    ``bench/decode_attention.py --bounds`` (session 11, bench/NOTES.md). Masks of a generation's
    steps, left padding and holes: each compiled bound equal to eager."""
    from torch._inductor.utils import run_and_get_code

    from nerfleet.workers.decoding import bounds_of

    compiled = torch.compile(lambda m: bounds_of(m), dynamic=False)
    mask = torch.zeros(4, 96, dtype=torch.long)
    mask[:, 8:40] = 1  # prompts of 32 tokens, left-padded by 8; then 56 new tokens' positions
    mask[1, :8] = 1  # an unpadded row
    mask[2, 20:30] = 0  # a hole
    for step in range(0, 56, 5):
        mask[:, 40 + step] = 1
        expected = [[r.nonzero().min().item(), r.nonzero().max().item() + 1] for r in mask]
        assert bounds_of(mask).tolist() == expected
        assert compiled(mask).tolist() == expected
    assert compiled(torch.zeros_like(mask)).tolist() == [[0, 0]] * 4
    # and no argmax reduction, the lowering that was wrong on CUDA (the old code had 6 in this code)
    _, code = run_and_get_code(lambda: compiled(mask))
    assert "argmax" not in "\n".join(code)


def test_a_row_without_keys_gets_zeros_and_bad_shapes_are_refused():
    from nerfleet.workers.decoding import attend, bounds_of

    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 70, 16), torch.randn(2, 2, 70, 16)
    live = torch.zeros(2, 70, dtype=torch.long)
    live[0, 3:9] = 1
    out = attend(q, k, v, live, bounds_of(live), 0.25, splits=2)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.allclose(out[:1], reference(q, k, v, live, 0.25)[:1], atol=1e-5)
    with pytest.raises(ValueError, match="one query per row, got 3"):
        attend(torch.randn(2, 4, 3, 16), k, v, live, bounds_of(live), 0.25)
    with pytest.raises(ValueError, match="5 query heads cannot share 2"):
        attend(torch.randn(2, 5, 1, 16), k, v, live, bounds_of(live), 0.25)
