"""GRPO's guard against reward hacking. A reward that asks for brevity or a format is usually won by a
model that forgets everything else (measured: SmolLM2 answered 12 of 16 general questions before, 0 after
40 steps of a length reward). So every `train.eval_steps` the model answers the held-out prompts and the
probes greedily; the held-out reward and the kept share of the probes are logged, the best adapter under
the recipe's rule is remembered, and training stops once the probes have stayed below the bar.

Also here: the warning for groups whose completions all got the same reward (they train nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback


@dataclass
class Evaluation:
    step: int
    reward: float | None  # mean weighted reward of the greedy answers to the held-out prompts
    per_function: dict[str, float]  # each reward's mean on them
    kept: float | None  # the lowest kept share over the probe sets (None: no probes, or the base got none right)
    answers: list[str] = field(default_factory=list)
    rewards: list[float | None] = field(default_factory=list)
    probe_answers: list[list[str]] = field(default_factory=list)


class RewardGuard(TrainerCallback):
    """evaluate(model, step) -> Evaluation, every `every` steps and at the last step."""

    def __init__(self, evaluate, every: int | None, min_kept_share: float, stop_after: int | None,
                 metrics, echo):
        self.evaluate, self.every = evaluate, every
        self.min_kept_share, self.stop_after = min_kept_share, stop_after
        self.metrics, self.echo = metrics, echo
        self.history: list[Evaluation] = []
        self.best: Evaluation | None = None
        self.best_state: dict | None = None  # the adapter's weights at the best evaluation, on the CPU
        self.below = 0  # evaluations in a row under the probe bar
        self.stopped_early: str | None = None

    def passes(self, evaluation: Evaluation) -> bool:
        return evaluation.kept is None or evaluation.kept >= self.min_kept_share

    def on_step_end(self, args, state, control, model=None, **kwargs):
        last = state.global_step >= state.max_steps
        if not (last or (self.every and state.global_step % self.every == 0)):
            return
        evaluation = self.evaluate(model, state.global_step)
        self.history.append(evaluation)
        if state.is_world_process_zero:
            record = {"step": state.global_step, "eval_reward": evaluation.reward}
            record |= {f"eval_rewards/{name}": value for name, value in evaluation.per_function.items()}
            if evaluation.kept is not None:
                record["probes_kept"] = evaluation.kept
            self.metrics.add(record, state.max_steps)
        if self.passes(evaluation):
            self.below = 0
            if evaluation.reward is not None and (self.best is None or evaluation.reward > self.best.reward):
                self.best, self.best_state = evaluation, _adapter_state(model)
            return
        self.below += 1
        if self.stop_after and self.below >= self.stop_after and not last:
            self.stopped_early = (f"the probes kept {evaluation.kept:.0%} (under grpo.min_kept_share "
                                  f"{self.min_kept_share:.0%}) at {self.below} evaluations in a row")
            self.echo(f"guard: stopping at step {state.global_step}: {self.stopped_early}")
            control.should_training_stop = True

    def restore_best(self, model) -> str:
        """Load the kept adapter into the model (keep: best) and say which one it is and why."""
        final = self.history[-1] if self.history else None
        if self.best is None:
            return (f"kept the final weights (step {final.step}): no evaluation kept "
                    f"{self.min_kept_share:.0%} of the probes" if final else "kept the final weights")
        if final is not None and self.best.step == final.step:
            return f"kept the final weights (step {final.step}): the highest held-out reward within the probe bar"
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, self.best_state)
        return (f"kept step {self.best.step}: held-out reward {self.best.reward:.3f}, the highest among "
                f"evaluations whose probes kept at least {self.min_kept_share:.0%} (final step {final.step}: "
                f"reward {final.reward:.3f}{_kept_text(final)})")


def _kept_text(evaluation: Evaluation) -> str:
    return f", probes kept {evaluation.kept:.0%}" if evaluation.kept is not None else ""


def _adapter_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in get_peft_model_state_dict(model).items()}


class ZeroSpreadWarning(TrainerCallback):
    """Warns once when the share of groups with equal rewards stays at or above `threshold` for three logs."""

    def __init__(self, threshold: float, echo, window: int = 3):
        self.threshold, self.echo, self.window = threshold, echo, window
        self.shares: list[float] = []
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        share = (logs or {}).get("frac_reward_zero_std")
        if share is None or not state.is_world_process_zero:
            return
        self.shares.append(float(share))
        recent = self.shares[-self.window:]
        if not self.warned and len(recent) == self.window and min(recent) >= self.threshold:
            self.warned = True
            self.echo(f"warning: {min(recent):.0%}-{max(recent):.0%} of the groups got the same reward for every "
                      f"completion over the last {self.window} logs; such groups train nothing. Make the reward "
                      "finer-grained (partial credit), raise grpo.temperature or grpo.num_generations, or use "
                      "prompts the model sometimes gets right")
