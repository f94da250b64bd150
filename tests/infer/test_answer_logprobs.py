"""answer_logprobs (the round trip's measure, tune/data/augment.py) batches examples by length and runs the
output layer only from the first trained position on: each score must still be the example's own mean
log-probability per trained token, as the model's loss gives it one example at a time."""

import torch
from transformers import AutoModelForCausalLM

from tune.infer.generate import answer_logprobs, inference


def test_scores_are_each_examples_own_mean_log_probability(tiny_model, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    torch.manual_seed(0)
    examples = []
    for prompt, answer in ((9, 4), (3, 7), (15, 2), (5, 5), (1, 12)):  # prompt and answer lengths
        ids = torch.randint(10, model.config.vocab_size, (prompt + answer,)).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    expected = []
    with inference(model):
        for e in examples:
            loss = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
            expected.append(-loss.item())
    scores = answer_logprobs(model, tiny_tokenizer, examples, batch_size=2)
    assert all(abs(s - e) < 2e-2 for s, e in zip(scores, expected)), (scores, expected)
    assert len(set(round(s, 2) for s in scores)) > 1
