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
MAX_VARLEN_BATCHES = 1024  # "actual_seq_qlen的长度取值范围为1~2K，varlen场景下长度最大支持1K"
MAX_VARLEN_TOKENS = 1024 * 1024  # "varlen场景下：要求T（B*S）取值范围1~1M"

TND_RULES = """input_layout="TND" (the varlen scenario), as the op documentation states it.

Source: Ascend/op-plugin docs/context/torch_npu-npu_fusion_attention.md (the torch_npu API reference page
"torch_npu.npu_fusion_attention"; same text on hiascend.com, ptaoplist_000445/_000850); its use in
transformers' integrations/npu_flash_attention.py (`npu_flash_attn_varlen_func`: `cu_seqlens[1:]`, the
2048x2048 triu mask, sparse_mode 3 by default) and MindSpeed's fusion-attention notes (same interface).

- query/key/value are [T, N, D]; "TND（actual_seq_qlen/actual_seq_kvlen需传值）": both lists are required.
- actual_seq_qlen / actual_seq_kvlen are the cumulative sums of the batches' lengths, WITHOUT a leading 0:
  "比如真正的S长度列表为：2 2 2 2 2，则actual_seq_qlen传：2 4 6 8 10". So the last end is T.
- A batch may be empty ("支持actual_seq_qlen中某个Batch上的S长度为0 ... [2, 2, 0, 2, 2] -> [2, 4, 4, 6, 8]",
  then no pse), and trailing batches may be skipped with zeros ("[2, 5, 9, 0, 0]").
- The list holds 1..1K entries in the varlen scenario; T (B*S) is in 1..1M.
- atten_mask: "varlen场景只支持SS格式，SS分别是maxSq和maxSkv" for the full-mask modes, and "atten_mask中不能
  存在某一行全1的场景" (no all-masked row: no padding inside the mask). sparse_mode 2/3/4 take the optimised
  compressed triu(ones(2048, 2048), 1) mask, per batch: 2 = leftUpCausal (top-left origin), 3 =
  rightDownCausal (bottom-right origin: the usual causal mask when Sq == Skv). sparse_mode 5 (uncompressed
  prefix) is not supported with varlen; 7/8 (varlen split across devices) are not modelled here.
- sparse_mode 1, 2, 3, 5, 6 ignore pre_tockens / next_tockens; without atten_mask, sparse_mode and the
  tockens have no effect ("固定为全计算").
- inner_precise 2 enables invalid-row computation; "如果算子可判断出存在无效行场景，会自动使能无效行计算，例如
  sparse_mode为3，Sq > Skv场景".
- head_num is N of the query; Nq/Nkv must be a non-zero whole number (GQA), Nq in 1..256; D in 1..768 with
  Dq = Dk; key and value have one shape. scale defaults to 1 (not 1/sqrt(D)); keep_prob is in (0, 1].
- softmax_max / softmax_sum come out NTD by default, TND with softmax_layout="TND" (7.2.0, CANN 8.3.RC1).
"""


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
    _require(1 <= query_heads <= 256, f"Nq must be in 1..256, got {query_heads}")
    _require(kv_heads > 0 and query_heads % kv_heads == 0, f"Nq/Nkv must be a whole number ({query_heads}/{kv_heads})")
    _require(1 <= head_dim <= 768, f"head dim D must be in 1..768, got {head_dim}")


def npu_fusion_attention(
    query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None, scale=1.0,
    keep_prob=1.0, pre_tockens=MAX_TOCKENS, next_tockens=MAX_TOCKENS, inner_precise=0, prefix=None,
    actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
    softmax_layout="",
):  # fmt: skip
    """softmax(Mask(scale * (pse + Q K^T), atten_mask)) V, dropout with keep_prob; atten_mask True = masked out.

    Returns (attention_out, softmax_max, softmax_sum, reserved, seed, offset, mask_len) like the device op.
    The TND layout follows TND_RULES (this module), each rule quoted from the op documentation.
    """
    _require(0.0 < keep_prob <= 1.0, f"keep_prob must be in (0, 1], got {keep_prob}")
    _require(input_layout in LAYOUTS, f"input_layout must be one of {LAYOUTS}, got {input_layout!r}")
    _require(padding_mask is None, "padding_mask is not supported yet (documented)")
    _require(prefix is None, "prefix (sparse_mode 5/6) is not modelled")
    _require(query.dtype == key.dtype == value.dtype, "query, key and value must share a dtype")
    _require(query.dtype in FLOAT_TYPES, f"unsupported dtype {query.dtype}")
    _require(key.shape == value.shape, "key and value must have the same shape")
    if input_layout == "TND":
        return _varlen_attention(
            query, key, value, head_num, pse, atten_mask, scale, keep_prob, pre_tockens, next_tockens,
            inner_precise, actual_seq_qlen, actual_seq_kvlen, sparse_mode, softmax_layout,
        )  # fmt: skip
    head_dim = query.shape[-1] // head_num if input_layout in ("BSH", "SBH") else query.shape[-1]
    q, k, v = (_to_bnsd(t, input_layout, head_dim) for t in (query, key, value))
    _check_heads(q.shape[1], k.shape[1], head_num, head_dim)
    masked = _masked_out(atten_mask, sparse_mode, pre_tockens, next_tockens, q.shape[2], k.shape[2], query.device)
    out, row_max, row_sum = _attention_bnsd(q, k, v, pse, masked, scale, keep_prob, inner_precise)
    return _from_bnsd(out, input_layout), row_max, row_sum, query.new_empty(0), 0, 0, 0


def _cumulative_ends(ends, name: str) -> list[int]:
    """The batches' cumulative ends as the docs define actual_seq_qlen / actual_seq_kvlen (see TND_RULES)."""
    _require(ends is not None, f"input_layout TND needs {name} (the varlen scenario)")
    _require(
        not isinstance(ends, torch.Tensor) or ends.dim() == 1, f"{name} is an int list (host side), got {ends!r}"
    )
    ends = [int(end) for end in ends]
    _require(1 <= len(ends) <= MAX_VARLEN_BATCHES, f"{name} has {len(ends)} entries; varlen takes 1..1K")
    active = len(ends)
    while active > 1 and ends[active - 1] == 0:  # trailing zeros: batches that take no part
        active -= 1
    _require(ends[0] >= 0, f"{name} must start with the first batch's length, got {ends[0]}")
    _require(
        all(later >= earlier for earlier, later in zip(ends[: active - 1], ends[1:active])),
        f"{name} must be cumulative (non-decreasing ends without a leading 0), got {ends}",
    )
    return ends[:active]


def _varlen_attention(
    query, key, value, head_num, pse, atten_mask, scale, keep_prob, pre_tockens, next_tockens, inner_precise,
    actual_seq_qlen, actual_seq_kvlen, sparse_mode, softmax_layout,
):  # fmt: skip
    """TND: the batches' tokens concatenated along T, each batch attended on its own (rules: TND_RULES)."""
    _require(query.dim() == key.dim() == value.dim() == 3, "TND tensors are [T, N, D]")
    _check_heads(query.shape[1], key.shape[1], head_num, query.shape[-1])
    _require(1 <= query.shape[0] <= MAX_VARLEN_TOKENS, f"T must be in 1..1M, got {query.shape[0]}")
    _require(pse is None, "pse with TND is not modelled")
    _require(sparse_mode not in (5, 6), f"sparse_mode {sparse_mode} (prefix) is not supported with TND")
    _require(sparse_mode not in (7, 8), f"sparse_mode {sparse_mode} (varlen split across devices) is not modelled")
    _require(softmax_layout in ("", "TND"), f"softmax_layout must be '' or 'TND', got {softmax_layout!r}")
    q_ends = _cumulative_ends(actual_seq_qlen, "actual_seq_qlen")
    kv_ends = _cumulative_ends(actual_seq_kvlen, "actual_seq_kvlen")
    _require(len(q_ends) == len(kv_ends), f"actual_seq_qlen {q_ends} and actual_seq_kvlen {kv_ends} differ in batches")
    _require(q_ends[-1] == query.shape[0], f"actual_seq_qlen must end at T={query.shape[0]}, got {q_ends[-1]}")
    _require(kv_ends[-1] == key.shape[0], f"actual_seq_kvlen must end at T={key.shape[0]}, got {kv_ends[-1]}")
    q_lengths = [end - start for start, end in zip([0, *q_ends[:-1]], q_ends)]
    kv_lengths = [end - start for start, end in zip([0, *kv_ends[:-1]], kv_ends)]
    if atten_mask is not None and sparse_mode in (0, 1):
        _require(atten_mask.dim() == 2, f"varlen takes only an SS atten_mask, got {tuple(atten_mask.shape)}")
        _require(
            tuple(atten_mask.shape) == (max(q_lengths), max(kv_lengths)),
            f"the varlen atten_mask is (max Sq, max Skv) = {(max(q_lengths), max(kv_lengths))}, "
            f"got {tuple(atten_mask.shape)}",
        )
        _require(not bool(atten_mask.bool().all(-1).any()), "a varlen atten_mask row may not be all 1 (no padding)")
    outs, maxes, sums = [], [], []
    q_start = kv_start = 0
    for q_len, kv_len in zip(q_lengths, kv_lengths):
        q = query[q_start : q_start + q_len].transpose(0, 1).unsqueeze(0)
        k = key[kv_start : kv_start + kv_len].transpose(0, 1).unsqueeze(0)
        v = value[kv_start : kv_start + kv_len].transpose(0, 1).unsqueeze(0)
        q_start, kv_start = q_start + q_len, kv_start + kv_len
        if q_len == 0:
            continue
        _require(kv_len > 0, "a batch with queries but no keys is not modelled")
        mask = atten_mask
        if mask is not None and sparse_mode in (0, 1):  # this batch's top-left corner of the SS mask
            mask = mask[:q_len, :kv_len]
        masked = _masked_out(mask, sparse_mode, pre_tockens, next_tockens, q_len, kv_len, query.device)
        # rightDownCausal with Sq > Skv leaves rows without a key: the op enables invalid-row computation itself
        precise = 2 if sparse_mode == 3 and q_len > kv_len else inner_precise
        out, row_max, row_sum = _attention_bnsd(q, k, v, None, masked, scale, keep_prob, precise)
        outs.append(out[0].transpose(0, 1))
        maxes.append(row_max[0])  # [N, Sq, 8]
        sums.append(row_sum[0])
    row_max, row_sum = torch.cat(maxes, dim=1), torch.cat(sums, dim=1)  # NTD, the default softmax layout
    if softmax_layout == "TND":
        row_max, row_sum = row_max.transpose(0, 1), row_sum.transpose(0, 1)
    return torch.cat(outs), row_max, row_sum, query.new_empty(0), 0, 0, 0


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
