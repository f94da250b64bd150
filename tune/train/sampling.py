"""How GRPO samples its replies. Generation dominates GRPO's time: on a CUDA GPU vLLM (colocated, paged KV
cache, continuous batching) when installed; otherwise transformers' batched generate with the KV cache,
under the same bf16 autocast the training uses on CPUs that have AVX512-BF16."""

from __future__ import annotations

from tune.errors import TuneError


def autocast_sampling(trainer_class, enabled: bool):
    """On a CPU with AVX512-BF16 training runs under bf16 autocast, but TRL samples outside it, in float32:
    sampling under the same autocast is ~1.4x faster and matches the numerics the policy trains with."""
    class Trainer(trainer_class):
        def _generate_single_turn(self, *args, **kwargs):
            import torch

            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                return super()._generate_single_turn(*args, **kwargs)
    return Trainer


def generation_engine(grpo, run) -> dict:
    """GRPOConfig's sampling keys. Generation dominates GRPO's time: vLLM's paged KV cache and continuous
    batching are much faster on a GPU; on a CPU, transformers' batched generate (KV cache on) is what runs."""
    import importlib.util

    installed = importlib.util.find_spec("vllm") is not None
    if grpo.generation == "vllm" and not (run.on_gpu and installed):
        raise TuneError("grpo.generation: vllm needs a CUDA GPU and `pip install vllm`"
                        + ("" if run.on_gpu else "; this machine has no GPU") + "; use auto or transformers")
    able = run.recipe.model.quantization != "int8"  # vLLM has no in-flight 8-bit quantization
    if grpo.generation == "vllm" and not able:
        raise TuneError("grpo.generation: vllm cannot load an int8 base; use model.quantization: nf4 or none")
    use_vllm = grpo.generation == "vllm" or (grpo.generation == "auto" and run.on_gpu and installed and able)
    run.echo("generation: vLLM colocated on the GPU" if use_vllm else
             "generation: transformers generate, KV cache on, all completions of a step in one batched call")
    if not use_vllm:
        return {"use_vllm": False}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": grpo.vllm_gpu_memory_utilization,
            "vllm_max_model_length": run.recipe.data.max_length + grpo.max_completion_length}  # not the full context
