"""Loading the base model and tokenizer from a resolved source (tune/models/resolve.py), and building
the adapter config. torch/transformers/peft are imported inside the functions: the CLI imports this."""

from __future__ import annotations

from pathlib import Path

from tune.errors import TuneError
from tune.models.resolve import not_found
from tune.recipe import AdapterSection, ModelSection


def resolve_dtype(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def cpu_has_bf16() -> bool:
    import torch

    return torch.cpu._is_avx512_bf16_supported()


def frozen_cpu_dtype(model: ModelSection):
    """model.dtype auto on a CPU with AVX512-BF16 trains under bf16 autocast, whose matmuls see the
    weights in bf16 anyway; storing the frozen base in bf16 halves its memory and removes the bf16 copy
    of every weight that autocast made and kept for the backward pass each step (SmolLM2: 200 MiB of a
    1 GiB forward). Quantized bases keep their compute dtype."""
    import torch

    if model.dtype == "auto" and model.quantization == "none" and not torch.cuda.is_available() and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast_adapter_inputs(model) -> None:
    """PEFT casts each adapter layer's input to the adapter's float32 before multiplying; under autocast
    that copy is cast straight back to bf16 and both are kept for backward. Inside autocast the input
    now goes in as it is (outside it, PEFT's cast still applies, so plain float32 calls keep working)."""
    import functools

    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    def cast(original, x, dtype):
        if x is not None and torch.is_autocast_enabled(x.device.type):
            return x
        return original(x, dtype)

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._cast_input_dtype = functools.partial(cast, module._cast_input_dtype)


def load_tokenizer(model: ModelSection, source: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=model.revision,
                                                  trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TuneError(not_found(model.name, exc)) from None
    if tokenizer.pad_token is None:
        # Padding positions are excluded by the attention mask and -100 labels, never by comparing ids,
        # so borrowing EOS as pad cannot mask the EOS the model must learn to emit.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def quantization_config(model: ModelSection, dtype, sharded: bool = False):
    """`sharded`: FSDP or ZeRO-3 will split the base; they shard float tensors only, so the packed 4-bit
    weights are stored in the compute dtype (bnb_4bit_quant_storage, per bitsandbytes' FSDP-QLoRA guide)."""
    if model.quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TuneError(f"model.quantization: {model.quantization} needs bitsandbytes: "
                        "pip install 'tune-peft[qlora]'") from None
    from transformers import BitsAndBytesConfig

    if model.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=model.quantization,
                              bnb_4bit_use_double_quant=model.double_quant, bnb_4bit_compute_dtype=dtype,
                              **({"bnb_4bit_quant_storage": dtype} if sharded else {}))


def load_model(model: ModelSection, source: str, gradient_checkpointing: bool = False, sharded: bool = False,
               packed: bool = False):
    """The base causal LM, quantized and prepared for k-bit training when the recipe asks. `sharded`: FSDP
    or ZeRO-3 will split it across processes (see quantization_config). `packed`: it trains on packed rows,
    which on a CPU get per-document attention (tune/models/attention.py) unless the recipe names a kernel."""
    from transformers import AutoModelForCausalLM

    kwargs = load_arguments(model, source, sharded)
    kwargs["dtype"] = frozen_cpu_dtype(model) or kwargs["dtype"]
    try:
        base = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneError(not_found(model.name, exc)) from None
    if packed and model.attn_implementation == "auto" and not _on_gpu():
        from tune.models.attention import packed_attention_name

        try:
            base.set_attn_implementation(packed_attention_name())
        except (ValueError, AttributeError):
            pass  # an architecture without pluggable attention keeps what transformers chose
    return prepare_quantized(base, model, gradient_checkpointing, sharded)


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def load_arguments(model: ModelSection, source: str, sharded: bool = False) -> dict:
    """The from_pretrained keyword arguments shared by every base load: dtype, quantization, the
    pickle policy, remote code and the attention kernel."""
    import torch

    dtype = resolve_dtype(model.dtype)
    quant = quantization_config(model, dtype, sharded)
    _refuse_pickles(source, model.allow_pickle)
    kwargs = {"dtype": dtype, "revision": model.revision, "trust_remote_code": model.trust_remote_code,
              "use_safetensors": None if model.allow_pickle else True}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if model.attn_implementation != "auto":
        kwargs["attn_implementation"] = model.attn_implementation
    return kwargs


def prepare_quantized(base, model: ModelSection, gradient_checkpointing: bool, sharded: bool = False):
    """A quantized base made trainable: the CPU 4-bit fix, its weights frozen with input gradients for
    checkpointing, and PEFT's full k-bit preparation (the float32 upcast) for float16 bases only."""
    import torch

    if model.quantization == "none":
        return base
    if not torch.cuda.is_available():
        _keep_cpu_4bit_trainable(base)
    if sharded or base.dtype != torch.float16:
        # PEFT's k-bit preparation upcasts embeddings, norms and head to float32, which turns the whole
        # residual stream float32: measured on an H100 (bench/gpu.py), a 1B nf4 run at 4 x 2048 tokens
        # peaked at 60.5 GiB against 18.6 GiB for bf16 LoRA. In bf16 the upcast buys no range (Llama's
        # RMSNorm already normalizes in float32), so only the freeze and input gradients are kept. Sharded
        # FSDP needs one dtype per wrapped layer anyway. float16 keeps the upcast: its range is narrow.
        for param in base.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            base.enable_input_require_grads()
        return base
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)


def _refuse_pickles(source: str, allowed: bool) -> None:
    """A pickle can run code when it is loaded; only safetensors are read unless the recipe opts in."""
    folder = Path(source)
    if allowed or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise TuneError(f"model.name: {source} has only pickle weights ({pickles[0]}); convert them to "
                        "safetensors, or set model.allow_pickle: true if you trust where they came from")


def _keep_cpu_4bit_trainable(model) -> None:
    """bitsandbytes' CPU Linear4bit repacks its weights for a fast kernel the first time it runs without
    grad (an eval), and that kernel has no backward: later training steps would silently drop the
    gradient through every base layer. Keeping the portable path avoids the switch."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


INIT = {"default": True, "pissa": "pissa_niter_16"}  # PEFT's names; the rest are spelt alike. PiSSA by fast SVD
# (16 subspace iterations, PEFT's advice): seconds instead of minutes on a 7B base, drawn from the run's seed.


def lora_config(adapter: AdapterSection, model=None, initialize: bool = True):
    """PEFT's LoraConfig for the recipe's adapter, on `model` (the base it will wrap: an MoE base gets its
    all-linear resolved, tune/models/targets.py). `initialize`: False builds it with the default init, for
    shape-only uses (tune plan builds the model on the meta device, where PiSSA's SVD cannot run)."""
    from peft import LoraConfig

    from tune.models.targets import moe_targets

    init = INIT.get(adapter.init, adapter.init) if initialize else True
    excluded = other_blocks(adapter.layers)
    modules, parameters = (moe_targets(model, adapter, excluded) if model is not None else None) or (adapter.target_modules, None)
    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=modules,
        target_parameters=parameters,
        modules_to_save=adapter.modules_to_save or None,
        use_dora=adapter.method == "dora",
        use_rslora=adapter.method == "rslora",
        init_lora_weights=init,
        corda_config=_corda_config(adapter) if init == "corda" else None,
        rank_pattern=dict(adapter.rank_pattern),
        alpha_pattern=dict(adapter.alpha_pattern),
        exclude_modules=excluded,
        task_type="CAUSAL_LM",
    )


def _corda_config(adapter: AdapterSection):
    from peft.tuners.lora.config import CordaConfig

    return CordaConfig(corda_method=adapter.corda_method, verbose=False)


def other_blocks(layers: list[int] | None) -> str | None:
    """adapter.layers as the blocks PEFT should leave alone: a regex on module names (model.layers.3.mlp...,
    h.3..., encoder.layer.3...). PEFT's own layers_to_transform refuses `all-linear`; exclusion does not."""
    if not layers:
        return None
    chosen = "|".join(str(index) for index in sorted(set(layers)))
    return rf"(?:.*\.)?(?:layers|layer|h|blocks|block)\.(?!(?:{chosen})\.)\d+\..*"
