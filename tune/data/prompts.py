"""The `prompt` format, for reward optimization (GRPO): {prompt, system?, ...} per row. The prompt is text
(one user turn) or a list of chat messages ending with a user turn; the model writes the reply. Every
other column travels with the prompt to the reward functions, by name (e.g. `answer`)."""

from __future__ import annotations

from pathlib import Path

from tune.data.conversation import LengthReport, fit, render_messages, within_reach
from tune.data.examples import prepare_examples
from tune.data.preference import as_messages
from tune.data.rows import Prepared
from tune.errors import DataError, TuneError
from tune.recipe import DataSection

# Hidden columns riding with each prompt row: where it came from (for error lines), and its text when the row
# gave the prompt as text (a user's reward function then sees text). Reward functions never get them.
WHERE, PROMPT_TEXT, ROW = "_tune_where", "_tune_prompt_text", "_tune_row"
# Names TRL's reward call uses itself (it drops or overwrites such columns): a row may not carry them.
RESERVED = ("completion", "completions", "completion_ids", "prompts", "trainer_state", "log_extra", "log_metric",
            "environments")


def row_to_prompt(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> tuple[list[dict], dict]:
    """(prompt messages, the row's other columns)."""
    name = columns.get("prompt", "prompt")
    if name not in row:
        raise DataError(f"{where}: missing column {name}; row has {sorted(row)} (map yours with data.columns.prompt)")
    prompt = as_messages(row[name], "user", f"{where}: {name}")
    if not prompt:
        raise DataError(f"{where}: {name} is empty")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{where}: {name} must end with a user message (the model writes the reply)")
    system_column = columns.get("system", "system")
    system = row.get(system_column) or system_prompt
    if system and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": str(system)})
    extra = {key: value for key, value in row.items() if key not in (name, system_column, "prompt")}
    clash = [key for key in extra if key in RESERVED or key.startswith("_tune_")]
    if clash:
        raise DataError(f"{where}: column {clash[0]} has a name the reward call uses itself; rename it in the "
                        "file (e.g. to answer or reference)")
    return prompt, extra


def row_to_messages(row: dict, columns: dict[str, str], system_prompt: str | None, where: str) -> list[dict]:
    return row_to_prompt(row, columns, system_prompt, where)[0]


def prepare_prompts(data: DataSection, tokenizer, template: str, recipe_dir: Path | None, seed: int) -> Prepared:
    """Each row {"prompt": messages, **other columns}, the shape TRL's GRPOTrainer reads (its reward functions
    get the other columns as keyword lists). data.max_length bounds a prompt as TRL renders it for sampling
    (the template and its generation prompt); it is also vLLM's context, with grpo.max_completion_length on
    top. data.overlength decides for a longer one: a prompt cannot be cut without changing the question, so
    `truncate` drops it as `drop` does."""
    first: list[tuple[str, dict]] = []  # the first row read: every row, held-out ones too, has its columns

    def examples(read, report: LengthReport) -> list[dict]:
        rows = []
        for where, row in read:
            prompt, extra = row_to_prompt(row, data.columns, data.system_prompt, where)
            if not first:
                first.append((where, extra))
            _check_same_columns(first[0], where, extra)
            rendered = render_messages(within_reach(prompt, data.max_length), tokenizer, template, True, where)
            length = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])  # as TRL tokenizes it
            if fit(length, length, data.max_length, data.overlength, where, report) is not None:
                text = row[data.columns.get("prompt", "prompt")]
                rows.append({"prompt": prompt, **extra, WHERE: where,
                             PROMPT_TEXT: text if isinstance(text, str) else None})
        return rows

    prepared = prepare_examples(data, template, recipe_dir, seed, examples, "prompts",
                                lambda row: {k: v for k, v in row.items() if k != WHERE}, key="rows_sha256")
    if not prepared.train:
        raise TuneError("data.train: no prompts")
    return prepared


def _check_same_columns(first: tuple[str, dict], where: str, row: dict) -> None:
    # TRL hands reward functions one list per column: a column some rows lack would arrive half-missing
    expected = set(first[1])
    if set(row) != expected:
        missing, extra = sorted(expected - set(row)), sorted(set(row) - expected)
        raise DataError(f"{where}: columns differ from {first[0]} (missing {missing or 'none'}, extra "
                        f"{extra or 'none'}); every row needs the same columns: the reward functions get them by name")
