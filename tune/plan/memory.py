"""`tune plan`: the peak GPU memory of a recipe's run, from the model's config alone.

The base model is built on the meta device (shapes, no storage, nothing downloaded but config.json) and
wrapped with the recipe's PEFT adapter, so parameter counts are PEFT's own. Bytes then follow what the
libraries allocate, read from their code (peft 0.21, trl 1.16, bitsandbytes 0.50):
- 4-bit (nf4/fp4) packs two weights per byte with one absmax per 64 weights (float32, or uint8 plus a
  float32 per 256 absmax, a 256-entry code and an offset with double quant); int8 keeps one float32
  scale per output row. The output head stays unquantized; in float16 only, PEFT's k-bit preparation
  upcasts every other non-quantized weight (embeddings, norms, head) to float32.
- Adapter weights are float32 (PEFT's autocast), except on a quantized base where TRL casts them to
  bfloat16 (DoRA magnitudes stay float32). Gradients match their weights.
- torch AdamW keeps two moments in the weight's dtype; bitsandbytes 8-bit AdamW keeps two uint8 moments
  plus a float32 absmax per 256 values, but only for tensors of at least 4096 values (smaller ones get
  float32 moments); Adafactor keeps float32 row and column second moments.
Activations are an estimate (a per-token sum of what a Llama-style layer saves for backward). Against
peaks measured on an H100 (bench/gpu.py, table in bench/README.md) the whole plan lands within -5.9% to
+2.4% for bf16 LoRA and -2.1% to +15.3% for nf4 QLoRA (1B and 8B shapes); it errs high where the paged
optimizer states that torch's peak does not count weigh most.
With N processes (`--nproc`) the figures are per device: tune/plan/sharding.py splits them as the
recipe's `distributed` section says.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tune.errors import TuneError
from tune.plan.sharding import per_device, sharding
from tune.recipe import Recipe

MiB, GiB = 2**20, 2**30
# Not in torch's peak: the CUDA context (~0.5 GiB) plus allocator fragmentation.
RESERVE = GiB
HEAD_TILE_TOKENS = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Per entry of (tokens x vocabulary), a plain loss over whole logits holds at once the logits (2 bytes in
# bf16/fp16, 4 in float32), their float32 copy for the loss (bf16/fp16 only), the float32 log-softmax and
# its float32 gradient.
FULL_LOGITS_BYTES = {"float32": 12, "bfloat16": 14, "float16": 14}


@dataclass
class Plan:
    describe: str  # one line: model, dtype, quantization, adapter, batch
    weights: int
    trainable_params: int
    adapter: int
    gradients: int
    optimizer: int
    optimizer_name: str
    activations_per_example: int  # for the recipe's max_length, with its checkpointing setting
    activations_per_example_other: int  # the same with gradient checkpointing flipped
    head_workspace: int  # TRL's tiled LM-head buffer: one tile, whatever the batch
    full_logits: int  # what the batch's logits would take without the chunked loss (shown, not planned)
    batch_size: int
    checkpointing: bool
    communication: int = 0  # DDP gradient buckets, or the layers FSDP/ZeRO-3 gather for compute
    offloaded: int = 0  # bytes kept in CPU RAM per process instead (FSDP or ZeRO offload)
    processes: str = ""  # e.g. "8 processes, fsdp full_shard"; empty for one process
    sampling: int = 0  # grpo: the generation batch's KV cache and the completions' full-vocabulary logits

    @property
    def fixed(self) -> int:
        return (self.weights + self.adapter + self.gradients + self.optimizer + self.head_workspace
                + self.communication + self.sampling)

    @property
    def peak(self) -> int:
        return self.fixed + self.batch_size * self.activations_per_example

    def largest_batch(self, gpu_bytes: int, per_example: int) -> int:
        return max(0, (gpu_bytes - RESERVE - self.fixed) // per_example)


def parse_size(text: str) -> int:
    """'24GiB', '24GB', '80 GiB', '16000MiB' -> bytes. GB is read as GiB, as GPU memory is sold."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not match:
        raise TuneError(f"--gpu-memory: cannot read '{text}'; write it like 24GiB or 80GB")
    unit = (match.group(2) or "GiB")[0].upper()
    return int(float(match.group(1)) * 1024 ** "KMGT".index(unit) * 1024)


def estimate(recipe: Recipe, nproc: int = 1, recipe_dir=None) -> Plan:
    import torch
    from peft import get_peft_model

    from tune.models.load import lora_config

    config = load_config(recipe)
    dtype = "bfloat16" if recipe.model.dtype == "auto" else recipe.model.dtype  # auto on a GPU
    quantized = recipe.model.quantization != "none"
    split = sharding(recipe, nproc, recipe_dir)
    # Only a float16 4-bit base gets PEFT's k-bit preparation, which upcasts the rest to float32
    # (tune.models.prepare_quantized); sharded ones never do.
    upcast = quantized and dtype == "float16" and not split["weights"]
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        head = base.get_output_embeddings()
        model = get_peft_model(base, lora_config(recipe.adapter, base, initialize=False))

    weights = adapter = stats = 0
    trainable = []  # (shape, dtype name) of every trainable tensor
    seen = set()  # a tied output head is the embedding tensor again, not a second copy
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.requires_grad:
                kind = "float32" if not quantized or "magnitude" in name else "bfloat16"
                trainable.append((tuple(param.shape), kind))
                adapter += param.numel() * BYTES[kind]
            elif quantized and name == "weight" and isinstance(module, torch.nn.Linear) and module is not head:
                size = quantized_bytes(param.numel(), param.shape[0], recipe.model.quantization,
                                       recipe.model.double_quant)
                packed = param.numel() if recipe.model.quantization == "int8" else math.ceil(param.numel() / 2)
                weights, stats = weights + size, stats + size - packed  # FSDP/ZeRO-3 shard only the packed data
            else:
                weights += param.numel() * (4 if upcast else BYTES[dtype])
        buffers = sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
        weights, stats = weights + buffers, stats + buffers

    optimizer = recipe.train.optimizer
    if optimizer == "auto":  # what sft.py picks on a GPU
        optimizer = "paged_adamw_8bit" if quantized and not split["weights"] else "adamw_torch"
    length, checkpointing = recipe.data.max_length, recipe.train.gradient_checkpointing
    if recipe.train.method == "grpo":  # a row is a prompt (up to data.max_length) and its sampled completion
        length += recipe.grpo.max_completion_length
    per_example = {flag: activation_bytes(config, recipe, length, BYTES[dtype], flag) for flag in (False, True)}
    tokens = recipe.train.batch_size * length
    head_workspace = min(tokens, HEAD_TILE_TOKENS) * min(config.vocab_size, _head_chunk()) * BYTES[dtype]
    plan = Plan(
        describe=(f"{recipe.model.name} ({config.model_type}, {config.num_hidden_layers} layers, hidden "
                  f"{config.hidden_size}), {dtype}, quantization {recipe.model.quantization}, "
                  f"{recipe.adapter.method} r={recipe.adapter.r}, batch {recipe.train.batch_size} x {length} tokens"),
        weights=weights, trainable_params=sum(math.prod(shape) for shape, _ in trainable), adapter=adapter,
        gradients=adapter, optimizer=optimizer_bytes(trainable, optimizer), optimizer_name=optimizer,
        activations_per_example=per_example[checkpointing], activations_per_example_other=per_example[not checkpointing],
        head_workspace=head_workspace, full_logits=tokens * config.vocab_size * FULL_LOGITS_BYTES[dtype],
        batch_size=recipe.train.batch_size, checkpointing=checkpointing,
        sampling=sampling_bytes(config, recipe, length, BYTES[dtype]) if recipe.train.method == "grpo" else 0)
    return per_device(plan, split, stats, config.num_hidden_layers) if nproc > 1 else plan


def load_config(recipe: Recipe):
    """config.json from a local folder or the hub cache; the hub only when it answers (no retry storm)."""
    from transformers import AutoConfig

    from tune.models.resolve import looks_local, model_source, not_found

    source = model_source(recipe.model)
    kwargs = {"revision": recipe.model.revision, "trust_remote_code": recipe.model.trust_remote_code}
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        if looks_local(source):
            raise TuneError(not_found(recipe.model.name, exc)) from None
    if not _hub_reachable():
        raise TuneError(f"model.name: '{recipe.model.name}' is a hub id and the hub cannot be reached (offline?); "
                        "put its config.json in a folder and plan with --set model.name=FOLDER")
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneError(not_found(recipe.model.name, exc)) from None


def _hub_reachable() -> bool:
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def sampling_bytes(config, recipe: Recipe, length: int, size: int) -> int:
    """GRPO's own memory: the KV cache of one generation batch (every completion of a step, generated at once),
    and the float32 logits TRL computes over the whole vocabulary for each completion token of a training
    batch to get their log-probabilities (its GRPO loss is not tiled like SFT's)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    generation_batch = recipe.grpo.generation_batch_size or recipe.train.batch_size * recipe.train.gradient_accumulation
    cache = generation_batch * length * config.num_hidden_layers * 2 * kv * size
    logits = recipe.train.batch_size * recipe.grpo.max_completion_length * config.vocab_size * 4 * 2  # + log_softmax
    return cache + logits


def _head_chunk() -> int:
    try:  # vocabulary columns per tile of TRL's fused LM head (private: fall back to a whole vocabulary)
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        return _CHUNKED_LOGPROB_CHUNK_SIZE
    except ImportError:
        return 1 << 30


def quantized_bytes(numel: int, rows: int, quantization: str, double_quant: bool) -> int:
    if quantization == "int8":
        return numel + rows * 4  # int8 weights + one float32 scale (SCB) per output row
    blocks = math.ceil(numel / 64)
    if double_quant:  # uint8 absmax, float32 absmax of those per 256, its 256-entry code, an offset
        stats = blocks + math.ceil(blocks / 256) * 4 + 256 * 4 + 4
    else:
        stats = blocks * 4
    return math.ceil(numel / 2) + stats + 16 * 4  # + the 16-value nf4/fp4 code of each layer


def optimizer_bytes(trainable: list[tuple[tuple, str]], optimizer: str) -> int:
    """State bytes after the first step; the per-tensor `step` counters (host scalars) are left out."""
    sizes = [(math.prod(shape), kind) for shape, kind in trainable]
    if optimizer == "adamw_torch":
        return sum(2 * n * BYTES[kind] for n, kind in sizes)
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        # Paged states live in unified memory: the driver can evict them to CPU RAM under pressure.
        total = 2 * 256 * 4  # the two quantization maps, shared by every tensor
        for n, _ in sizes:
            total += 2 * n + 2 * math.ceil(n / 256) * 4 if n >= 4096 else 2 * n * 4
        return total
    if optimizer == "adafactor":  # no first moment; a matrix's second moment is factored into row + column
        return sum(4 * (shape[0] + shape[1] if len(shape) == 2 else math.prod(shape)) for shape, _ in trainable)
    raise TuneError(f"train.optimizer: unknown optimizer {optimizer}")


def activation_bytes(config, recipe: Recipe, length: int, size: int, checkpointing: bool) -> int:
    """Bytes one example of `length` tokens keeps for backward (an estimate; see the module docstring)."""
    h, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", heads) * head_dim
    r = recipe.adapter.r
    # One decoder layer, per token. RMSNorm saves its float32 input and normalized value (x2 norms);
    # q, k, v, o and the MLP keep their inputs and outputs; RoPE keeps rotated q and k; a fused
    # attention kernel (SDPA, FlashAttention) keeps its output and a float32 log-sum-exp per head;
    # each of the 7 adapted linears keeps its r-wide LoRA intermediate (plus a dropout copy of its input).
    norms = 2 * (4 * h * 2 + size * h)
    attention = size * (h + (h + 2 * kv) + (h + kv) + h) + 4 * heads
    mlp = size * (h + 4 * inter)
    lora = 7 * size * r + (7 * size * h if recipe.adapter.dropout > 0 else 0)
    layer = norms + attention + mlp + lora
    if recipe.model.attn_implementation == "eager":  # softmax weights, seq x seq per head
        layer += 2 * size * heads * length
    layers = config.num_hidden_layers
    # Checkpointing keeps only each layer's input and recomputes one layer at a time in backward.
    body = layers * size * h + layer if checkpointing else layers * layer
    # TRL's SFT loss goes through its fused LM head: logits are computed in tiles (HEAD_TILE_TOKENS
    # tokens at a time, counted once in Plan.head_workspace) and never kept; per token it keeps the final
    # normalized hidden state and a few float32 statistics.
    head = size * h + 4 * 4
    return length * (body + head)


def render(plan: Plan, gpu_bytes: int | None) -> list[str]:
    mode = "with" if plan.checkpointing else "without"
    rows = [
        ("weights (frozen base)", plan.weights),
        (f"adapter ({plan.trainable_params:,} trainable parameters)", plan.adapter),
        ("gradients", plan.gradients),
        (f"optimizer states ({plan.optimizer_name})", plan.optimizer),
        (f"activations ({mode} gradient checkpointing; estimate)", plan.batch_size * plan.activations_per_example),
        ("output layer: one tile of the chunked loss", plan.head_workspace),
        ("peak of torch allocations", plan.peak),
    ]
    if plan.sampling:
        rows.insert(-1, ("grpo sampling (KV cache + completion logits; estimate)", plan.sampling))
    if plan.processes:  # per device: what the strategy adds for communication, before the peak
        kind = "gradient buckets" if "ddp" in plan.processes or "zero-1" in plan.processes else "gathered layers"
        rows.insert(-1, (f"communication ({kind}; estimate)", plan.communication))
    describe = f"{plan.describe}; per device of {plan.processes}" if plan.processes else plan.describe
    lines = [f"plan: {describe}"] + [f"  {label:<56}{_size(size):>12}" for label, size in rows]
    lines.append(f"  (without the chunked loss the logits alone would take {_size(plan.full_logits)}: "
                 "every token x the whole vocabulary, in float32 with their gradient)")
    if plan.offloaded:
        lines.append(f"  {'offloaded to CPU RAM (per process)':<56}{_size(plan.offloaded):>12}")
    if gpu_bytes is None:
        return lines + ["no GPU here: pass --gpu-memory 24GiB to check the fit"]
    verdict = "fits" if plan.peak + RESERVE <= gpu_bytes else "does NOT fit"
    best = plan.largest_batch(gpu_bytes, plan.activations_per_example)
    other = plan.largest_batch(gpu_bytes, plan.activations_per_example_other)
    lines.append(f"{verdict} in {_size(gpu_bytes)} (keeping {_size(RESERVE)} for the CUDA context and fragmentation); "
                 f"largest train.batch_size that fits: {best} {mode} gradient checkpointing, "
                 f"{other} {'without' if plan.checkpointing else 'with'}")
    return lines


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / MiB:.2f} MiB"
