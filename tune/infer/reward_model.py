"""A finished `train.method: reward` run, used: `tune predict` scores rows with it, and a GRPO recipe's
`reward.model` scores sampled completions with it. A conversation is tokenized exactly as the reward
model's training pairs were (tune/data/conversation.py, the run's own chat template)."""

from __future__ import annotations

import json
from pathlib import Path

from tune.data.conversation import tokenize
from tune.errors import DataError, TuneError
from tune.models.classifier import load_run


def load_reward_model(model_dir: Path, echo=None, key: str = "model", granted: frozenset[str] | None = None):
    """(model, tokenizer, max_length) of a reward run; anything else is one line. `granted`: what the
    command lets the run's recipe.yaml do; None (a GRPO recipe's reward.model) grants nothing."""
    from tune.models.run_dir import run_recipe

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TuneError(f"{key}: {model_dir}: no such folder (give the output dir of a `train.method: reward` run)")
    try:
        recipe = run_recipe(model_dir, granted) if (model_dir / "recipe.yaml").is_file() else None
    except TuneError as exc:
        raise TuneError([f"{key}: {problem}" for problem in exc.problems]) from None
    method = recipe.train.method if recipe is not None else None
    if method != "reward" or not (model_dir / "adapter_config.json").is_file():
        found = f"a train.method: {method} run" if method else "not a finished tune run"
        raise TuneError(f"{key}: {model_dir} is {found}, not a reward model (give the output dir of a "
                        "`train.method: reward` run)")
    model, tokenizer, _, recipe = load_run(model_dir, echo, granted)
    return model, tokenizer, recipe.data.max_length


def score(model, tokenizer, conversations: list[list[dict]], max_length: int, batch_size: int = 16) -> list[float]:
    """The reward model's score of each conversation (ending with the assistant reply being judged)."""
    import torch

    scores = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(conversations), batch_size):
        rows = [tokenize(c, tokenizer, tokenizer.chat_template, "last_assistant", max_length).input_ids[:max_length]
                for c in conversations[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
        with torch.no_grad():
            scores += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
    return scores


def predict_file(model_dir: Path, data_file: Path, out_file: Path, echo=None,
                 granted: frozenset[str] = frozenset()) -> int:
    """Each row with its score: {prompt, completion} rows get `reward`; {prompt, chosen, rejected} rows get
    `reward_chosen`, `reward_rejected` and `prefers_chosen`. JSONL only: rows may hold chat messages."""
    from tune.data.preference import as_messages
    from tune.data.rows import load_rows
    from tune.output import write_text
    from tune.recipe import DataSection

    if Path(out_file).suffix.lower() != ".jsonl":
        raise TuneError(f"--out: {out_file}: a reward model writes .jsonl")
    model, tokenizer, max_length = load_reward_model(model_dir, echo, "MODEL_DIR", granted)
    data = DataSection(train=str(data_file), format="preference")
    rows = load_rows(data, data.train, "--data", Path.cwd(), seed=0)
    sides = ("completion",) if rows and "completion" in rows[0][1] else ("chosen", "rejected")
    conversations = []
    for where, row in rows:
        missing = [name for name in ("prompt", *sides) if name not in row]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}; score rows of {{prompt, completion}} or "
                            "{prompt, chosen, rejected}")
        prompt = as_messages(row["prompt"], "user", f"{where}: prompt")
        conversations += [prompt + as_messages(row[side], "assistant", f"{where}: {side}") for side in sides]
    scores = score(model, tokenizer, conversations, max_length)
    results = []
    for index, (_, row) in enumerate(rows):
        if len(sides) == 1:
            results.append(row | {"reward": round(scores[index], 6)})
        else:
            chosen, rejected = scores[2 * index], scores[2 * index + 1]
            results.append(row | {"reward_chosen": round(chosen, 6), "reward_rejected": round(rejected, 6),
                                  "prefers_chosen": chosen > rejected})
    write_text(out_file, "".join(json.dumps(result, ensure_ascii=False) + "\n" for result in results))
    return len(results)
