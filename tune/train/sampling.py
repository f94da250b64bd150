"""How GRPO samples its replies. Generation dominates GRPO's time: on a CUDA GPU vLLM (colocated, paged KV
cache, continuous batching) when installed; otherwise transformers' batched generate with the KV cache,
under the same bf16 autocast the training uses on CPUs that have AVX512-BF16."""

from __future__ import annotations

from tune.data.replay import make_replay
from tune.errors import TuneError

REPLAY_ROWS, REPLAY_ROWS_PER_STEP = 64, 4  # grpo.replay: base answers made once (cached), cycled through the steps


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


def replaying(trainer_class, recipe, base_answer, tokenizer, data, recipe_dir, echo):
    """(the trainer class, grpo.replay's rows): the base model's answers to data.replay_prompts, made once
    (greedy, cached) and trained beside every step by with_replay; (trainer_class, None) when replay is 0."""
    grpo = recipe.grpo
    if not grpo.replay:
        return trainer_class, None
    replay = make_replay(base_answer, tokenizer, tokenizer.chat_template, recipe.data, [], recipe_dir, recipe.train.seed,
                         data.report, wanted=REPLAY_ROWS, limit=grpo.max_completion_length)
    data.fingerprint["replay"] = replay.fingerprint
    if not replay.examples:
        raise TuneError(f"grpo.replay: the base model finished none of its answers to data.replay_prompts within "
                        f"grpo.max_completion_length ({grpo.max_completion_length} tokens); raise it or set replay: 0")
    echo(f"data: {replay.note}; each step adds {grpo.replay:g} x the loss of {REPLAY_ROWS_PER_STEP} of them")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return with_replay(trainer_class, replay.examples, grpo.replay, REPLAY_ROWS_PER_STEP, pad), replay


def with_replay(trainer_class, examples: list[dict], weight: float, rows_per_step: int, pad_id: int):
    """GRPO plus a likelihood term on the base model's own answers to everyday prompts (InstructGPT's
    PPO-ptx, arXiv 2203.02155): each optimizer step also trains `rows_per_step` replay rows
    (tune/data/replay.py) and adds `weight` x their mean token loss, so the policy is pulled back toward what
    it said before while the reward pulls it away. Logged as replay_loss."""
    class Trainer(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # TRL's loss comes divided by the accumulation steps already (the Trainer then leaves it); so is
            # this term, its rows spread over the step's forward passes. A resumed run goes on where it was.
            accumulation = getattr(self, "current_gradient_accumulation_steps", 1) or 1
            per_pass = max(1, rows_per_step // accumulation)
            if not hasattr(self, "_replay_position"):
                self._replay_position = self.state.global_step * accumulation * per_pass
            batch = [examples[(self._replay_position + i) % len(examples)] for i in range(per_pass)]
            self._replay_position += per_pass
            width = max(len(e["input_ids"]) for e in batch)
            device = loss.device
            ids = torch.tensor([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in batch], device=device)
            labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch], device=device)
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch],
                                device=device)
            replay_loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            self._metrics["train"]["replay_loss"].append(replay_loss.detach().item())
            return loss + weight * replay_loss / accumulation
    return Trainer
