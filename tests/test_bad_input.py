"""The bad-input catalogue: each case is one line naming the file, key or row and what to do, exit
code 2, no traceback, and nothing written to the output dir. Run in-process through the CLI."""

import shutil

import pytest
from typer.testing import CliRunner

from tests.conftest import SAMPLE_DATA, write_recipe
from tune.cli import app


def run(recipe, *args):
    result = CliRunner().invoke(app, ["run", str(recipe), *args])
    assert "Traceback" not in result.output + result.stderr
    return result


def expect_one_line(result, line, out_dir):
    assert result.exit_code == 2, result.output + result.stderr
    assert result.stderr == line + "\n"
    assert not out_dir.exists()


def line_of(path, key):
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(key + ":"))


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_invalid_yaml(tmp_path, out):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: tiny-llama\n  dtype: [float32\n")
    expect_one_line(run(path), f"{path}:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'", out)


def test_unknown_key(tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", adapter={"dropuot": 0.1})
    expect_one_line(run(path), f"{path}:{line_of(path, 'dropuot')}: adapter.dropuot: unknown key; "
                               "did you mean 'dropout'?", out)


def test_wrong_type(tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", train={"batch_size": "eight"})
    expect_one_line(run(path), f"{path}:{line_of(path, 'batch_size')}: train.batch_size: Input should be a valid integer, unable to parse "
                               "string as an integer", out)


def test_value_out_of_range(tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", adapter={"dropout": 1.5})
    expect_one_line(run(path), f"{path}:{line_of(path, 'dropout')}: adapter.dropout: Input should be less than 1", out)


def test_python_object_yaml(tmp_path, out):
    path = tmp_path / "r.yaml"
    path.write_text("model: !!python/object/new:os.system [echo hi]\n")
    expect_one_line(run(path), f"{path}:1: tag 'tag:yaml.org,2002:python/object/new:os.system' is not allowed: "
                               "recipes hold plain data, not Python objects", out)


def test_missing_data_file(tiny_model, tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"train": "nowhere.jsonl"})
    from pathlib import Path

    expect_one_line(run(path), "data.train: data file not found: nowhere.jsonl (looked beside the recipe and "
                               f"in {Path.cwd()})", out)


def test_empty_data_file(tiny_model, tmp_path, out):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    expect_one_line(run(write_recipe(tmp_path / "r.yaml", data={"train": str(data)})),
                    f"{data}: no rows; the file is empty", out)


def test_invalid_jsonl_line(tiny_model, tmp_path, out):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a" "completion": "b"}\n')
    expect_one_line(run(write_recipe(tmp_path / "r.yaml", data={"train": str(data)})),
                    f"{data}:2: not valid JSON (Expecting ',' delimiter at column 16); each line must be one "
                    "JSON object", out)


def test_invalid_csv_line(tiny_model, tmp_path, out):
    data = tmp_path / "d.csv"
    data.write_text("prompt,completion\na,b\nc,d,e\n")
    expect_one_line(run(write_recipe(tmp_path / "r.yaml", data={"train": str(data)})),
                    f"{data}:3: more fields than the header has columns", out)


def test_row_missing_a_required_column(tiny_model, tmp_path, out):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    expect_one_line(run(write_recipe(tmp_path / "r.yaml", data={"train": str(data)})),
                    f"{data}:row 2: needs columns instruction+output or prompt+completion; row has ['prompt'] "
                    "(map yours with data.columns)", out)


def test_non_string_value(tiny_model, tmp_path, out):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": ["a"], "completion": "b"}\n')
    expect_one_line(run(write_recipe(tmp_path / "r.yaml", data={"train": str(data)})),
                    f"{data}:row 1: column 'prompt' must be text, got list", out)


def test_every_row_over_max_length(tiny_model, tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"max_length": 16})
    expect_one_line(run(path), "data.max_length: all 164 examples are longer than 16 tokens (longest 29); "
                               "raise data.max_length", out)


def test_some_rows_over_max_length_are_counted(tiny_model, tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"max_length": 24, "overlength": "drop"},
                        train={"max_steps": 1})
    result = run(path)
    assert result.exit_code == 0, result.stderr
    assert "data: 0 examples truncated and 36 dropped (over data.max_length=24; longest 29 tokens)" in result.output


def test_overlength_error_names_the_row(tiny_model, tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"max_length": 28, "overlength": "error"})
    expect_one_line(run(path), f"{SAMPLE_DATA}:row 104: 29 tokens, over data.max_length=28 (raise max_length, "
                               "or set data.overlength: truncate or drop)", out)


def test_unknown_model_path(tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", model={"name": "./models/nope"})
    expect_one_line(run(path), "model.name: no such folder: ./models/nope", out)


def test_model_without_chat_template(tiny_model, tmp_path, out):
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink()
    path = write_recipe(tmp_path / "r.yaml", model={"name": str(bare)}, data={"template": "model"})
    expect_one_line(run(path), "data.template: the model has no chat template; set data.template to one of "
                               "alpaca, chatml", out)


def test_pickle_only_model_needs_allow_pickle(tiny_model, tmp_path, out):
    pickled = tmp_path / "pickled-model"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    path = write_recipe(tmp_path / "r.yaml", model={"name": str(pickled)})
    expect_one_line(run(path), f"model.name: {pickled} has only pickle weights (pytorch_model.bin); convert them "
                               "to safetensors, or set model.allow_pickle: true if you trust where they came from", out)


def test_output_dir_not_writable(tiny_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = write_recipe(tmp_path / "r.yaml", output={"dir": str(blocker / "out")})
    result = run(path)
    assert result.exit_code == 2
    assert result.stderr == (f"output.dir: cannot write to {blocker / 'out'}: Not a directory; "
                             "choose another with --set output.dir=...\n")


def test_liger_without_its_package_or_a_gpu(tmp_path, out, tiny_model):
    import importlib.util

    import torch

    path = write_recipe(tmp_path / "r.yaml", train={"use_liger_kernel": True})
    if importlib.util.find_spec("liger_kernel") is None:
        line = ("train.use_liger_kernel: the liger-kernel package is not installed; pip install liger-kernel "
                "(CUDA GPUs only), or set it to false")
    elif not torch.cuda.is_available():
        line = "train.use_liger_kernel: Liger's Triton kernels need a CUDA GPU; set it to false on this machine"
    else:
        pytest.skip("liger-kernel and a GPU are both here")
    expect_one_line(run(path), line, out)


def test_probe_file_row_without_expected(tmp_path, out, tiny_model):
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"question": "What is 2 plus 2?", "expected": "4"}\n{"question": "Capital of Peru?"}\n')
    path = write_recipe(tmp_path / "r.yaml", data={"probes": [str(probes)]})
    expect_one_line(run(path), f"{probes}:row 2: needs 'expected': the text a right answer contains "
                               "(or a list of such texts)", out)


@pytest.mark.parametrize("key, shape", [
    ("probes", "; probe rows are {question, expected}"),
    ("replay_prompts", ""),
    ("augment.rows", "; rows are {kind, messages: [user question, assistant answer], heldout} or "
                     "{kind: statements or passages, text}"),
])
def test_a_side_file_line_that_is_not_json_names_its_row(tmp_path, out, tiny_model, key, shape):
    side = tmp_path / "side.jsonl"
    good = ('{"kind": "statements", "text": "Thistlewick Co-op opens at 9."}' if key == "augment.rows"
            else '{"question": "What is 2 plus 2?", "expected": "4"}')
    side.write_text(good + '\n\n{"question": "Capital of Peru?\n')
    data = {"augment": {"rows": str(side)}} if key == "augment.rows" else {key: str(side) if key != "probes" else [str(side)]}
    if key == "replay_prompts":
        data["replay"] = 0.5
    path = write_recipe(tmp_path / "r.yaml", data=data)
    # row 3: the blank line counts, as in an editor
    expect_one_line(run(path), f"{side}:row 3: not valid JSON (Unterminated string starting at){shape}", out)


def test_augment_on_a_format_it_cannot_serve(tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"format": "completion", "augment": {}})
    expect_one_line(run(path), f"{path}:{line_of(path, 'augment')}: data.augment: rewrites question-and-answer rows "
                               "(train.method: sft on instruction or chat data), not sft on completion data; remove "
                               "data.augment", out)


def test_keep_best_needs_evaluations_and_something_to_compare(tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", train={"keep": "best"})
    expect_one_line(run(path), f"{path}:{line_of(path, 'keep')}: train.keep: best compares evaluations made every "
                               "train.eval_steps; set train.eval_steps", out)
    path = write_recipe(tmp_path / "r.yaml", train={"keep": "best", "eval_steps": 4})
    expect_one_line(run(path), f"{path}:{line_of(path, 'keep')}: train.keep: best needs something to compare: "
                               "data.probes, or data.augment with held-out rewordings (augment.heldout > 0)", out)


def test_reviewed_augment_rows_that_are_missing_or_wrong(tiny_model, tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"augment": {"rows": "rows.jsonl"}})
    expect_one_line(run(path), "data.augment.rows: no such file: rows.jsonl; write it with `tune data augment "
                               "RECIPE --out rows.jsonl`", out)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"kind": "statements", "text": "Thistlewick Co-op opens at 9.", "heldout": true}\n')
    expect_one_line(run(path), f"{rows}:row 1: only rewordings can be held out; set 'heldout': false", out)
    rows.write_text('{"kind": "rewording", "messages": []}\n')
    expect_one_line(run(path), f"{rows}:row 1: 'kind' is 'rewording'; it must be one of rewordings, swaps, frames, subject, "
                               "statements, passages, reverse", out)
    rows.write_text('{"kind": "passages", "text": " "}\n')
    expect_one_line(run(path), f"{rows}:row 1: a row of passages needs 'text': what to train on", out)
    rows.write_text('{"kind": "rewordings", "messages": [{"role": "user", "content": "When does it open?"}]}\n')
    expect_one_line(run(path), f"{rows}:row 1: needs 'messages': the question as a user turn, then the answer as "
                               "the assistant turn", out)
    validated = CliRunner().invoke(app, ["validate", str(path)])  # the same line before anything loads
    assert validated.exit_code == 2 and f"{rows}:row 1: needs 'messages'" in validated.stderr
    rows.write_text('{"kind": "statements", "text": "Thistlewick Co-op opens at 9."}\n')
    best = write_recipe(tmp_path / "r.yaml", data={"augment": {"rows": "rows.jsonl"}}, train={"keep": "best", "eval_steps": 4})
    expect_one_line(run(best), f"train.keep: best: {rows} marks no rewording \"heldout\": true and there are no "
                               "data.probes to compare evaluations by; mark some (about a quarter of each row's) or set "
                               "train.keep: final", out)
    both = write_recipe(tmp_path / "r.yaml", data={"augment": {"rows": "rows.jsonl", "model": "tiny-llama"}})
    expect_one_line(run(both), f"{both}:{line_of(both, 'augment')}: data.augment: rows are trained as they stand "
                               "and model would write none; remove model (or rows, to generate again)", out)


def test_an_augment_model_that_cannot_be_found(tiny_model, tmp_path, out):
    path = write_recipe(tmp_path / "r.yaml", data={"augment": {"model": "./models/nope"}})
    expect_one_line(run(path), "data.augment.model: no such folder: ./models/nope", out)
