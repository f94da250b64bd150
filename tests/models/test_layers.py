"""What `tune validate` can know from the base's files alone (config.json and the safetensors headers,
no torch): target modules that match no layer, a rank too large for the layers, a label column that is
not one; `tune run` checks the same, in the same words; and a malformed --set points at the --set."""

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import write_recipe
from tune.cli import app


def validate(recipe, *args):
    return CliRunner().invoke(app, ["validate", str(recipe), *args])


def test_a_target_module_that_matches_no_layer_is_refused(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", adapter={"target_modules": ["q_proj", "qkv_proj"]})
    result = validate(recipe)
    assert result.exit_code == 2
    assert result.stderr == (f"{recipe}: adapter.target_modules: 'qkv_proj' matches no layer of tiny-llama (its layers "
                             "are named down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, "
                             "v_proj)\n")


def test_a_rank_above_what_the_layers_can_use_is_a_warning(tiny_model, tmp_path):
    # the tiny model's k_proj/v_proj are 32 x 64: above r = 32*64/(32+64) = 21 an adapter outgrows them;
    # at r=64 every one of its 14 linear layers is outgrown
    recipe = write_recipe(tmp_path / "r.yaml", adapter={"r": 64})
    result = validate(recipe)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"{recipe}: warning: adapter.r: 64 gives 14 layers (e.g. model.layers.0.self_attn.k_proj, "
                             "32x64) more adapter parameters than the layer has; above r=21 a higher rank only costs "
                             "memory\n")
    assert validate(write_recipe(tmp_path / "r.yaml", adapter={"r": 16})).stderr == ""


def test_a_label_column_with_a_label_per_row_is_a_warning(tiny_model, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"review number {i}", "label": f"id-{i}"}) + "\n" for i in range(40)))
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(rows), "format": "classification"},
                          train={"method": "classify"})
    result = validate(recipe)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"{recipe}: warning: data.train: 40 labels over 40 rows, 40 of them on a single row; a "
                             "classifier cannot learn a label from one example (is data.columns.label the label "
                             "column?)\n")


def test_a_malformed_set_points_at_the_set(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml")
    result = validate(recipe, "--set", "train.max_steps.limit=3")
    assert result.exit_code == 2
    assert result.stderr == ("--set train.max_steps.limit=3: train.max_steps is a value, not a section; set it with "
                             "--set train.max_steps=...\n")
    result = validate(recipe, "--set", "train..seed=3")
    assert result.stderr == "--set train..seed=3: 'train..seed' has an empty part; write section.key=value\n"


def run(recipe, *args):
    return CliRunner().invoke(app, ["run", str(recipe), *args])


def test_run_refuses_a_missing_target_module_in_validates_words_before_anything_is_written(tiny_model, tmp_path,
                                                                                        monkeypatch):
    from tune.train import launch

    recipe = write_recipe(tmp_path / "r.yaml", adapter={"target_modules": ["q_proj", "qkv_proj"]})
    result = run(recipe)
    assert result.exit_code == 2
    assert result.stderr == ("adapter.target_modules: 'qkv_proj' matches no layer of tiny-llama (its layers are named "
                             "down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj)\n")
    assert validate(recipe).stderr == f"{recipe}: {result.stderr}"
    monkeypatch.setattr(launch, "launch", lambda *args, **kwargs: pytest.fail("--nproc started processes"))
    launched = run(recipe, "--nproc", "2")  # refused before any process starts
    assert (launched.exit_code, launched.stderr) == (2, result.stderr)
    assert not (tmp_path / "out").exists()


def test_run_warns_of_a_rank_above_what_the_layers_can_use(tiny_model, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", adapter={"r": 64}, train={"max_steps": 1})
    result = run(recipe)
    assert result.exit_code == 0, result.output
    warning = ("adapter.r: 64 gives 14 layers (e.g. model.layers.0.self_attn.k_proj, 32x64) more adapter parameters "
               "than the layer has; above r=21 a higher rank only costs memory")
    assert result.stdout.splitlines()[0] == f"warning: {warning}"
    assert validate(recipe).stderr == f"{recipe}: warning: {warning}\n"


def test_run_warns_of_a_label_per_row_and_cuts_the_label_list_it_prints(tiny_model, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"review number {i}", "label": f"id-{i}"}) + "\n" for i in range(40)))
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": str(rows), "format": "classification", "max_length": 32},
                          train={"method": "classify", "max_steps": 1})
    result = run(recipe)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("warning: data.train: 40 labels over 40 rows, 40 of them on a single row; a classifier cannot "
                        "learn a label from one example (is data.columns.label the label column?)")
    assert validate(recipe).stderr == f"{recipe}: {lines[0]}\n"
    assert lines[1] == ("data: 40 train / 0 eval examples, labels id-0 1, id-1 1, id-10 1, id-11 1, id-12 1, id-13 1, "
                        "id-14 1, id-15 1, id-16 1, id-17 1, id-18 1, id-19 1, ... (28 more)")
