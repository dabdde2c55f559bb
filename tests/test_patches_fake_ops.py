"""The fake torch_npu's fused ops against independent formulas, so the numerical patch tests rest on a
trustworthy double: layouts, the explicit scale (default 1.0), True = masked out, sparse modes, GQA,
varlen, the softmax kernel's shape limits, and the RMSNorm / rotary / SwiGLU formulas.

The independent reference for attention is torch's own scaled_dot_product_attention (bool mask, True =
attend); for rotary, rotation of complex numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from patches_support import single_thread  # noqa: F401 - autouse fixture

B, NQ, NKV, D = 2, 4, 2, 16


@pytest.fixture
def ops(fake_torch_npu):
    return fake_torch_npu()


def qkv(q_len=6, kv_len=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NQ, q_len, D, generator=generator)
    k = torch.randn(B, NKV, kv_len, D, generator=generator)
    v = torch.randn(B, NKV, kv_len, D, generator=generator)
    return q, k, v


def sdpa(q, k, v, attend=None, scale=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=scale, enable_gqa=True)


def triu_2048():
    return torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)


def test_fusion_attention_bnsd_equals_sdpa_with_the_scale_passed_and_gqa(ops):
    q, k, v = qkv()
    scale = D**-0.5
    out, softmax_max, softmax_sum, *_ = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", scale=scale)
    torch.testing.assert_close(out, sdpa(q, k, v), rtol=0, atol=1e-6)
    # the row statistics the backward uses: 8 copies of max and sum of exp(score - max)
    scores = (q @ k.repeat_interleave(NQ // NKV, dim=1).transpose(-1, -2)) * scale
    assert softmax_max.shape == softmax_sum.shape == (B, NQ, 6, 8)
    torch.testing.assert_close(softmax_max[..., 0] + softmax_sum[..., 0].log(), scores.logsumexp(-1))


def test_fusion_attention_scale_defaults_to_one_not_inverse_sqrt_d(ops):
    q, k, v = qkv()
    default = ops.npu_fusion_attention(q, k, v, NQ, "BNSD")[0]
    torch.testing.assert_close(default, sdpa(q, k, v, scale=1.0), rtol=0, atol=1e-6)
    assert (default - sdpa(q, k, v)).abs().max() > 1e-2


@pytest.mark.parametrize("layout", ["BSH", "SBH", "BSND", "BNSD"])
def test_fusion_attention_layouts_agree(ops, layout):
    q, k, v = qkv(q_len=5, kv_len=7)
    expected = sdpa(q, k, v, scale=0.3)  # BNSD

    def to_layout(t):
        bsnd = t.transpose(1, 2)
        if layout == "BNSD":
            return t
        if layout == "BSND":
            return bsnd
        bsh = bsnd.reshape(t.shape[0], t.shape[2], -1)
        return bsh.transpose(0, 1) if layout == "SBH" else bsh

    out = ops.npu_fusion_attention(*(to_layout(t) for t in (q, k, v)), NQ, layout, scale=0.3)[0]
    torch.testing.assert_close(out, to_layout(expected), rtol=0, atol=1e-6)


def test_fusion_attention_mask_true_means_masked_out(ops):
    q, k, v = qkv()
    masked = torch.zeros(B, 1, 6, 6, dtype=torch.bool)
    masked[0, :, :, 2] = True  # batch 0 never sees key 2
    out = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=masked, scale=0.25)[0]
    torch.testing.assert_close(out, sdpa(q, k, v, attend=~masked, scale=0.25), rtol=0, atol=1e-6)
    keep = [0, 1, 3, 4, 5]  # same as dropping key 2 from batch 0
    torch.testing.assert_close(out[:1], sdpa(q[:1], k[:1, :, keep], v[:1, :, keep], scale=0.25), rtol=0, atol=1e-6)
    uint8 = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=masked.to(torch.uint8), scale=0.25)[0]
    torch.testing.assert_close(uint8, out, rtol=0, atol=0)


def test_causal_sparse_modes_agree_with_a_full_mask_and_with_sdpa(ops):
    q, k, v = qkv(q_len=9, kv_len=9)
    causal_full = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    mode0 = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=causal_full, next_tockens=0, scale=0.2)[0]
    mode2 = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=triu_2048(), sparse_mode=2, scale=0.2)[0]
    mode3 = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=triu_2048(), sparse_mode=3, scale=0.2)[0]
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    for out in (mode0, mode2, mode3):
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)


def test_left_up_and_right_down_causal_differ_when_the_query_is_shorter(ops):
    q, k, v = qkv(q_len=3, kv_len=8)  # a chunk of 3 new tokens after 5 cached ones
    mode2 = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=triu_2048(), sparse_mode=2, scale=0.2)[0]
    mode3 = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=triu_2048(), sparse_mode=3, scale=0.2)[0]
    rows, cols = torch.arange(3)[:, None], torch.arange(8)[None, :]
    torch.testing.assert_close(mode2, sdpa(q, k, v, attend=cols <= rows, scale=0.2), rtol=0, atol=1e-6)
    torch.testing.assert_close(mode3, sdpa(q, k, v, attend=cols <= rows + 5, scale=0.2), rtol=0, atol=1e-6)


def test_band_of_pre_and_next_tockens_in_default_mode(ops):
    q, k, v = qkv(q_len=7, kv_len=7)
    nothing = torch.zeros(7, 7, dtype=torch.bool)
    out = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=nothing, pre_tockens=2, next_tockens=1, scale=0.2)[0]
    rows, cols = torch.arange(7)[:, None], torch.arange(7)[None, :]
    band = (cols >= rows - 2) & (cols <= rows + 1)
    torch.testing.assert_close(out, sdpa(q, k, v, attend=band, scale=0.2), rtol=0, atol=1e-6)


def test_without_a_mask_sparse_mode_and_tockens_have_no_effect(ops):
    q, k, v = qkv()
    out = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", sparse_mode=3, next_tockens=0, scale=0.2)[0]
    torch.testing.assert_close(out, sdpa(q, k, v, scale=0.2), rtol=0, atol=1e-6)


def test_compressed_modes_reject_a_full_size_mask(ops):
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="compressed 2048x2048"):
        full_size = torch.ones(6, 6, dtype=torch.bool).triu(1)
        ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=full_size, sparse_mode=2)


def test_rows_with_every_key_masked_are_undefined_unless_inner_precise_2(ops):
    q, k, v = qkv()
    masked = torch.zeros(B, 1, 6, 6, dtype=torch.bool)
    masked[0, :, 0] = True  # query 0 of batch 0 sees no key
    out = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=masked, scale=0.2)[0]
    assert out[0, :, 0].isnan().all() and not out[1].isnan().any()
    out = ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=masked, scale=0.2, inner_precise=2)[0]
    assert (out[0, :, 0] == 0).all()


def test_heads_must_divide_and_match_head_num(ops):
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="head_num"):
        ops.npu_fusion_attention(q, k, v, NQ + 1, "BNSD")
    with pytest.raises(RuntimeError, match="whole number"):
        ops.npu_fusion_attention(q[:, :3], k, v, 3, "BNSD")


def tnd(lengths, kv_lengths=None, seed=1, heads=NQ, kv_heads=NKV):
    generator = torch.Generator().manual_seed(seed)
    kv_total = sum(kv_lengths or lengths)
    q = torch.randn(sum(lengths), heads, D, generator=generator)
    k = torch.randn(kv_total, kv_heads, D, generator=generator)
    v = torch.randn(kv_total, kv_heads, D, generator=generator)
    return q, k, v


def per_document_sdpa(q, k, v, q_lengths, kv_lengths, scale, bottom_right=True):
    """Independent formula: torch sdpa on each document, causal from the bottom-right (or top-left) corner."""
    outs, q_start, kv_start = [], 0, 0
    for q_len, kv_len in zip(q_lengths, kv_lengths):
        piece_q = q[q_start : q_start + q_len].transpose(0, 1)
        piece_k, piece_v = (t[kv_start : kv_start + kv_len].transpose(0, 1) for t in (k, v))
        rows, cols = torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :]
        attend = cols <= rows + (kv_len - q_len if bottom_right else 0)
        out = F.scaled_dot_product_attention(piece_q, piece_k, piece_v, attn_mask=attend, scale=scale, enable_gqa=True)
        outs.append(out.transpose(0, 1))
        q_start, kv_start = q_start + q_len, kv_start + kv_len
    return torch.cat(outs)


def cumulative(lengths):
    return torch.tensor(lengths).cumsum(0).tolist()


@pytest.mark.parametrize("lengths", [[3, 5, 2], [10], [1, 7, 1, 1], [4, 0, 6]], ids=["unequal", "one", "ones", "empty"])
def test_varlen_tnd_sparse_mode_3_is_causal_attention_per_document(ops, lengths):
    q, k, v = tnd(lengths)
    ends = cumulative(lengths)  # cumulative, without the leading 0: [3, 8, 10]
    out = ops.npu_fusion_attention(
        q, k, v, NQ, "TND", atten_mask=triu_2048(), sparse_mode=3, scale=0.2,
        actual_seq_qlen=ends, actual_seq_kvlen=ends,
    )[0]  # fmt: skip
    assert out.shape == q.shape
    torch.testing.assert_close(out, per_document_sdpa(q, k, v, lengths, lengths, 0.2), rtol=0, atol=1e-6)


def test_varlen_tnd_with_queries_shorter_than_keys_aligns_modes_2_and_3_to_their_corners(ops):
    q_lengths, kv_lengths = [2, 3], [5, 4]
    q, k, v = tnd(q_lengths, kv_lengths)
    ends = {"actual_seq_qlen": cumulative(q_lengths), "actual_seq_kvlen": cumulative(kv_lengths)}
    for mode, bottom_right in ((3, True), (2, False)):
        out = ops.npu_fusion_attention(q, k, v, NQ, "TND", atten_mask=triu_2048(), sparse_mode=mode, scale=0.3,
                                       **ends)[0]  # fmt: skip
        expected = per_document_sdpa(q, k, v, q_lengths, kv_lengths, 0.3, bottom_right=bottom_right)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_varlen_tnd_without_a_mask_attends_every_key_of_its_document(ops):
    lengths = [3, 4]
    q, k, v = tnd(lengths, heads=2, kv_heads=2)
    ends = cumulative(lengths)
    out = ops.npu_fusion_attention(q, k, v, 2, "TND", scale=0.2, actual_seq_qlen=ends, actual_seq_kvlen=ends)[0]
    first = F.scaled_dot_product_attention(*(t[:3].transpose(0, 1) for t in (q, k, v)), scale=0.2)
    torch.testing.assert_close(out[:3], first.transpose(0, 1), rtol=0, atol=1e-6)


def test_varlen_tnd_trailing_zeros_leave_batches_out(ops):
    lengths = [2, 3, 4]
    q, k, v = tnd(lengths)
    ends = [2, 5, 9, 0, 0]  # the documented example: the last two batches take no part
    out = ops.npu_fusion_attention(
        q, k, v, NQ, "TND", atten_mask=triu_2048(), sparse_mode=3, scale=0.2,
        actual_seq_qlen=ends, actual_seq_kvlen=ends,
    )[0]  # fmt: skip
    torch.testing.assert_close(out, per_document_sdpa(q, k, v, lengths, lengths, 0.2), rtol=0, atol=1e-6)


def test_varlen_tnd_a_leading_zero_is_an_empty_first_batch_not_an_offset(ops):
    q, k, v = tnd([3, 5])
    arguments = {"atten_mask": triu_2048(), "sparse_mode": 3, "scale": 0.2}
    out = ops.npu_fusion_attention(q, k, v, NQ, "TND", actual_seq_qlen=[3, 8], actual_seq_kvlen=[3, 8], **arguments)[0]
    led = ops.npu_fusion_attention(q, k, v, NQ, "TND", actual_seq_qlen=[0, 3, 8], actual_seq_kvlen=[0, 3, 8],
                                   **arguments)  # fmt: skip
    torch.testing.assert_close(led[0], out, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="end at T"):  # flash-attn's cu_seqlens [0, 3, 8] minus its tail
        ops.npu_fusion_attention(q, k, v, NQ, "TND", actual_seq_qlen=[0, 3], actual_seq_kvlen=[0, 3], **arguments)


def test_varlen_tnd_softmax_statistics_are_ntd_unless_asked_for_tnd(ops):
    lengths = [3, 5]
    q, k, v = tnd(lengths)
    ends = cumulative(lengths)
    arguments = {"atten_mask": triu_2048(), "sparse_mode": 3, "actual_seq_qlen": ends, "actual_seq_kvlen": ends}
    _, softmax_max, softmax_sum, *_ = ops.npu_fusion_attention(q, k, v, NQ, "TND", **arguments)
    assert softmax_max.shape == softmax_sum.shape == (NQ, 8, 8)
    _, tnd_max, _, *_ = ops.npu_fusion_attention(q, k, v, NQ, "TND", softmax_layout="TND", **arguments)
    assert tnd_max.shape == (8, NQ, 8)
    torch.testing.assert_close(tnd_max, softmax_max.transpose(0, 1))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"actual_seq_qlen": [3, 5], "actual_seq_kvlen": [3, 5]}, "end at T"),  # lengths, not cumulative ends
        ({"actual_seq_qlen": [3, 2, 8], "actual_seq_kvlen": [3, 2, 8]}, "cumulative"),
        ({"actual_seq_qlen": [3, 8], "actual_seq_kvlen": [8]}, "differ in batches"),
        ({"actual_seq_qlen": None}, "needs actual_seq_qlen"),
        ({"atten_mask": torch.ones(8, 8, dtype=torch.bool).triu(1)}, "compressed 2048x2048"),
        ({"sparse_mode": 0, "atten_mask": torch.ones(8, 8, dtype=torch.bool).triu(1)}, "max Sq, max Skv"),
        ({"sparse_mode": 5}, "prefix"),
        ({"keep_prob": 0.0}, "keep_prob"),
        ({"head_num": NQ * 2}, "head_num"),
    ],
)
def test_varlen_tnd_refuses_what_the_documentation_rules_out(ops, change, message):
    q, k, v = tnd([3, 5])
    arguments = {"head_num": NQ, "atten_mask": triu_2048(), "sparse_mode": 3, "scale": 0.2,
                 "actual_seq_qlen": [3, 8], "actual_seq_kvlen": [3, 8], **change}  # fmt: skip
    with pytest.raises(RuntimeError, match=message):
        ops.npu_fusion_attention(q, k, v, input_layout="TND", **arguments)


def test_varlen_tnd_refuses_a_full_mask_row_as_padding(ops):
    q, k, v = tnd([3, 5])
    mask = torch.ones(5, 5, dtype=torch.bool).triu(1)
    mask[4] = True  # a padded query row: the varlen scenario has no padding inside the mask
    with pytest.raises(RuntimeError, match="all 1"):
        ops.npu_fusion_attention(q, k, v, NQ, "TND", atten_mask=mask, actual_seq_qlen=[3, 8], actual_seq_kvlen=[3, 8])


def test_varlen_tnd_gradients_equal_per_document_sdpa(ops):
    lengths = [4, 1, 6]
    q, k, v = (t.requires_grad_() for t in tnd(lengths))
    ends = cumulative(lengths)
    weights = torch.randn(sum(lengths), NQ, D, generator=torch.Generator().manual_seed(2))
    out = ops.npu_fusion_attention(
        q, k, v, NQ, "TND", atten_mask=triu_2048(), sparse_mode=3, scale=0.25,
        actual_seq_qlen=ends, actual_seq_kvlen=ends,
    )[0]  # fmt: skip
    (out * weights).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (per_document_sdpa(q, k, v, lengths, lengths, 0.25) * weights).sum().backward()
    for grad, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(grad, t.grad, rtol=0, atol=1e-5)


def test_fusion_attention_is_differentiable_like_sdpa(ops):
    q, k, v = (t.requires_grad_() for t in qkv())
    ops.npu_fusion_attention(q, k, v, NQ, "BNSD", atten_mask=triu_2048(), sparse_mode=2, scale=0.3)[0].sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True).sum().backward()
    for grad, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(grad, t.grad, rtol=0, atol=1e-5)


# -- npu_scaled_masked_softmax -------------------------------------------------------------------


def test_scaled_masked_softmax_formula_and_dtype(ops):
    x = torch.randn(2, 3, 32, 64, dtype=torch.float16)
    mask = torch.rand(2, 1, 32, 64) > 0.7
    out = ops.npu_scaled_masked_softmax(x, mask, 0.5, False)
    expected = torch.softmax((x.float() * 0.5).masked_fill(mask, -10000.0), dim=-1)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=1e-3)
    assert (out[mask.expand_as(out)] == 0).all()


def test_scaled_masked_softmax_fixed_triu_mask_is_causal(ops):
    x = torch.randn(1, 2, 32, 32)
    out = ops.npu_scaled_masked_softmax(x, torch.zeros(1, 1, 32, 32, dtype=torch.bool), 1.0, True)
    expected = torch.softmax(x.masked_fill(torch.ones(32, 32, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 2, 1, 64), (1, 2, 33, 64), (1, 2, 32, 4128), (2, 32, 64)])
def test_scaled_masked_softmax_rejects_shapes_outside_the_kernel_limits(ops, shape):
    x = torch.randn(shape)
    with pytest.raises(RuntimeError, match="fake torch_npu"):
        ops.npu_scaled_masked_softmax(x, torch.zeros(shape, dtype=torch.bool), 1.0)


# -- npu_rms_norm, npu_rotary_mul, npu_swiglu ---------------------------------------------------


def test_rms_norm_returns_y_and_rstd(ops):
    x, gamma = torch.randn(2, 5, 16), torch.randn(16)
    y, rstd = ops.npu_rms_norm(x, gamma, epsilon=1e-5)
    rms = x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(y, x / rms * gamma, rtol=0, atol=1e-6)
    assert rstd.shape == (2, 5, 1) and rstd.dtype == torch.float32
    torch.testing.assert_close(rstd, 1 / rms)
    with pytest.raises(RuntimeError, match="gamma"):
        ops.npu_rms_norm(x, gamma.double())


def rotate_as_complex(x, angles, interleaved=False):
    """Rotate consecutive pairs (interleaved) or (i, i + D/2) pairs by `angles` [..., D/2]."""
    half = x.shape[-1] // 2
    if interleaved:
        pairs = torch.complex(x[..., ::2], x[..., 1::2]) * torch.polar(torch.ones_like(angles), angles)
        return torch.stack((pairs.real, pairs.imag), dim=-1).flatten(-2)
    pairs = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((pairs.real, pairs.imag), dim=-1)


def test_rotary_mul_half_mode_is_a_rotation_of_half_pairs(ops):
    x = torch.randn(2, 3, 5, 8)  # BNSD
    angles = torch.randn(1, 1, 5, 4)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    torch.testing.assert_close(ops.npu_rotary_mul(x, cos, sin), rotate_as_complex(x, angles), rtol=0, atol=1e-6)


def test_rotary_mul_interleave_mode_rotates_adjacent_pairs(ops):
    x = torch.randn(2, 5, 3, 8)  # BSND
    angles = torch.randn(1, 5, 1, 4)
    cos, sin = angles.repeat_interleave(2, -1).cos(), angles.repeat_interleave(2, -1).sin()
    out = ops.npu_rotary_mul(x, cos, sin, rotary_mode="interleave")
    torch.testing.assert_close(out, rotate_as_complex(x, angles, interleaved=True), rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.npu_rotary_mul(x[0], cos[0], sin[0])


def test_swiglu_is_silu_of_first_half_times_second(ops):
    x = torch.randn(3, 4, 10)
    a, b = x[..., :5], x[..., 5:]
    torch.testing.assert_close(ops.npu_swiglu(x, dim=-1), a * torch.sigmoid(a) * b, rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.npu_swiglu(x, dim=1), F.silu(x[:, :2]) * x[:, 2:], rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="non-contiguous"):
        ops.npu_swiglu(x.transpose(0, 2))
    with pytest.raises(RuntimeError, match="cannot be halved"):
        ops.npu_swiglu(torch.randn(3, 5))


def test_sdpa_reference_itself_matches_the_textbook_formula():
    q, k, v = qkv()
    k_full, v_full = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    textbook = torch.softmax(q @ k_full.transpose(-1, -2) / math.sqrt(D), dim=-1) @ v_full
    torch.testing.assert_close(sdpa(q, k, v), textbook, rtol=0, atol=1e-6)
