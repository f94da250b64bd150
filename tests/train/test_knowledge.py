"""SFT's guard measure with scripted answers: which probe sets count as unseen, known or trained, the
score and kept share it computes, and the guard keeping the best SFT evaluation with its own words."""

from pathlib import Path

import pytest

from tune.data.probes import ProbeSet, kept_share
from tune.train.guard import UNSEEN_ACCURACY, Evaluation, Guard
from tune.train.knowledge import evaluator

TRAINED = ProbeSet("trained", Path("t.jsonl"), ["Who founded Pipwick?", "When was Pipwick founded?"],
                   [["Ada"], ["1931"]])
REWORDED = ProbeSet("reworded", Path("r.jsonl"), ["Which person started Pipwick?", "In what year did Pipwick open?"],
                    [["Ada"], ["1931"]])
GENERAL = ProbeSet("general", Path("g.jsonl"), ["Capital of France?", "2 + 2?", "Largest ocean?"],
                   [["Paris"], ["4"], ["Pacific"]])
SETS = [TRAINED, REWORDED, GENERAL]


def scripted(replies: dict):
    """answer(conversations, limit): each question's reply from `replies`, else "I do not know"."""
    return lambda conversations, limit: [(replies.get(c[-1]["content"], "I do not know"), True) for c in conversations]


def lora_model(tiny_model):
    """The tiny model with a rank-4 LoRA adapter: what the scripted guard tests save and restore."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tune.models.load import lora_config
    from tune.recipe import AdapterSection

    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(AdapterSection(r=4)))


NO_METRICS = type("Metrics", (), {"add": lambda self, record, max_steps: None})()


def scripted_guard(evaluate, min_kept_share=0.85, metrics=NO_METRICS, echo=lambda line: None, scales=()):
    """SFT's guard as a run builds it, evaluating every 2 steps with the scripted `evaluate(model, step)`."""
    return Guard(evaluate, every=2, min_kept_share=min_kept_share, stop_after=None, metrics=metrics, echo=echo,
                 measure=UNSEEN_ACCURACY, scales=scales)


def run_scripted(guard, model, steps, before=lambda step: None):
    """Training as the guard sees it: `before(step)` sets the weights, then the step ends."""
    from transformers import TrainerControl, TrainerState

    state = TrainerState(max_steps=max(steps))
    for step in steps:
        before(step)
        state.global_step = step
        guard.on_step_end(None, state, TrainerControl(), model=model)


def set_b(model, value: float):
    """Every LoRA B matrix filled with `value`: an adapter whose size the scripted evaluations read back."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(value)


def b_of(model) -> float:
    return next(p for n, p in model.named_parameters() if "lora_B" in n).flatten()[0].item()


def test_sets_are_sorted_by_the_base_and_the_training_rows_and_scored():
    evaluate = evaluator(SETS, ["Who founded Pipwick?", "When was Pipwick founded?"], None, 16)
    base = evaluate(scripted({"Capital of France?": "Paris.", "2 + 2?": "4", "Largest ocean?": "The Pacific."}), 0)
    assert base.score == 0.0 and base.kept is None  # the base is its own reference: nothing to keep yet
    tuned = evaluate(scripted({"Who founded Pipwick?": "Ada.", "When was Pipwick founded?": "In 1931.",
                               "Which person started Pipwick?": "Ada did.", "Capital of France?": "Paris",
                               "2 + 2?": "It is 14."}), 10, base)
    # unseen: only the reworded set (the trained one is training questions; general is what the base knows)
    assert tuned.score == 0.5 and tuned.per_function == {"reworded": 0.5}
    assert tuned.kept == 1 / 3  # "14" is not "4"; "Largest ocean?" forgotten
    assert kept_share(SETS, base.probe_answers, tuned.probe_answers) == 1 / 3


def test_the_guards_evaluations_leave_out_the_trained_questions_and_the_kept_one_gets_them_answered():
    """During training only what the guard decides by is asked (the trained questions, which the base does not
    know, decide nothing); the kept adapter then answers them for the table, scored as if asked at once."""
    from tune.train.knowledge import complete

    asked = []

    def answer(replies):
        def reply(conversations, limit):
            asked.extend(c[-1]["content"] for c in conversations)
            return scripted(replies)(conversations, limit)
        return reply
    evaluate = evaluator(SETS, TRAINED.questions, None, 16)
    base = evaluate(answer({"Capital of France?": "Paris.", "2 + 2?": "4", "Largest ocean?": "The Pacific."}), 0)
    tuned_replies = {"Who founded Pipwick?": "Ada.", "Which person started Pipwick?": "Ada did.",
                     "Capital of France?": "Paris", "2 + 2?": "4", "Largest ocean?": "Pacific"}
    asked.clear()
    during = evaluate(answer(tuned_replies), 10, base, True)
    assert asked == REWORDED.questions + GENERAL.questions
    assert during.unanswered == ["trained"] and during.probe_answers[0] == ["", ""]
    assert (during.score, during.kept) == (0.5, 1.0)
    asked.clear()
    shown = complete(during, answer(tuned_replies), SETS, None, 16)
    assert asked == TRAINED.questions and shown.unanswered == []
    assert shown == evaluate(answer(tuned_replies), 10, base)  # the same as answering every set at once


def test_the_guard_keeps_the_best_unseen_accuracy_within_the_bar_and_says_so(tiny_model):
    import torch
    from peft import get_peft_model_state_dict

    model = lora_model(tiny_model)
    script = {2: (0.25, 1.0), 4: (0.75, 0.9), 6: (1.0, 0.5)}  # step: (unseen accuracy, kept)
    added, weights = [], {}
    metrics = type("Metrics", (), {"add": lambda self, record, max_steps: added.append(record)})()
    guard = scripted_guard(lambda m, step: Evaluation(step, script[step][0], {"reworded": script[step][0]}, script[step][1]),
                           metrics=metrics)

    def train_to(step):
        set_b(model, step)
        weights[step] = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}

    run_scripted(guard, model, range(1, 7), train_to)
    assert added == [{"step": 2, "unseen_accuracy": 0.25, "unseen/reworded": 0.25, "probes_kept": 1.0},
                     {"step": 4, "unseen_accuracy": 0.75, "unseen/reworded": 0.75, "probes_kept": 0.9},
                     {"step": 6, "unseen_accuracy": 1.0, "unseen/reworded": 1.0, "probes_kept": 0.5}]
    message, kept = guard.restore_best(model)
    assert kept.step == 4 and message == ("kept step 4: unseen-wording accuracy 0.750, the highest among evaluations "
                                          "whose probes kept at least 85% (final step 6: accuracy 1.000, probes kept 50%)")
    restored = get_peft_model_state_dict(model)
    assert all(torch.equal(restored[k], weights[4][k]) for k in restored)


def test_at_the_same_unseen_accuracy_the_guard_keeps_the_evaluation_that_kept_more(tiny_model):
    model = lora_model(tiny_model)
    # a kestrel FAQ run: step 40 and the final both answered 11 of 12 held-out wordings, the final kept more
    script = {2: (0.5, 0.95), 4: (0.917, 0.86), 6: (0.917, 0.93), 8: (0.917, 0.93), 10: (0.833, 0.97)}
    guard = scripted_guard(lambda m, step: Evaluation(step, script[step][0], {"reworded": script[step][0]}, script[step][1]))
    run_scripted(guard, model, range(1, 11))
    assert guard.best.step == 6  # 4 kept less at the same accuracy; 8 ties 6 on both and is trained longer


def test_when_no_evaluation_keeps_the_bar_the_final_adapter_is_scaled_toward_the_base(tiny_model):
    """Scripted: the kept share rises as the adapter's B matrices shrink; the guard tries 0.85 then 0.7 (the
    first within the bar), then halves the step toward 0.85 twice (0.775, 0.7375) and keeps the mildest factor
    within the bar with exactly that times the final B weights and A untouched, and says so. With no factor
    within the bar the final weights stay as trained."""
    import torch
    from peft import get_peft_model_state_dict

    model = lora_model(tiny_model)
    set_b(model, 1.0)
    final = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}

    def evaluate(m, step):  # B at 1.0 keeps 60%, at 0.85 about 70%, at 0.7 about 80%
        b = b_of(m)
        return Evaluation(step, round(b / 2, 3), {"reworded": round(b / 2, 3)}, round(1.3 - 0.7 * b, 3))

    lines = []
    for bar, expected_scale in ((0.79, 0.7), (0.78, 0.7375), (0.95, None)):
        guard = scripted_guard(evaluate, min_kept_share=bar, echo=lines.append, scales=(0.85, 0.7))
        run_scripted(guard, model, [2])
        message, kept = guard.restore_best(model)
        now = get_peft_model_state_dict(model)
        if expected_scale is None:
            assert message.startswith("kept the final weights (step 2), although no evaluation kept 95%")
            assert kept.scale is None and all(torch.equal(now[k], final[k]) for k in now)
            continue
        assert all(torch.equal(now[k], final[k] * (expected_scale if "lora_B" in k else 1.0)) for k in now)
        assert lines[-4:] == ["guard: the final adapter scaled x0.85 toward the base: probes kept 70%, measure 0.425",
                              "guard: the final adapter scaled x0.7 toward the base: probes kept 81%, measure 0.350",
                              "guard: the final adapter scaled x0.775 toward the base: probes kept 76%, measure 0.387",
                              "guard: the final adapter scaled x0.7375 toward the base: probes kept 78%, measure 0.369"]
        if expected_scale == 0.7:
            assert message == ("kept the final weights (step 2) scaled x0.7 toward the base: no evaluation kept 79% of "
                               "the probes (final: accuracy 0.500, probes kept 60%); scaled: accuracy 0.350, probes kept 81%")
            assert kept.scale == 0.7 and kept.kept == 0.81
        else:  # 0.7375 keeps 0.784, within 0.78: milder than 0.7, so more of what was learned
            assert message.startswith("kept the final weights (step 2) scaled x0.7375 toward the base")
            assert kept.scale == 0.7375 and kept.kept == 0.784 and kept.score == 0.369
        set_b(model, 1.0)  # back to the final weights for the next case


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_an_adapter_that_started_from_the_bases_directions_is_not_scaled(tiny_model, init):
    """PiSSA and OLoRA train on the base minus the adapter's starting directions: B x 0.85 would walk toward
    that residual, not the base, so the guard keeps the final weights as trained (with the evaluation of the
    test above, a plain adapter is scaled x0.7)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from tune.models.load import lora_config
    from tune.recipe import AdapterSection

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(AdapterSection(r=4, init=init)))
    set_b(model, 1.0)
    final = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    lines = []
    guard = scripted_guard(lambda m, step: Evaluation(step, round(b_of(m) / 2, 3), {"reworded": 0.5}, round(1.3 - 0.7 * b_of(m), 3)),
                           min_kept_share=0.79, echo=lines.append, scales=(0.85, 0.7))
    run_scripted(guard, model, [2])
    message, kept = guard.restore_best(model)
    assert message.startswith("kept the final weights (step 2), although no evaluation kept 79%") and lines == []
    now = get_peft_model_state_dict(model)
    assert kept.scale is None and all(torch.equal(now[k], final[k]) for k in now)


def test_the_scaled_final_adapter_beats_a_barely_trained_evaluation_within_the_bar(tiny_model):
    """Scripted: step 2 keeps the bar having learned little (accuracy 0.25), the final step learned more (0.5)
    but keeps too little. Scaled x0.7 it keeps the bar with 0.35, above step 2: that is kept. When the mildest
    passing factor scores below step 2 (x0.3, then x0.475 after halving toward 1.0: 0.2375), step 2's
    weights are restored."""
    from peft import get_peft_model_state_dict

    model = lora_model(tiny_model)

    def evaluate(m, step):  # accuracy b / 2, kept share 1.3 - 0.7 b
        b = b_of(m)
        return Evaluation(step, round(b / 2, 3), {"reworded": round(b / 2, 3)}, round(1.3 - 0.7 * b, 3))

    for scales, bar, expected_b in (((0.85, 0.7), 0.79, 0.7), ((0.3,), 0.9, 0.5)):
        guard = scripted_guard(evaluate, min_kept_share=bar, scales=scales)
        run_scripted(guard, model, (2, 4), lambda step: set_b(model, {2: 0.5, 4: 1.0}[step]))
        message, kept = guard.restore_best(model)
        b_now = {round(v.flatten()[0].item(), 3) for k, v in get_peft_model_state_dict(model).items() if "lora_B" in k}
        assert b_now == {expected_b}
        if expected_b == 0.7:
            assert message == ("kept the final weights (step 4) scaled x0.7 toward the base: above step 2's 0.250, the "
                               "best evaluation within the bar (final: accuracy 0.500, probes kept 60%); scaled: "
                               "accuracy 0.350, probes kept 81%")
            assert kept.scale == 0.7
        else:
            assert message.startswith("kept step 2: unseen-wording accuracy 0.250") and kept.step == 2


def test_the_evaluator_scores_the_likelihood_of_the_unseen_sets_whose_answers_it_knows():
    """Only the held-out rewordings carry full answers; the trained and known sets are not scored."""
    held = ProbeSet("augment-heldout", None, ["Who set up Pipwick?", "Pipwick opened in which year?"], [["Ada"], ["1931"]],
                    ["Pipwick was founded by Ada.", "Pipwick opened in 1931."])
    sets = [TRAINED, REWORDED, held, GENERAL]
    evaluate = evaluator(sets, TRAINED.questions, None, 16)
    base = evaluate(scripted({"Capital of France?": "Paris", "2 + 2?": "4", "Largest ocean?": "Pacific"}), 0)
    asked = []

    def likelihood(pairs):
        asked.extend(pairs)
        return [-0.5, -1.5]

    tuned = evaluate(scripted({"Who set up Pipwick?": "Ada", "Capital of France?": "Paris"}), 4, base, True, likelihood)
    assert asked == list(zip(held.questions, held.answers)) and tuned.likelihoods == [-0.5, -1.5]
    assert tuned.likelihood == -1.0
    assert tuned.score == 1 / 4 and evaluate(scripted({}), 4, base, True).likelihood is None


def likelihoods(mean: float, noise: float = 0.0) -> list[float]:
    """8 held-out answers' log-probabilities around `mean`; `noise` moves them up and down by turns."""
    return [round(mean + (noise if i % 2 else -noise), 3) for i in range(8)]


def test_at_the_same_accuracy_clearly_likelier_held_out_answers_win_and_the_final_is_scaled_for_them(tiny_model):
    """Scripted from an observatory run with reviewed rows: its 8 held-out rewordings were all answered right
    from step 40 on, and the later adapters differed in how likely they found the answers. At the same
    accuracy clearly likelier answers win (before the kept share); a difference within twice its standard
    error is a tie, and the kept share decides. The final, as accurate as the best within the bar but
    clearly likelier and under the bar, is scaled toward the base and kept; only a little likelier, it is not."""
    model = lora_model(tiny_model)
    script = {2: (0.5, 0.95, likelihoods(-2.0)), 4: (1.0, 0.90, likelihoods(-0.8)), 6: (1.0, 0.95, likelihoods(-1.2)),
              8: (1.0, 0.86, likelihoods(-0.5)), 10: (1.0, 0.99, likelihoods(-0.5, noise=0.3))}
    guard = scripted_guard(lambda m, step: Evaluation(step, script[step][0], {}, script[step][1], likelihoods=script[step][2]))
    run_scripted(guard, model, range(1, 11))
    # 6 kept more than 4 but found the answers less likely; 8 likelier though it kept less; 10 only as likely
    # as 8 (its answers 0.3 up and down) and kept more
    assert guard.best.step == 10

    for noise, expected_scale in ((0.0, 0.85), (1.0, None)):
        def evaluate(m, step):  # every adapter answers all 8; likelihood -1.5 + b, kept share 1.2 - 0.4 b
            b = b_of(m)
            return Evaluation(step, 1.0, {}, round(1.2 - 0.4 * b, 3),
                              likelihoods=likelihoods(round(-1.5 + b, 3), noise if step == 4 else 0.0))

        guard = scripted_guard(evaluate, scales=(0.85,))
        run_scripted(guard, model, (2, 4), lambda step: set_b(model, {2: 0.5, 4: 1.0}[step]))
        message, kept = guard.restore_best(model)
        if expected_scale is None:
            assert kept.step == 2 and kept.scale is None and message.startswith("kept step 2: ")
            continue
        assert kept.scale == 0.85 and message == (
            "kept the final weights (step 4) scaled x0.85 toward the base: above step 2's 1.000, the best evaluation "
            "within the bar (as accurate, held-out answers likelier: -0.650 against -1.000 nats per token) (final: "
            "accuracy 1.000, probes kept 80%); scaled: accuracy 1.000, probes kept 86%")
