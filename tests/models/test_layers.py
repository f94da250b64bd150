"""What `tune validate` can know from the base's files alone (config.json and the safetensors headers,
no torch): target modules that match no layer, a rank too large for the layers, a label column that is
not one; and a malformed --set points at the --set."""

import json

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
