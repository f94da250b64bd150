"""The guard: every `train.eval_steps` the model is measured greedily, and the best adapter whose probes
keep at least a share of what the base answered right is remembered; training stops once the probes have
stayed below that bar. One mechanism, two measures:

- GRPO: the held-out reward. A reward that asks for brevity or a format is usually won by a model that
  forgets everything else (measured: SmolLM2 answered 12 of 16 general questions before, 0 after 40 steps
  of a length reward).
- SFT: the accuracy on questions worded as it never trained on (tune/train/knowledge.py). Facts fitted late
  in training raise hallucination (Gekhman et al., arXiv 2405.05904), so the run stops on what generalizes,
  not on the training loss.

Also here: GRPO's held-out evaluation and report, and the warning for groups whose completions all got
the same reward (they train nothing)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from transformers import TrainerCallback

from tune.data import probes
from tune.infer.generate import generate_batch
from tune.output import write_json, write_text
from tune.train import rewards
from tune.train.checkpoints import PREFIX

STATE_FILE, BEST_FILE = "guard.json", "guard-best.safetensors"  # in each checkpoint: what --resume restores


@dataclass(frozen=True)
class Measure:
    name: str  # as printed: "held-out reward"
    metric: str  # its key in metrics.jsonl
    bar: str  # the recipe key of the kept share it must hold
    parts: str  # the metrics.jsonl prefix of its parts (each reward, each probe set)


HELD_OUT_REWARD = Measure("held-out reward", "eval_reward", "grpo.min_kept_share", "eval_rewards")
UNSEEN_ACCURACY = Measure("unseen-wording accuracy", "unseen_accuracy", "train.min_kept_share", "unseen")


@dataclass
class Evaluation:
    step: int
    score: float | None  # the measure: GRPO's mean weighted reward on the held-out prompts, SFT's unseen accuracy
    per_function: dict[str, float]  # its parts: each reward's mean (grpo), each unseen set's accuracy (sft)
    kept: float | None  # probes.kept_share of the probes (None: no probes, or the base got none right)
    answers: list[str] = field(default_factory=list)
    rewards: list[float | None] = field(default_factory=list)
    probe_answers: list[list[str]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # probe sets left out (their answers blank): shown only
    scale: float | None = None  # the adapter's B matrices times this (tune/train/scaling.py); None: as trained
    likelihoods: list[float] = field(default_factory=list)  # SFT: each held-out answer's log-probability per token

    @property
    def likelihood(self) -> float | None:
        """The held-out answers' mean log-probability per token after their questions (SFT)."""
        return sum(self.likelihoods) / len(self.likelihoods) if self.likelihoods else None


class Guard(TrainerCallback):
    """evaluate(model, step) -> Evaluation, every `every` steps and at the last step.

    With `rollback` (a factor below 1) the guard also steers: an evaluation under the probe bar sends the
    model back to the best adapter so far, with the learning rate times `rollback`, the optimizer's moments
    cleared and evaluations twice as often from there. The measure usually rises fastest just before the
    probes fall, so the useful adapters lie between two evaluations; going back and taking smaller steps
    walks into that gap instead of past it."""

    def __init__(self, evaluate, every: int | None, min_kept_share: float, stop_after: int | None,
                 metrics, echo, measure: Measure = HELD_OUT_REWARD, rollback: float | None = None, on_rollback=None,
                 kept_of: str = "probes", scales: tuple[float, ...] = ()):
        self.evaluate, self.every, self.measure = evaluate, every, measure
        self.scales = scales  # tried on the final adapter when no evaluation passes (tune/train/scaling.py)
        self.on_rollback = on_rollback  # what else the method drops when the weights go back (GRPO's sampled batches)
        self.min_kept_share, self.stop_after, self.rollback = min_kept_share, stop_after, rollback
        self.interval = every  # steps between evaluations: halved at each rollback
        self.next_at: int | None = None  # the step of the next evaluation (set when training begins or resumes)
        self.rollbacks: list[int] = []  # the steps at which the model went back to the best adapter
        self.metrics, self.echo = metrics, echo
        self.history: list[Evaluation] = []
        self.best: Evaluation | None = None
        self.best_state: dict | None = None  # the adapter's weights at the best evaluation, on the CPU
        self.below = 0  # evaluations in a row under the probe bar
        self.stopped_early: str | None = None
        self.seconds = 0.0  # spent answering held-out prompts and probes, inside the training time
        self.kept_of = kept_of  # what the kept share counts: "eval_tasks items" under train.kept_by: tasks

    def passes(self, evaluation: Evaluation) -> bool:
        return evaluation.kept is None or evaluation.kept >= self.min_kept_share

    def on_train_begin(self, args, state, control, **kwargs):
        if self.next_at is None and self.every:  # a resumed run without the guard's state: the same grid
            self.next_at = (state.global_step // self.every + 1) * self.every

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        last = state.global_step >= state.max_steps
        if self.next_at is None and self.every:  # called without on_train_begin (the tests' scripted steps)
            self.next_at = ((state.global_step - 1) // self.every + 1) * self.every
        if not (last or (self.next_at and state.global_step >= self.next_at)):
            return
        if self.interval:
            self.next_at = state.global_step + self.interval
        started = time.perf_counter()
        evaluation = self.evaluate(model, state.global_step)
        self.seconds += time.perf_counter() - started
        self.history.append(evaluation)
        if state.is_world_process_zero:
            record = {"step": state.global_step, self.measure.metric: evaluation.score}
            record |= {f"{self.measure.parts}/{name}": value for name, value in evaluation.per_function.items()}
            if evaluation.kept is not None:
                record["probes_kept"] = evaluation.kept
            if evaluation.likelihood is not None:
                record["unseen_likelihood"] = evaluation.likelihood
            self.metrics.add(record, state.max_steps)
        if self.passes(evaluation):
            self.below = 0
            if self._better(evaluation):
                self.best, self.best_state = evaluation, _adapter_state(model)
            return
        self.below += 1
        if self.stop_after and self.below >= self.stop_after and not last:
            self.stopped_early = (f"the {self.kept_of} kept {evaluation.kept:.0%} (under {self.measure.bar} "
                                  f"{self.min_kept_share:.0%}) at {self.below} evaluations in a row")
            self.echo(f"guard: stopping at step {state.global_step}: {self.stopped_early}")
            control.should_training_stop = True
        elif self.rollback and self.best_state is not None and not last:
            self._roll_back(model, optimizer, lr_scheduler, state.global_step, evaluation)

    def _roll_back(self, model, optimizer, lr_scheduler, step: int, evaluation: Evaluation) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, self.best_state)
        optimizer.state.clear()  # the moments point where the model went wrong
        if self.on_rollback:
            self.on_rollback()
        before = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            group["lr"] *= self.rollback
        schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper holds torch's scheduler
        schedule.base_lrs = [lr * self.rollback for lr in schedule.base_lrs]  # the schedule goes on, scaled
        schedule._last_lr = [group["lr"] for group in optimizer.param_groups]  # what the Trainer logs for the next step
        self.interval = max(1, (self.interval or 1) // 2)
        self.next_at = step + self.interval
        self.rollbacks.append(step)
        self.echo(f"guard: step {step}: the {self.kept_of} kept {evaluation.kept:.0%} (under {self.min_kept_share:.0%}); back to "
                  f"the adapter of step {self.best.step}, learning rate x{self.rollback:g} ({before:.2e} -> "
                  f"{before * self.rollback:.2e}), evaluating every "
                  + (f"{self.interval} steps" if self.interval > 1 else "step"))

    def on_save(self, args, state, control, **kwargs):
        """Into each checkpoint, before its manifest hashes it (the guard comes first among the callbacks): the
        evaluations so far, the counter of evaluations under the bar, and the best one's adapter weights, so a
        resumed run chooses among every evaluation of the run and stops when an uninterrupted one would."""
        if not state.is_world_process_zero:
            return
        from safetensors.torch import save_file

        checkpoint = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        write_json(checkpoint / STATE_FILE, {"history": [asdict(e) for e in self.history], "below": self.below,
                                             "best_step": self.best.step if self.best else None,
                                             "interval": self.interval, "next_at": self.next_at,
                                             "rollbacks": self.rollbacks})
        if self.best_state is not None:
            save_file(self.best_state, str(checkpoint / BEST_FILE))

    def resume(self, checkpoint: Path) -> None:
        """The state on_save wrote into `checkpoint` (none there: a checkpoint of a run without the guard)."""
        if not (checkpoint / STATE_FILE).is_file():
            return
        from safetensors.torch import load_file

        saved = json.loads((checkpoint / STATE_FILE).read_text())
        self.history = [Evaluation(**e) for e in saved["history"]]
        self.below = saved["below"]
        self.interval, self.next_at = saved.get("interval", self.every), saved.get("next_at")
        self.rollbacks = saved.get("rollbacks", [])
        self.best = next((e for e in self.history if e.step == saved["best_step"]), None)
        self.best_state = load_file(str(checkpoint / BEST_FILE)) if self.best is not None else None

    def _better(self, evaluation: Evaluation) -> bool:
        """_preferred; without a score (probes only) the latest passing one wins."""
        if self.best is None or evaluation.score is None or self.best.score is None:
            return self.best is None or evaluation.score is not None or self.best.score is None
        return _preferred(evaluation, self.best)

    def evaluation_at(self, step: int) -> Evaluation | None:
        """The evaluation of the weights at `step`, when one was made (the final answers need not be generated twice)."""
        return next((e for e in reversed(self.history) if e.step == step), None)

    def restore_best(self, model) -> tuple[str, Evaluation | None]:
        """Load the kept adapter into the model (keep: best); say which one it is and why, with its evaluation."""
        final = self.history[-1] if self.history else None
        if final is not None and self.scales and not self.passes(final) and _above(final, self.best):
            # the final adapter learned more than any evaluation within the bar: scaled toward the base it may
            # keep the bar with more of that (a run whose only passing evaluation is its first, barely trained)
            from tune.train.scaling import toward_base

            rescued = toward_base(model, lambda: self.evaluate(model, final.step), self.passes, self.scales, self.echo,
                                  self.kept_of)
            if rescued is not None and (self.best is None or self.best.score is None or _preferred(rescued[1], self.best)):
                scale, evaluation = rescued
                measure = self.measure.name.split()[-1]
                why = (f"no evaluation kept {self.min_kept_share:.0%} of the {self.kept_of}" if self.best is None else
                       f"above step {self.best.step}'s {shown(self.best.score)}, the best evaluation within the bar"
                       + _tie_text(evaluation, self.best))
                return (f"kept the final weights (step {final.step}) scaled x{scale:g} toward the base: {why} (final: "
                        f"{measure} {shown(final.score)}{_kept_text(final, self.kept_of)}); scaled: {measure} "
                        f"{shown(evaluation.score)}{_kept_text(evaluation, self.kept_of)}"), evaluation
        if self.best is None:
            return (f"kept the final weights (step {final.step}), although no evaluation kept "
                    f"{self.min_kept_share:.0%} of the {self.kept_of}: lower the learning rate or the steps"
                    if final else "kept the final weights"), final
        if final is not None and self.best.step == final.step:
            return (f"kept the final weights (step {final.step}): the highest {self.measure.name} within the "
                    "probe bar"), final
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, self.best_state)
        return (f"kept step {self.best.step}: {self.measure.name} {shown(self.best.score)}, the highest among "
                f"evaluations whose {self.kept_of} kept at least {self.min_kept_share:.0%} (final step {final.step}: "
                f"{self.measure.name.split()[-1]} {shown(final.score)}{_kept_text(final, self.kept_of)}){self._next_higher(final)}"), self.best

    def _next_higher(self, final: Evaluation) -> str:
        """What the next step up in the measure cost: the lowest-scoring evaluation above the kept one."""
        higher = [e for e in self.history if None not in (e.score, self.best.score) and e.score > self.best.score]
        if not higher or min(higher, key=lambda e: (e.score, e.step)) is final:  # said already
            return ""
        above = min(higher, key=lambda e: (e.score, e.step))
        kept = f" but kept {above.kept:.0%} of the {self.kept_of}" if above.kept is not None else ""
        return f"; the next higher, step {above.step}, reached {shown(above.score)}{kept}"


def _likelier(evaluation: Evaluation, other: Evaluation) -> bool | None:
    """Whether the evaluation finds the same held-out answers likelier than the other: the mean of the paired
    per-answer differences, when it is more than twice its standard error (a dozen answers move by a few
    hundredths of a nat between evaluations by chance); None when that does not tell them apart."""
    pairs = list(zip(evaluation.likelihoods, other.likelihoods))
    if len(pairs) < 2 or len(evaluation.likelihoods) != len(other.likelihoods):
        return None
    differences = [a - b for a, b in pairs]
    mean = sum(differences) / len(differences)
    spread = (sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)) ** 0.5
    return None if abs(mean) <= 2 * spread / len(differences) ** 0.5 else mean > 0


def _preferred(evaluation: Evaluation, other: Evaluation) -> bool:
    """Of two evaluations within the bar: the higher score; at the same score the clearly likelier held-out
    answers (SFT: a dozen held-out rewordings are often all answered right from an early step on, while
    the later adapters still differ), then the one that kept more of the probes; a tie on all keeps the
    other, earlier one."""
    if evaluation.score != other.score:
        return evaluation.score > other.score
    likelier = _likelier(evaluation, other)
    if likelier is not None:
        return likelier
    return None not in (evaluation.kept, other.kept) and evaluation.kept > other.kept


def _above(evaluation: Evaluation, best: Evaluation | None) -> bool:
    """The evaluation measures higher than the best one within the bar: a higher score, or the same score
    and clearly likelier held-out answers (any score does, when there is none)."""
    if best is None or best.score is None:
        return True
    if evaluation.score is None or evaluation.score != best.score:
        return evaluation.score is not None and evaluation.score > best.score
    return bool(_likelier(evaluation, best))


def _tie_text(evaluation: Evaluation, other: Evaluation) -> str:
    """At the same score, what told them apart."""
    if evaluation.score != other.score:
        return ""
    if _likelier(evaluation, other) is not None:
        return (f" (as accurate, held-out answers likelier: {evaluation.likelihood:.3f} against "
                f"{other.likelihood:.3f} nats per token)")
    return " (as accurate, keeping more)"


def _kept_text(evaluation: Evaluation, kept_of: str = "probes") -> str:
    return f", {kept_of} kept {evaluation.kept:.0%}" if evaluation.kept is not None else ""


def _adapter_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in get_peft_model_state_dict(model).items()}


class ZeroSpreadWarning(TrainerCallback):
    """Warns once when TRL's frac_reward_zero_std stays at or above `threshold` for three logs. Under
    grpo.scale_rewards group or none TRL measures each group's spread, so it is the share of groups whose
    completions all got one reward; under batch it measures the whole generation batch's, so each batch counts
    1 (every completion got one reward) or 0 and a log holds the share of the batches sampled since the last."""

    def __init__(self, threshold: float, echo, scale_rewards: str, window: int = 3):
        self.threshold, self.echo, self.window = threshold, echo, window
        self.unit = "sampled batches" if scale_rewards == "batch" else "groups"
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
            self.echo(f"warning: {min(recent):.0%}-{max(recent):.0%} of the {self.unit} got the same reward for every "
                      f"completion over the last {self.window} logs; such {self.unit} train nothing. Make the reward "
                      "finer-grained (partial credit), raise grpo.temperature or grpo.num_generations, or use "
                      "prompts the model sometimes gets right")


# ---- the held-out evaluation and its report

def answerer(model, tokenizer):
    return lambda conversations, limit: generate_batch(model, tokenizer, conversations, limit)


def evaluator(reward_funcs, weights, eval_rows, probe_sets, recipe, tokenizer, limit):
    """evaluate(answer, state, base=None) -> Evaluation at state.global_step: the held-out prompts and the probes
    answered in one batched greedy pass, scored with the rewards (which get `state`, the trainer's TrainerState,
    as in training) and against the base's probe answers."""
    def evaluate(answer, state, base: Evaluation | None = None) -> Evaluation:
        conversations = [row["prompt"] for row in eval_rows]
        answered = answer(conversations, limit) if conversations else []
        totals, means = rewards.score_answers(reward_funcs, weights, eval_rows, answered, tokenizer, state)
        probe_answers = probes.answer_sets(answer, probe_sets, recipe.data.system_prompt,
                                           recipe.data.probe_max_new_tokens) if probe_sets else []
        kept = probes.kept_share(probe_sets, base.probe_answers, probe_answers) if base and probe_sets else None
        return Evaluation(state.global_step, rewards.mean(totals), means, kept, [text for text, _ in answered],
                          totals, probe_answers)
    return evaluate


def report_split(rows: list, share: float, seed: int) -> tuple[list, list]:
    """(prompts the guard chooses by, prompts the held-out report is scored on). The best of several
    evaluations, reported on the prompts it was chosen by, is biased upward (the luckiest one wins), so a
    seeded `share` of them (at least one, and one left to choose by) is answered only by the base and the
    kept adapter. Under two prompts, or share 0: the same prompts for both."""
    if share == 0 or len(rows) < 2:
        return rows, rows
    held = set(random.Random(seed).sample(range(len(rows)), min(len(rows) - 1, max(1, round(len(rows) * share)))))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def reported(on_report: Evaluation, chosen: Evaluation) -> Evaluation:
    """An evaluation of the report's prompts, with the probe answers the guard's evaluation of the same weights made."""
    return replace(on_report, probe_answers=chosen.probe_answers, kept=chosen.kept)


def chosen_by_report(before: Evaluation, after: Evaluation | None, chosen_by: list, reported_on: list, echo) -> dict:
    """run.json's numbers for the prompts the guard chose by, and the line that says the report's were not."""
    tuned = after.score if after else None
    echo(f"held-out prompts: the {len(reported_on)} above were never chosen by; on the {len(chosen_by)} the guard "
         f"chose by: {shown(before.score)} (base) -> {shown(tuned)} (kept)")
    return {"guard_reward_base": before.score, "guard_reward_tuned": tuned, "report_prompts": len(reported_on)}


def report(before: Evaluation, after: Evaluation | None, eval_rows, probe_sets, staging: Path, echo) -> dict:
    """The held-out table (rewards.md, rewards.json) and the probe table, printed and saved."""
    if after is None:
        return {"eval_reward_base": None, "eval_reward_tuned": None, "probes": None}
    rows = [{"prompt": row["prompt"][-1]["content"], "base": b, "tuned": t, "base_reward": br, "tuned_reward": tr}
            for row, b, t, br, tr in zip(eval_rows, before.answers, after.answers, before.rewards, after.rewards)]
    write_json(staging / "rewards.json", {"base": before.score, "tuned": after.score, "rows": rows})
    write_text(staging / "rewards.md", _markdown(rows, before, after))
    if rows:
        echo("")
        echo(f"held-out prompts: mean reward {shown(before.score)} (base) -> {shown(after.score)} (tuned); "
             f"per reward: " + ", ".join(f"{k} {before.per_function[k]:.2f} -> {v:.2f}" for k, v in after.per_function.items()))
    shares = None
    if probe_sets:
        table, shares = probes.score(probe_sets, before.probe_answers, after.probe_answers)
        write_text(staging / "probes.md", probes.markdown(table, shares))
        write_json(staging / "probes.json", {"shares": shares, "rows": table})
        for line in probes.summary_lines(shares):
            echo(line)
    return {"eval_reward_base": before.score, "eval_reward_tuned": after.score, "probes": shares}


def training_rewards(records: list[dict]) -> dict:
    logged = [r for r in records if isinstance(r.get("reward"), float)]
    zero = [r["frac_reward_zero_std"] for r in logged if isinstance(r.get("frac_reward_zero_std"), float)]
    return {"first_reward": logged[0]["reward"] if logged else None, "last_reward": logged[-1]["reward"] if logged else None,
            "mean_zero_spread_share": sum(zero) / len(zero) if zero else None}


def _markdown(rows: list[dict], before: Evaluation, after: Evaluation) -> str:
    lines = [f"# Held-out prompts\n\nMean reward: base {shown(before.score)}, tuned {shown(after.score)}\n",
             "| prompt | base answer | reward | tuned answer | reward |", "|---|---|---|---|---|"]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")[:300]  # noqa: E731
    lines += [f"| {cell(r['prompt'])} | {cell(r['base'])} | {shown(r['base_reward'])} | {cell(r['tuned'])} | "
              f"{shown(r['tuned_reward'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def base_right(probe_sets, base: Evaluation) -> str:
    shares = probes.score(probe_sets, base.probe_answers, base.probe_answers)[1]
    return ", ".join(f"{name} {s['base_correct']}/{s['questions']}" for name, s in shares.items())
