"""Pure-PyTorch reference implementations of the torch_npu fused ops that llama_hw's patches call.

Each function has the signature and the documented semantics of the real op (torch_npu / op-plugin API
reference, "torch_npu.npu_fusion_attention" etc.) and refuses the inputs the documentation rules out, so a
patch that passes something the device would reject fails here too. They compute in float32 on whatever
device the tensors live on and are differentiable through autograd, like the real ops' registered backward.

Deliberate strictness where the documentation leaves the device behaviour undefined: a query row of
npu_fusion_attention whose keys are all masked (the docs' "invalid rows", which need inner_precise=2)
comes out as NaN unless inner_precise=2, so code that relies on such rows is caught on CPU.
"""

import torch
import torch.nn.functional as F

MAX_TOCKENS = 2147483647
LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")
COMPRESSED_MASK_SIZE = 2048  # sparse_mode 2/3/4 take the optimised triu(ones(2048, 2048), 1) mask
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"fake torch_npu: {message}")


# -- npu_fusion_attention ------------------------------------------------------------------------


def _to_bnsd(tensor: torch.Tensor, layout: str, head_dim: int) -> torch.Tensor:
    if layout == "BNSD":
        return tensor
    if layout == "BSND":
        return tensor.transpose(1, 2)
    if layout == "SBH":
        tensor = tensor.transpose(0, 1)
    batch, seq, hidden = tensor.shape  # BSH
    return tensor.reshape(batch, seq, hidden // head_dim, head_dim).transpose(1, 2)


def _from_bnsd(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return tensor
    if layout == "BSND":
        return tensor.transpose(1, 2)
    batch, heads, seq, head_dim = tensor.shape
    bsh = tensor.transpose(1, 2).reshape(batch, seq, heads * head_dim)
    return bsh.transpose(0, 1) if layout == "SBH" else bsh


def _check_compressed_mask(atten_mask: torch.Tensor, sparse_mode: int) -> None:
    size = COMPRESSED_MASK_SIZE
    _require(
        tuple(atten_mask.shape) == (size, size),
        f"sparse_mode {sparse_mode} takes the compressed {size}x{size} mask, got {tuple(atten_mask.shape)}",
    )
    expected = torch.triu(torch.ones(size, size, dtype=torch.bool, device=atten_mask.device), diagonal=1)
    _require(torch.equal(atten_mask.bool(), expected), f"sparse_mode {sparse_mode} needs triu(ones(2048, 2048), 1)")


def _masked_out(atten_mask, sparse_mode, pre_tockens, next_tockens, q_len, kv_len, device):
    """Positions (broadcastable to [B, N, Sq, Skv]) that take no part in the softmax; None for none."""
    if atten_mask is None:
        return None  # documented: without atten_mask, sparse_mode and the tockens have no effect
    _require(atten_mask.dtype in (torch.bool, torch.uint8), f"atten_mask must be bool or uint8, got {atten_mask.dtype}")
    _require(sparse_mode in (0, 1, 2, 3, 4), f"sparse_mode {sparse_mode} (prefix / varlen split) is not modelled")
    rows = torch.arange(q_len, device=device)[:, None]
    cols = torch.arange(kv_len, device=device)[None, :]
    if sparse_mode in (0, 1):
        _require(
            atten_mask.dim() in (2, 4) and tuple(atten_mask.shape[-2:]) == (q_len, kv_len),
            f"atten_mask must be BNSS, B1SS, 11SS or SS with S = ({q_len}, {kv_len}), got {tuple(atten_mask.shape)}",
        )
        full = atten_mask.bool()
        if sparse_mode == 1:
            return full
        # defaultMask: only the band i - pre_tockens <= j <= i + next_tockens (top-left origin) is computed
        return full | (cols > rows + next_tockens) | (cols < rows - pre_tockens)
    _check_compressed_mask(atten_mask, sparse_mode)
    if sparse_mode == 2:  # leftUpCausal
        return cols > rows
    offset = kv_len - q_len  # rightDownCausal and band start at the bottom-right corner
    if sparse_mode == 3:
        return cols > rows + offset
    return (cols > rows + offset + next_tockens) | (cols < rows + offset - pre_tockens)


def _attention_bnsd(query, key, value, pse, masked_out, scale, keep_prob, inner_precise):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1).float()
    value = value.repeat_interleave(groups, dim=1).float()
    scores = torch.matmul(query.float(), key.transpose(-1, -2))
    if pse is not None:
        scores = scores + pse.float()
    scores = scores * scale
    if masked_out is not None:
        scores = scores.masked_fill(masked_out, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1)
    if masked_out is not None and inner_precise == 2:
        probs = torch.nan_to_num(probs, nan=0.0)  # "invalid row" computation: rows with no key give 0
    if keep_prob < 1.0:
        probs = F.dropout(probs, p=1.0 - keep_prob)
    out = torch.matmul(probs, value).to(query.dtype)
    row_sum = torch.exp(scores - row_max).sum(dim=-1, keepdim=True)
    eight = (*row_max.shape[:-1], 8)  # the device keeps 8 copies of each row statistic
    return out, row_max.expand(eight).detach(), row_sum.expand(eight).detach()


def _check_heads(query_heads: int, kv_heads: int, head_num: int, head_dim: int) -> None:
    _require(query_heads == head_num, f"head_num={head_num} but query has {query_heads} heads")
    _require(kv_heads > 0 and query_heads % kv_heads == 0, f"Nq/Nkv must be a whole number ({query_heads}/{kv_heads})")
    _require(1 <= head_dim <= 768, f"head dim D must be in 1..768, got {head_dim}")


def npu_fusion_attention(
    query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None, scale=1.0,
    keep_prob=1.0, pre_tockens=MAX_TOCKENS, next_tockens=MAX_TOCKENS, inner_precise=0, prefix=None,
    actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
):  # fmt: skip
    """softmax(Mask(scale * (pse + Q K^T), atten_mask)) V, dropout with keep_prob; atten_mask True = masked out.

    Returns (attention_out, softmax_max, softmax_sum, reserved, seed, offset, mask_len) like the device op.
    """
    _require(input_layout in LAYOUTS, f"input_layout must be one of {LAYOUTS}, got {input_layout!r}")
    _require(padding_mask is None, "padding_mask is not supported yet (documented)")
    _require(prefix is None, "prefix (sparse_mode 5/6) is not modelled")
    _require(query.dtype == key.dtype == value.dtype, "query, key and value must share a dtype")
    _require(query.dtype in FLOAT_TYPES, f"unsupported dtype {query.dtype}")
    _require(key.shape == value.shape, "key and value must have the same shape")
    if input_layout == "TND":
        return _varlen_attention(
            query, key, value, head_num, pse, atten_mask, scale, keep_prob, pre_tockens, next_tockens,
            inner_precise, actual_seq_qlen, actual_seq_kvlen, sparse_mode,
        )  # fmt: skip
    head_dim = query.shape[-1] // head_num if input_layout in ("BSH", "SBH") else query.shape[-1]
    q, k, v = (_to_bnsd(t, input_layout, head_dim) for t in (query, key, value))
    _check_heads(q.shape[1], k.shape[1], head_num, head_dim)
    masked = _masked_out(atten_mask, sparse_mode, pre_tockens, next_tockens, q.shape[2], k.shape[2], query.device)
    out, row_max, row_sum = _attention_bnsd(q, k, v, pse, masked, scale, keep_prob, inner_precise)
    return _from_bnsd(out, input_layout), row_max, row_sum, query.new_empty(0), 0, 0, 0


def _varlen_attention(
    query, key, value, head_num, pse, atten_mask, scale, keep_prob, pre_tockens, next_tockens, inner_precise,
    actual_seq_qlen, actual_seq_kvlen, sparse_mode,
):  # fmt: skip
    """TND: sequences concatenated along T; actual_seq_*len are cumulative ends without the leading 0."""
    _require(actual_seq_qlen is not None and actual_seq_kvlen is not None, "TND needs actual_seq_qlen/kvlen")
    _require(len(actual_seq_qlen) == len(actual_seq_kvlen), "actual_seq_qlen and actual_seq_kvlen differ in length")
    _require(pse is None, "pse with TND is not modelled")
    _require(query.dim() == 3, "TND tensors are [T, N, D]")
    _check_heads(query.shape[1], key.shape[1], head_num, query.shape[-1])
    q_ends, kv_ends = [int(x) for x in actual_seq_qlen], [int(x) for x in actual_seq_kvlen]
    _require(q_ends[-1] == query.shape[0] and kv_ends[-1] == key.shape[0], "actual_seq lengths must end at T")
    outs, maxes, sums = [], [], []
    for q_start, q_end, kv_start, kv_end in zip([0, *q_ends[:-1]], q_ends, [0, *kv_ends[:-1]], kv_ends):
        q = query[q_start:q_end].transpose(0, 1).unsqueeze(0)
        k = key[kv_start:kv_end].transpose(0, 1).unsqueeze(0)
        v = value[kv_start:kv_end].transpose(0, 1).unsqueeze(0)
        mask = atten_mask
        if mask is not None and sparse_mode in (0, 1):  # SS of (max Sq, max Skv): this sequence's corner
            mask = mask[: q.shape[2], : k.shape[2]]
        masked = _masked_out(mask, sparse_mode, pre_tockens, next_tockens, q.shape[2], k.shape[2], query.device)
        out, row_max, row_sum = _attention_bnsd(q, k, v, None, masked, scale, keep_prob, inner_precise)
        outs.append(out[0].transpose(0, 1))
        maxes.append(row_max[0].transpose(0, 1))
        sums.append(row_sum[0].transpose(0, 1))
    return torch.cat(outs), torch.cat(maxes), torch.cat(sums), query.new_empty(0), 0, 0, 0


# -- npu_scaled_masked_softmax --------------------------------------------------------------------


def npu_scaled_masked_softmax(x, mask, scale=1.0, fixed_triu_mask=False):
    """softmax(x * scale with mask==True positions set to -10000) over the last dim, in x's dtype.

    The device kernel takes 4-D x whose last two dims are in 32..4096 and divisible by 32, and a bool mask
    with the same last two dims that broadcasts to x.
    """
    _require(x.dtype in FLOAT_TYPES, f"unsupported dtype {x.dtype}")
    _require(x.dim() == 4, f"x must be 4-D, got {x.dim()}-D")
    _require(
        all(32 <= size <= 4096 and size % 32 == 0 for size in x.shape[-2:]),
        f"the last two dims of x must be in 32..4096 and divisible by 32, got {tuple(x.shape[-2:])}",
    )
    _require(mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}")
    _require(mask.dim() == 4 and mask.shape[-2:] == x.shape[-2:], f"mask {tuple(mask.shape)} does not fit x")
    torch.broadcast_shapes(mask.shape, x.shape)
    if fixed_triu_mask:
        mask = torch.triu(torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device), diagonal=1)
    return (x.float() * scale).masked_fill(mask, -10000.0).softmax(dim=-1).to(x.dtype)


# -- npu_rms_norm, npu_rotary_mul, npu_swiglu ----------------------------------------------------


def npu_rms_norm(self, gamma, epsilon=1e-6):
    """(x * rsqrt(mean(x^2) + eps) * gamma, rstd); the mean runs over gamma's dims; rstd is float32."""
    x = self
    _require(x.dtype in FLOAT_TYPES, f"unsupported dtype {x.dtype}")
    _require(gamma.dtype == x.dtype, f"gamma ({gamma.dtype}) must have the dtype of x ({x.dtype})")
    _require(tuple(x.shape[-gamma.dim() :]) == tuple(gamma.shape), "gamma must match the last dims of x")
    dims = tuple(range(-gamma.dim(), 0))
    rstd = torch.rsqrt(x.float().pow(2).mean(dim=dims, keepdim=True) + epsilon)
    return (x.float() * rstd * gamma.float()).to(x.dtype), rstd


def npu_rotary_mul(input, r1, r2, rotary_mode="half"):
    """r1 * x + r2 * rotate(x): r1 = cos and r2 = sin already gathered by position; 4-D tensors."""
    x = input
    _require(x.dim() == 4 and r1.dim() == 4 and r2.dim() == 4, "input, r1 and r2 must be 4-D")
    _require(x.shape[-1] % 2 == 0, f"the last dim must be even, got {x.shape[-1]}")
    _require(x.dtype == r1.dtype == r2.dtype, "input, r1 and r2 must share a dtype")
    torch.broadcast_shapes(x.shape, r1.shape, r2.shape)
    if rotary_mode == "half":
        x1, x2 = torch.chunk(x, 2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    elif rotary_mode == "interleave":
        rotated = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    else:
        raise RuntimeError(f"fake torch_npu: rotary_mode must be 'half' or 'interleave', got {rotary_mode!r}")
    return r1 * x + r2 * rotated


def npu_swiglu(input, dim=-1):
    """silu(A) * B where A, B are the first and second halves of input along dim."""
    _require(input.dtype in FLOAT_TYPES, f"unsupported dtype {input.dtype}")
    _require(input.is_contiguous(), "non-contiguous input is not supported")
    _require(input.shape[dim] % 2 == 0, f"dim {dim} of size {input.shape[dim]} cannot be halved")
    first, second = torch.chunk(input, 2, dim=dim)
    return F.silu(first) * second
