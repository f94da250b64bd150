"""Loading the base model and tokenizer the recipe names, and building its adapter config.
torch/transformers/peft are imported inside the functions: this module is imported by the CLI."""

from __future__ import annotations

from pathlib import Path

from tune.errors import TuneError
from tune.console import err
from tune.paths import PACKAGED_GGUF, looks_local, models_dir, resolve_model
from tune.recipe import AdapterSection, ModelSection


def resolve_dtype(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def model_source(model: ModelSection) -> str:
    """The folder or hub id transformers loads. A GGUF base (a .gguf path, a folder or hub repo plus
    model.gguf_file, or a packaged short name) is converted once into a folder in TUNE_HOME."""
    from tune.gguf_base import gguf_path, hf_folder

    source = resolve_model(model.name)
    if model.gguf_file and not Path(source).expanduser().is_dir():
        source = _download_gguf(model, source)
    gguf = gguf_path(source, model.gguf_file)
    if gguf is not None:
        key = "model.gguf_file" if model.gguf_file else "model.name"
        short_name = model.name if model.name in PACKAGED_GGUF else None
        return str(hf_folder(gguf, short_name, echo=lambda line: err.print(line, markup=False), key=key))
    if looks_local(source) and not Path(source).expanduser().exists():
        raise TuneError(f"model.name: no such folder: {model.name}")
    return source


def _download_gguf(model: ModelSection, repo: str) -> str:
    """A hub repo plus model.gguf_file: fetch just that file into the HF cache; returns its folder."""
    if looks_local(repo):
        raise TuneError(f"model.name: no such folder: {model.name}")
    from huggingface_hub import hf_hub_download

    try:
        return str(Path(hf_hub_download(repo, model.gguf_file, revision=model.revision)).parent)
    except Exception as exc:  # noqa: BLE001  (network, auth and missing-file errors all end the same way)
        raise TuneError(_not_found(f"{model.name}/{model.gguf_file}", exc)) from None


def load_tokenizer(model: ModelSection):
    from transformers import AutoTokenizer

    source = model_source(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=model.revision,
                                                  trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TuneError(_not_found(model.name, exc)) from None
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


def load_model(model: ModelSection, gradient_checkpointing: bool = False, sharded: bool = False):
    """The base causal LM, quantized and prepared for k-bit training when the recipe asks. `sharded`: FSDP
    or ZeRO-3 will split it across processes (see quantization_config)."""
    from transformers import AutoModelForCausalLM

    source, kwargs = load_arguments(model, sharded)
    try:
        base = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise TuneError(_not_found(model.name, exc)) from None
    return prepare_quantized(base, model, gradient_checkpointing, sharded)


def load_arguments(model: ModelSection, sharded: bool = False) -> tuple[str, dict]:
    """(source, from_pretrained keyword arguments) shared by every base load: dtype, quantization, the
    pickle policy, remote code and the attention kernel."""
    import torch

    dtype = resolve_dtype(model.dtype)
    quant = quantization_config(model, dtype, sharded)
    source = model_source(model)
    _refuse_pickles(source, model.allow_pickle)
    kwargs = {"dtype": dtype, "revision": model.revision, "trust_remote_code": model.trust_remote_code,
              "use_safetensors": None if model.allow_pickle else True}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if model.attn_implementation != "auto":
        kwargs["attn_implementation"] = model.attn_implementation
    return source, kwargs


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


def lora_config(adapter: AdapterSection):
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha if adapter.alpha is not None else 2 * adapter.r,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        modules_to_save=adapter.modules_to_save or None,
        use_dora=adapter.method == "dora",
        use_rslora=adapter.method == "rslora",
        task_type="CAUSAL_LM",
    )


def _not_found(name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"model.name: cannot load '{name}': {first[:300]} "
            f"(not a local folder, not in {models_dir()}, and not reachable on the hub; "
            "`tune init-tiny` builds the offline tiny-llama)")
