"""Per-device memory of one training step: model states, activations, the loss head, buckets, reserve.

Model states follow DeepSpeed's own estimators where they exist — full fine-tuning in 16-bit with ZeRO-2
and ZeRO-3, with and without offload (`estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`: 2 bytes of 16-bit weights per parameter plus 18 per parameter and
device for 16-bit and fp32 gradients, fp32 master weights and Adam's two moments) — and the same
accounting elsewhere (fp32, ZeRO-1, DDP, FSDP2, LoRA's trainable adapters over a frozen base, QLoRA's
4-bit base); the tests check the formula against DeepSpeed's functions.

Activations are counted tensor by tensor as autograd saves them in transformers' LLaMA layer, following
Korthikanti et al. (2022, "Reducing Activation Recomputation in Large Transformer Models", sec. 4.1),
whose 34·s·b·h bytes per GPT layer assume LayerNorm, a 4h GeLU MLP, dropout and stored attention scores.
For LLaMA, per token and layer (h hidden, kv = key/value width, I = MLP width, a = bytes of the compute
dtype, r = bytes of the residual stream — 4 under autocast over fp32 master weights, else a):
- RMSNorm (trainable weight): its fp32 input 4h, the normalised r·h, the projection input a·h;
- attention: q and k after RoPE and v, a·(h + 2 kv), as sdpa / flash / npu_fusion_attention save them (no
  scores: those kernels keep one log-sum-exp per head and row), their output a·h and o_proj's input a·h;
  eager attention adds the fp32 softmax and its 16-bit copy, (4 + a)·heads·S, and GQA's repeated k, v;
- SwiGLU MLP: gate and up outputs, SiLU's output and the product, 4·a·I;
- LoRA over frozen weights saves no base-layer inputs (a frozen matmul needs only its weight for the
  input gradient); each adapter saves its dropout mask (1 byte; 4 on CPU) and dropped input (fp32, or the 16-bit
  dtype under DeepSpeed) per input feature, and the MLP keeps 3·a·I.
Gradient checkpointing keeps each layer's input (r·h) and recomputes one layer at a time.
The stock loss materialises the [tokens, vocab] logits: at the start of backward the fp32 log-softmax,
its gradient and the logits' gradient, 12 bytes per token and vocabulary entry; llama_hw's chunked head
holds 256 positions at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llama_hw.plan.job import Job

ADAM_BYTES = 8  # two fp32 moments per trainable parameter
MASTER_BYTES = 4  # fp32 master weights (DeepSpeed's optimizer partition, FSDP2's sharded parameters)
QLORA_BYTES = 0.5 + 4 / 64  # NF4 weights plus one fp32 absmax per 64-weight block
HEAD_BYTES_PER_LOGIT = 12  # fp32 log-softmax, its gradient and the logits' gradient
CHUNK_POSITIONS = 256  # chunked_cross_entropy's positions per chunk
FRAGMENTATION = 0.08  # caching allocators hold this share above the live tensors
ZERO3_LIVE_PARAMETERS = 10**9  # stage3_max_live_parameters of the zero3 presets
ENGINES = ("ddp", "zero1", "zero2", "zero3", "fsdp2")
OFFLOADS = ("none", "optimizer", "optimizer+parameters")


@dataclass(frozen=True)
class Configuration:
    """One way to run the job: what a user picks among with flags."""

    engine: str = "ddp"  # ddp | zero1 | zero2 | zero3 | fsdp2
    offload: str = "none"  # none | optimizer | optimizer+parameters
    gradient_checkpointing: bool = False
    micro_batch: int = 1
    chunked_head: bool = True
    packing: bool = False
    eager_attention: bool = False  # the planner never picks it; for what-if plans and the tests

    def flags(self) -> list[str]:
        """The `llama_hw.train` flags that select this configuration."""
        flags = ["--per_device_train_batch_size", str(self.micro_batch)]
        if self.engine.startswith("zero"):
            preset = self.engine
            if self.offload == "optimizer":
                preset += "_offload_optimizer"
            elif self.offload == "optimizer+parameters":
                preset += "_offload"
            flags += ["--deepspeed", preset]
        elif self.engine == "fsdp2":
            flags += ["--fsdp", "full_shard auto_wrap" + (" offload" if self.offload != "none" else "")]
        if self.gradient_checkpointing:
            flags += ["--gradient_checkpointing", "True"]
        if self.packing:
            flags += ["--packing", "True"]
        if not self.chunked_head:
            flags.append("--patches=-chunked_cross_entropy")  # "=": the value starts with "-"
        return flags


@dataclass(frozen=True)
class Rows:
    """What a micro batch holds: its longest row (memory) and its mean work (speed)."""

    max_len: int  # the longest row that occurs: the memory peak is set by it
    mean_len: float  # mean positions per row, padding included
    effective_fraction: float = 1.0  # share of those positions that are real text
    labelled_fraction: float = 1.0  # share of real text with a label (SFT: replies)
    mean_context: float | None = None  # sum of squared sequence lengths per position (default: the row)


@dataclass(frozen=True)
class MemoryBreakdown:
    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    logits_loss: int
    communication_buckets: int
    allocator_reserve: int
    host_offload: int  # host memory for offloaded states (not part of the device total)

    @property
    def total(self) -> int:
        return (self.parameters + self.gradients + self.optimizer_states + self.activations + self.logits_loss
                + self.communication_buckets + self.allocator_reserve)  # fmt: skip

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def compute_bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


def residual_bytes(job: Job, config: Configuration) -> int:
    """The residual stream's dtype: fp32 only under autocast over fp32 master weights (Trainer's amp)."""
    a = compute_bytes(job.precision)
    amp_over_fp32 = job.finetuning_type == "full" and config.engine == "ddp"
    return 4 if amp_over_fp32 else a


def model_states(job: Job, config: Configuration) -> tuple[int, int, int, int]:
    """(parameters, gradients, optimizer states, host bytes) per device."""
    counts = job.parameters()
    n, a = job.world_size, compute_bytes(job.precision)
    engine, offload = config.engine, config.offload
    if not job.uses_lora:
        p, largest = counts.total, counts.largest_layer
        if engine == "ddp":
            autocast_copies = 2 * p if a == 2 else 0  # autocast's 16-bit casts of the fp32 weights
            return 4 * p + autocast_copies, 4 * p, ADAM_BYTES * p, 0
        if engine == "fsdp2":
            unsharded = 2 * a * largest  # the layer that computes and the one prefetched
            if offload != "none":
                return unsharded, 4 * largest, 0, (MASTER_BYTES + 4 + ADAM_BYTES) * p // n * job.devices_per_node
            return MASTER_BYTES * p // n + unsharded, 4 * p // n + 4 * largest, ADAM_BYTES * p // n, 0
        m = a  # DeepSpeed runs the module itself in the 16-bit dtype (or fp32)
        partition = (MASTER_BYTES + ADAM_BYTES) * p // n
        if engine in ("zero1", "zero2"):
            if offload != "none":
                host = p * max(4 * n, 16) * 3 // 2  # DeepSpeed's zero2 estimate with offload
                return m * p, 0, 0, host
            grads = (m * p + 4 * p // n) if engine == "zero1" else (m + 4) * p // n
            return m * p, grads, partition, 0
        gathered = m * largest
        if offload == "optimizer+parameters":
            return gathered, gathered, 0, p * 18 * 3 // (2 * job.nodes)
        if offload == "optimizer":
            return m * p // n + gathered, gathered, 0, p * 16 * 3 // (2 * job.nodes)
        return m * p // n + gathered, 4 * p // n + gathered, partition, 0  # 16-bit grads reduce into fp32
    # LoRA / QLoRA: a frozen base in the compute dtype (QLoRA: 4-bit layer weights), fp32 adapters.
    t, p = counts.trainable, counts.total
    base = p * a
    if job.finetuning_type == "qlora":
        layer_linears = p - counts.embedding - counts.head - job.shape.hidden_size * (2 * job.shape.num_hidden_layers + 1)
        base = int(layer_linears * QLORA_BYTES) + (p - layer_linears) * a
    if engine == "zero3":
        return base // n + a * counts.largest_layer + 4 * t // n, 4 * t // n, ADAM_BYTES * t // n, 0
    if engine == "fsdp2":
        return base // n + 2 * a * counts.largest_layer + 4 * t // n, 4 * t // n, ADAM_BYTES * t // n, 0
    if engine in ("zero1", "zero2") and offload != "none":
        return base + a * t, 0, 0, t * 16 * 3 // 2
    if engine in ("zero1", "zero2"):
        return base + a * t, (a + 4) * t // n if engine == "zero2" else a * t + 4 * t // n, (4 + ADAM_BYTES) * t // n, 0
    return base + 4 * t, 4 * t, ADAM_BYTES * t, 0


def layer_activation_bytes(job: Job, config: Configuration, row_len: int) -> float:
    """Bytes one decoder layer saves for backward, per token of a row of `row_len` positions."""
    s = job.shape
    h, kv, i = s.hidden_size, s.num_key_value_heads * s.head_dim, s.intermediate_size
    a, r = compute_bytes(job.precision), residual_bytes(job, config)
    attention_core = a * (h + 2 * kv) + a * h + 4 * s.num_attention_heads  # q, k, v, output, log-sum-exp
    if config.eager_attention:
        attention_core += (4 + a) * s.num_attention_heads * row_len + (2 * a * h if kv < h else 0)
    if not job.uses_lora:
        norm = 4 * h + r * h + a * h
        return 2 * norm + attention_core + a * h + 4 * a * i
    widths = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": h, "gate_proj": h, "up_proj": h, "down_proj": i}
    # Adapters are fp32 (llama_hw's choice) except under DeepSpeed, whose engine casts the whole module to the
    # 16-bit dtype. Each adapter saves its dropout mask and dropped input, or with no dropout the cast input.
    adapter = a if config.engine.startswith("zero") else 4
    per_feature = (job.dropout_mask_bytes + adapter) if job.lora_dropout > 0 else (adapter if adapter != a else 0)
    adapters = sum(per_feature * widths[name] for name in job.lora_target)
    return 2 * 4 * h + attention_core + 3 * a * i + adapters


def activation_bytes(job: Job, config: Configuration, rows: Rows) -> int:
    tokens = config.micro_batch * rows.max_len
    layer = layer_activation_bytes(job, config, rows.max_len) * tokens
    layers = job.shape.num_hidden_layers
    r = residual_bytes(job, config)
    if config.gradient_checkpointing:
        saved = layers * r * job.shape.hidden_size * tokens + layer  # layer inputs + one recomputed layer
    else:
        saved = layers * layer
    backward_working_set = layer  # gradients of one layer's saved tensors while it runs backward
    return int(saved + backward_working_set)


def logits_bytes(job: Job, config: Configuration, rows: Rows) -> int:
    positions = config.micro_batch * rows.max_len
    if config.chunked_head:
        positions = min(positions, CHUNK_POSITIONS)
    return int(HEAD_BYTES_PER_LOGIT * positions * job.shape.vocab_size)


def bucket_bytes(job: Job, config: Configuration) -> int:
    """Communication buffers: DDP's gradient buckets (a copy of every trainable gradient), ZeRO's
    reduce bucket (hidden² elements, transformers' "auto", double-buffered with overlap_comm)."""
    if job.world_size == 1 and config.engine == "ddp":
        return 0
    counts = job.parameters()
    a, h2 = compute_bytes(job.precision), job.shape.hidden_size**2
    if config.engine == "ddp":
        return 4 * counts.trainable
    if config.engine in ("zero1", "zero2"):
        return 2 * a * h2
    if config.engine == "zero3":
        # + stage3_prefetch_bucket_size, and the gathered parameters ZeRO-3 keeps for reuse: llama_hw's presets
        # allow stage3_max_live_parameters = stage3_max_reuse_distance = 1e9, so up to 1e9 stay gathered
        live = max(0, min(counts.total, ZERO3_LIVE_PARAMETERS) - counts.largest_layer) * a
        return 2 * a * h2 + int(0.9 * h2) * a + live
    return 0


def estimate(job: Job, config: Configuration, rows: Rows, runtime_reserve: int) -> MemoryBreakdown:
    """Memory of one device for `config`; `runtime_reserve`: what the runtime holds before any tensor."""
    parameters, gradients, optimizer, host = model_states(job, config)
    activations = activation_bytes(job, config, rows)
    head = logits_bytes(job, config, rows)
    buckets = bucket_bytes(job, config)
    live = parameters + gradients + optimizer + activations + head + buckets
    reserve = runtime_reserve + int(FRAGMENTATION * live)
    return MemoryBreakdown(parameters, gradients, optimizer, activations, head, buckets, reserve, host)
