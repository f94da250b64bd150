"""A finished `train.method: reward` run, used: `tune predict` scores rows with it, and a GRPO recipe's
`reward.model` scores sampled completions with it. A conversation is tokenized exactly as the reward
model's training pairs were (tune/data/conversation.py, the run's own chat template; for `tune predict` also
its data.columns and system prompt). Checked before a GRPO run: that the reward model reads its prompts and
completions whole (its data.max_length)."""

from __future__ import annotations

import json
from pathlib import Path

from tune.data.conversation import tokenize
from tune.errors import DataError, TuneError
from tune.models.classifier import load_run


def load_reward_model(model_dir: Path, echo=None, key: str = "model", granted: frozenset[str] | None = None):
    """(model, tokenizer, max_length) of a reward run; anything else is one line. `granted`: what the
    command lets the run's recipe.yaml do; None (a GRPO recipe's reward.model) grants nothing."""
    model, tokenizer, recipe = _load(model_dir, echo, key, granted)
    return model, tokenizer, recipe.data.max_length


def reward_run_recipe(model_dir: Path, key: str, granted: frozenset[str] | None = None):
    """The recipe a finished `train.method: reward` run was trained with, read from its files alone."""
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
    return recipe


def _load(model_dir: Path, echo, key: str, granted: frozenset[str] | None):
    reward_run_recipe(model_dir, key, granted)
    model, tokenizer, _, recipe = load_run(model_dir, echo, granted)
    return model, tokenizer, recipe


def length_findings(recipe, recipe_dir: Path | None) -> tuple[list[str], list[str]]:
    """(problems, warnings) for a GRPO recipe's reward.model, from files alone: the reward model reads at most
    its own data.max_length tokens of prompt + completion and cuts the rest, so a completion past that is
    scored on its beginning only; a prompt that fills it leaves no completion to score at all."""
    if recipe.train.method != "grpo" or recipe.reward is None or recipe.reward.model is None:
        return [], []
    from tune.paths import find_file

    folder = find_file(recipe.reward.model, recipe_dir) or Path(recipe.reward.model)
    try:
        limit = reward_run_recipe(folder, "reward.model").data.max_length
    except TuneError as exc:
        return exc.problems, []
    completion, prompts = recipe.grpo.max_completion_length, _local_prompts(recipe, recipe_dir)
    scores = f"reward.model: {folder} scores {limit} tokens at most (its data.max_length)"
    if not prompts:  # hub data (validate does not download), or rows the data check reports
        return [], [f"{scores}; grpo.max_completion_length {completion} alone reaches it, so a long completion "
                    f"would be scored on its beginning only"] if completion >= limit else []
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)  # the run's own, with the chat template it was trained on
    # the prompt as the reward model reads it, with the template's markers around an empty reply
    lengths = sorted(((len(tokenize(prompt + [{"role": "assistant", "content": ""}], tokenizer,
                                    tokenizer.chat_template, "last_assistant").input_ids), where)
                      for where, prompt in prompts), reverse=True)
    longest, where = lengths[0]
    if longest >= limit:
        return [f"{scores}, but the prompt {where} takes {longest} with the chat template, so it would read none of "
                f"that prompt's completions; shorten the prompt, or train the reward model with data.max_length "
                f"{longest + completion}"], []
    over = sum(1 for length, _ in lengths if length + completion > limit)
    if not over:
        return [], []
    return [], [f"{scores}: {over} of {len(lengths)} prompts plus grpo.max_completion_length {completion} go over it "
                f"(longest {where}: {longest} tokens with the chat template, leaving {limit - longest} for the "
                f"completion), so the end of a longer completion would not be scored; lower "
                f"grpo.max_completion_length to {limit - longest}, or train the reward model with data.max_length "
                f"{longest + completion}"]


def _local_prompts(recipe, recipe_dir: Path | None) -> list[tuple[str, list[dict]]]:
    """(where, prompt messages) of every train and eval row, as the GRPO run gives them to its rewards."""
    from tune.data.prompts import row_to_messages
    from tune.data.rows import train_eval_rows
    from tune.data.sources import resolve_sources

    data = recipe.data
    try:
        specs = [(key, spec) for key, spec in (("data.train", data.train), ("data.eval", data.eval)) if spec is not None]
        if any(source.hub_id for key, spec in specs for source in resolve_sources(spec, recipe_dir, key)):
            return []
        train, evaluation = train_eval_rows(data, recipe_dir, recipe.train.seed)
        # by where: a weighted source repeats its rows
        return list({where: row_to_messages(row, data.columns, data.system_prompt, where)
                     for where, row in train + evaluation}.items())
    except TuneError:
        return []


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
    `reward_chosen`, `reward_rejected` and `prefers_chosen`. The prompt is presented as in training: the run's
    data.columns name the columns, and a row's system column, else the run's data.system_prompt, comes first.
    JSONL only: rows may hold chat messages."""
    from tune.data.rows import load_rows
    from tune.output import write_text
    from tune.recipe import DataSection

    if Path(out_file).suffix.lower() != ".jsonl":
        raise TuneError(f"--out: {out_file}: a reward model writes .jsonl")
    model, tokenizer, recipe = _load(model_dir, echo, "MODEL_DIR", granted)
    trained = recipe.data
    data = DataSection(train=str(data_file), format="preference")
    rows = load_rows(data, data.train, "--data", Path.cwd(), seed=0)
    sides = ("completion",) if rows and "completion" in rows[0][1] else ("chosen", "rejected")
    conversations = []
    for where, row in rows:
        conversations += _conversations(row, trained.columns, trained.system_prompt, sides, where)
    scores = score(model, tokenizer, conversations, trained.max_length)
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


def _conversations(row: dict, columns: dict[str, str], system_prompt: str | None, sides: tuple[str, ...],
                   where: str) -> list[list[dict]]:
    """The prompt (system turn first, as the pairs were trained) followed by each reply being scored."""
    from tune.data.preference import as_messages
    from tune.data.prompts import row_to_prompt

    names = {field: columns.get(field, field) for field in ("prompt", "system", "completion", "chosen", "rejected")}
    missing = [names[field] for field in ("prompt", *sides) if names[field] not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; score rows of {{{names['prompt']}, completion}} or "
                        f"{{{names['prompt']}, {names['chosen']}, {names['rejected']}}}")
    # only the prompt's own columns: a reply column named `completion` is one the prompt format refuses
    prompt, _ = row_to_prompt({name: row[name] for name in (names["prompt"], names["system"]) if name in row},
                              columns, system_prompt, where)
    return [prompt + as_messages(row[names[side]], "assistant", f"{where}: {side}") for side in sides]
