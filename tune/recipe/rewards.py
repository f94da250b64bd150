"""The recipe sections of reward optimization: `reward:` (what is optimized: reward functions and/or a
tune reward model) and `grpo:` (how: group size, sampling, the loss, and the guard against reward hacking).
They are separate from `train:` because only `train.method: grpo` reads them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from tune.recipe.section import Section, did_you_mean

# The built-in reward functions and the options each one reads (tune/train/rewards.py implements them).
BUILTIN_REWARDS = {
    "exact_answer": ("column", "ignore_case"),
    "final_number": ("column",),
    "contains_answer": ("column", "ignore_case"),
    "regex": ("pattern",),
    "max_words": ("limit",),
    "max_tokens": ("limit",),
    "json_valid": ("keys",),
}
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's GRPOConfig


class RewardFunction(Section):
    function: str = Field(description="A built-in (exact_answer, final_number, contains_answer, regex, max_words, max_tokens, json_valid) or FILE.py:NAME, a Python function f(prompts, completions, **columns) -> list of floats.")
    column: str = Field("answer", description="exact_answer / final_number / contains_answer: the data column holding the right answer.")
    ignore_case: bool = Field(True, description="exact_answer / contains_answer: compare without case and surrounding whitespace.")
    pattern: str | None = Field(None, description="regex: 1.0 when the whole completion matches this Python regular expression, else 0.0.")
    limit: int | None = Field(None, ge=1, description="max_words / max_tokens: 1.0 at or under the limit, falling linearly to 0.0 at twice it.")
    keys: list[str] = Field(default_factory=list, description="json_valid: keys the JSON object must hold (1.0 valid with all keys, 0.5 valid without them, 0.0 not JSON).")

    @model_validator(mode="after")
    def _check(self) -> RewardFunction:
        if ":" in self.function or self.function.endswith(".py"):
            file, _, name = self.function.rpartition(":")
            if not file.endswith(".py") or not name.isidentifier():
                raise ValueError(f"reward.functions: '{self.function}' should be FILE.py:NAME (a Python file and the "
                                 "function in it)")
            return self
        if self.function not in BUILTIN_REWARDS:
            raise ValueError(f"reward.functions: '{self.function}' is not a built-in reward"
                             f"{did_you_mean(self.function, BUILTIN_REWARDS)} (built-ins: {', '.join(BUILTIN_REWARDS)}; "
                             "or give FILE.py:NAME)")
        needs = {"regex": "pattern", "max_words": "limit", "max_tokens": "limit"}.get(self.function)
        if needs and getattr(self, needs) is None:
            raise ValueError(f"reward.functions: {self.function} needs `{needs}`")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"reward.functions: pattern {self.pattern!r} is not a regular expression: {exc}") from None
        return self

    @property
    def builtin(self) -> bool:
        return self.function in BUILTIN_REWARDS


class RewardSection(Section):
    functions: list[str | RewardFunction] = Field(default_factory=list, description="Reward functions summed into the reward: built-in names, {function: NAME, options...}, or FILE.py:NAME (its code runs: only use files you trust).")
    weights: list[float] | None = Field(None, description="One weight per reward (functions first, then the model); default 1 each.")
    model: str | None = Field(None, description="The output dir of a `train.method: reward` run; its score of prompt + completion is one more reward.")

    @model_validator(mode="after")
    def _check(self) -> RewardSection:
        self.functions = [RewardFunction(function=f) if isinstance(f, str) else f for f in self.functions]
        count = len(self.functions) + (self.model is not None)
        if count == 0:
            raise ValueError("reward: give at least one of reward.functions or reward.model")
        if self.weights is not None and len(self.weights) != count:
            raise ValueError(f"reward.weights: {len(self.weights)} weights for {count} rewards; give one per reward "
                             "(functions first, then the model)")
        return self


class GRPOSection(Section):
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the group); rewards are compared within a group, so it must be at least 2.")
    generation_batch_size: int | None = Field(None, ge=2, description="Completions generated at once; default train.batch_size x gradient_accumulation x processes. Must hold whole groups: a multiple of num_generations.")
    max_completion_length: int = Field(256, ge=1, description="Longest sampled completion in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions; lower = less varied groups.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens whose probability reaches this.")
    beta: float = Field(0.0, ge=0, description="KL penalty toward the base (adapter off), or with model.adapter toward a frozen copy of the adapter continued; 0 = none and no reference forward. Slows reward hacking, does not prevent it.")
    loss_type: str = Field("dapo", description="TRL's GRPO loss: dapo (default), grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Divide advantages by the reward spread of the group, of the batch, or not at all (Dr. GRPO).")
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each generated batch (GRPO's mu); above 1 the clipped ratio matters.")
    mask_truncated_completions: bool = Field(False, description="Leave completions cut at max_completion_length out of the loss (DAPO).")
    generation: Literal["auto", "transformers", "vllm"] = Field("auto", description="Sampling engine: transformers = one batched generate call per step with the KV cache; vllm = vLLM colocated on the GPU (`pip install vllm`); auto = vllm on a CUDA GPU when installed, else transformers.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="vllm: share of GPU memory vLLM reserves for weights and KV cache beside training.")
    eval_max_new_tokens: int | None = Field(None, ge=1, description="Longest greedy answer to the held-out prompts; default max_completion_length (probes use data.probe_max_new_tokens).")
    keep: Literal["best", "last"] = Field("best", description="Adapter saved at the end: best = the evaluation with the highest held-out reward whose probes kept at least min_kept_share; last = the final weights.")
    replay: float = Field(0.0, ge=0, le=10, description="Weight of a likelihood term on the base model's own answers to data.replay_prompts, trained beside every step (InstructGPT's PPO-ptx): pulls the policy back toward what it said before; 0 = off.")
    rollback: float | None = Field(None, gt=0, lt=1, description="Guard: on an evaluation under min_kept_share, go back to the best adapter so far and continue with the learning rate times this, evaluating twice as often (none = only choose and stop).")
    report_share: float = Field(0.5, ge=0, lt=1, description="With keep: best, the share of the held-out prompts (seeded) the guard never chooses by: the reported tuned reward is measured on them, so it is not the luckiest of several evaluations; 0 = choose and report on the same prompts.")
    min_kept_share: float = Field(0.75, ge=0, le=1, description="Guard: the share of the probe questions the base got right that must stay right; an evaluation below it is not kept (when none passes, the final weights are, and the run says so).")
    stop_after: int | None = Field(2, ge=1, description="Guard: stop training after this many evaluations in a row below min_kept_share (none = never stop early).")
    zero_spread_warning: float = Field(0.8, gt=0, le=1, description="Warn when the share of groups (under scale_rewards: batch, of sampled batches) whose rewards are all equal, which train nothing, stays at or above this.")

    @model_validator(mode="after")
    def _check(self) -> GRPOSection:
        if self.loss_type not in GRPO_LOSSES:
            raise ValueError(f"grpo.loss_type: '{self.loss_type}' is not a GRPO loss{did_you_mean(self.loss_type, GRPO_LOSSES)} "
                             f"(one of {', '.join(GRPO_LOSSES)})")
        if self.generation_batch_size is not None and self.generation_batch_size % self.num_generations:
            raise ValueError(f"grpo.generation_batch_size: {self.generation_batch_size} completions do not make whole "
                             f"groups of num_generations={self.num_generations}; use a multiple of {self.num_generations}")
        return self
