"""`tune generate`, `chat`, `eval` and `predict`: using what a run made. Each loads the model inside the
command, so the CLI's other commands stay fast."""

from __future__ import annotations

from pathlib import Path

import typer

from tune.cli.console import err, fail, out, say_err
from tune.errors import TuneError


def _sampling_options(max_new_tokens, temperature, top_k, top_p, seed):
    from tune.infer.generate import Sampling

    return Sampling(max_new_tokens, temperature, top_k, top_p, seed)


MAX_NEW = typer.Option(128, min=1, help="Longest answer in tokens.")
TEMPERATURE = typer.Option(0.0, min=0.0, help="0 = greedy; higher = more random.")
TOP_K = typer.Option(50, min=0, help="Sample from the k most likely tokens.")
TOP_P = typer.Option(1.0, min=0.0, max=1.0, help="Sample from the smallest set of tokens with this mass.")
SEED = typer.Option(0, help="Seed for sampling: the same seed gives the same answer.")
# A run dir's recipe.yaml may come from someone else: what it sets that runs code needs the user's own flag.
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="Allow the run's model.trust_remote_code: "
                                 "true (runs Python code from its base's repository).")
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Allow the run's model.allow_pickle: true (loads .bin "
                            "pickle weights, which can run code).")


def _load(model_dir: Path, trust_remote_code: bool, allow_pickle: bool):
    from tune.infer.generate import load_for_inference
    from tune.models.run_dir import grants
    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        return load_for_inference(model_dir, say_err, grants(trust_remote_code, allow_pickle))
    except TuneError as exc:
        fail(exc)


def generate(model_dir: Path = typer.Argument(help="A `tune run` output dir (base + adapter) or a full model folder."),
             prompt: str = typer.Option(None, "--prompt", "-p", help="The user message."),
             data: Path = typer.Option(None, "--data", help="JSONL/JSON/CSV of prompts (prompt, instruction or messages)."),
             out_file: Path = typer.Option(None, "--out", help="With --data: write JSONL here (default stdout)."),
             system: str = typer.Option(None, "--system", help="Optional system message."),
             max_new_tokens: int = MAX_NEW, temperature: float = TEMPERATURE, top_k: int = TOP_K,
             top_p: float = TOP_P, seed: int = SEED, trust_remote_code: bool = TRUST_REMOTE_CODE,
             allow_pickle: bool = ALLOW_PICKLE) -> None:
    """Answer a prompt (or every row of --data) with the chat template the model was trained with."""
    import json

    from tune.data.sources import read_rows, resolve_sources
    from tune.infer.generate import PromptTooLong, generate as answer, messages_of
    from tune.output import write_text

    if (prompt is None) == (data is None):
        fail(TuneError("give exactly one of --prompt TEXT or --data FILE"))
    try:
        rows = [row for source in resolve_sources(str(data), None, "--data") for row in read_rows(source)] if data else []
    except TuneError as exc:
        fail(exc)
    model, tokenizer = _load(model_dir, trust_remote_code, allow_pickle)
    sampling = _sampling_options(max_new_tokens, temperature, top_k, top_p, seed)
    if prompt is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        try:
            out.print(answer(model, tokenizer, messages, sampling), markup=False)
        except TuneError as exc:
            fail(TuneError(f"--prompt: {exc.problems[0]}"))
        return
    lines = []
    try:
        for number, row in enumerate(rows, start=1):
            where = f"{data}:row {number}"
            messages = messages_of(row, where)
            try:
                response = answer(model, tokenizer, messages, sampling)
            except PromptTooLong as exc:
                raise TuneError(f"{where}: {exc.problems[0]}") from None
            lines.append(json.dumps(row | {"response": response}))
    except TuneError as exc:
        fail(exc)
    if out_file:
        write_text(out_file, "".join(line + "\n" for line in lines))
        out.print(f"wrote {len(lines)} responses to {out_file}", markup=False)
    else:
        for line in lines:
            out.print(line, markup=False)


def chat(model_dir: Path = typer.Argument(help="A `tune run` output dir or a full model folder."),
         system: str = typer.Option(None, "--system", help="Optional system message."),
         max_new_tokens: int = MAX_NEW, temperature: float = TEMPERATURE, top_k: int = TOP_K,
         top_p: float = TOP_P, seed: int = SEED, trust_remote_code: bool = TRUST_REMOTE_CODE,
         allow_pickle: bool = ALLOW_PICKLE) -> None:
    """Talk to the model in the terminal, multi-turn. /reset starts over, /exit (or Ctrl-D) quits."""
    model, tokenizer = _load(model_dir, trust_remote_code, allow_pickle)
    sampling = _sampling_options(max_new_tokens, temperature, top_k, top_p, seed)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    out.print("chat: /reset starts over, /exit quits", markup=False)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(start)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        reply = _answer_within_context(model, tokenizer, messages, sampling, len(start))
        if reply is None:
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})
        out.print(f"model> {reply}", markup=False)


def _answer_within_context(model, tokenizer, messages: list[dict], sampling, kept: int) -> str | None:
    """A long chat outgrows the model's context: the oldest turns (after the system message) are dropped,
    with a note saying how many tokens; a single message too long for it is refused. Edits `messages`."""
    from tune.infer.generate import PromptTooLong, generate as answer, prompt_ids

    before, trial = prompt_ids(tokenizer, messages).shape[1], list(messages)
    while True:
        try:
            reply = answer(model, tokenizer, trial, sampling)
        except PromptTooLong as exc:
            if len(trial) - kept <= 1:  # the new message alone is too long: the history stays as it was
                err.print(f"error: {exc.problems[0]}", markup=False)
                return None
            del trial[kept:kept + 2]  # the oldest user turn and its answer
            continue
        messages[:] = trial
        dropped = before - prompt_ids(tokenizer, messages).shape[1]
        if dropped:
            err.print(f"note: the conversation outgrew the model's context; dropped its oldest turns ({dropped} "
                      "tokens)", markup=False)
        return reply


def predict(model_dir: Path = typer.Argument(help="The output dir of a `train.method: classify` or `reward` run."),
            data: Path = typer.Option(..., "--data", help="classify: rows with the run's text (and text_pair) columns; reward: {prompt, completion} or {prompt, chosen, rejected} rows, and system when a row has its own (the run's data.columns apply)."),
            out_file: Path = typer.Option(..., "--out", help="Where to write: .jsonl or .csv (classify)."),
            trust_remote_code: bool = TRUST_REMOTE_CODE, allow_pickle: bool = ALLOW_PICKLE) -> None:
    """Label every row of --data (its predicted label and each label's probability), or score it with a
    reward model (its reward; for pairs, both rewards and whether chosen wins)."""
    from tune.infer import classify, reward_model
    from tune.models.run_dir import grants, run_recipe
    from tune.quiet import quiet_libraries

    quiet_libraries()
    granted = grants(trust_remote_code, allow_pickle)
    try:
        recipe = run_recipe(model_dir, granted) if model_dir.is_dir() else None
        predict_file = (reward_model.predict_file if recipe is not None and recipe.train.method == "reward"
                        else classify.predict_file)
        count = predict_file(model_dir, data, out_file, say_err, granted)
    except TuneError as exc:
        fail(exc)
    out.print(f"wrote {count} predictions to {out_file}", markup=False)
