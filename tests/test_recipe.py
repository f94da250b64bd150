from pathlib import Path

import pytest

from tune import recipe as recipe_io
from tune.errors import RecipeError

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"

VALID = """\
model:
  name: tiny-llama
data:
  train: data.jsonl
train:
  max_steps: 5
"""


def problems(tmp_path: Path, text: str, overrides=()) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        recipe_io.load(path, overrides)
    return [line.replace(str(path), "R") for line in caught.value.problems]


def test_defaults_fill_every_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(VALID)
    recipe = recipe_io.load(path)
    assert recipe.adapter.method == "lora" and recipe.adapter.target_modules == "all-linear"
    assert recipe.model.trust_remote_code is False
    assert recipe.data.train_on == "assistant"
    assert recipe.output.dir == "runs/r"


def test_unknown_key_names_line_and_suggestion(tmp_path):
    text = VALID.replace("  max_steps: 5", "  max_steps: 5\n  learnig_rate: 0.1")
    assert problems(tmp_path, text) == ["R:7: train.learnig_rate: unknown key; did you mean 'learning_rate'?"]


def test_unknown_section_suggests_section(tmp_path):
    assert problems(tmp_path, VALID + "adaptr:\n  r: 4\n") == ["R:7: adaptr: unknown key; did you mean 'adapter'?"]


def test_wrong_type_and_out_of_range_each_get_a_line(tmp_path):
    text = VALID.replace("  max_steps: 5", "  max_steps: lots\n  batch_size: 0")
    assert problems(tmp_path, text) == [
        "R:6: train.max_steps: Input should be a valid integer, unable to parse string as an integer",
        "R:7: train.batch_size: Input should be greater than or equal to 1",
    ]


def test_bad_choice_lists_the_choices(tmp_path):
    text = VALID + "adapter:\n  method: qlora\n"
    assert problems(tmp_path, text) == ["R:8: adapter.method: Input should be 'lora', 'dora' or 'rslora'"]


def test_a_value_from_another_tool_says_why_it_is_not_offered(tmp_path):
    text = VALID + "adapter:\n  init: loftq\n"
    assert problems(tmp_path, text) == [
        "R:8: adapter.init: LoftQ is not offered: PEFT 0.21 computes it on a CUDA or XPU device only, and its adapter "
        "belongs on the 4-bit base's dequantized weights, which tune's merge and export do not use; train QLoRA with "
        "model.quantization: nf4 (init: default), or init: pissa on an unquantized base"]


def test_missing_required_key_points_at_its_section(tmp_path):
    assert problems(tmp_path, "model:\n  dtype: float32\ndata:\n  train: x.jsonl\n") == [
        "R:1: model.name: required key is missing"]


def test_invalid_yaml_gives_line_and_column(tmp_path):
    assert problems(tmp_path, "model:\n  name: [unclosed\ndata: {}\n") == [
        "R:3:5: invalid YAML: expected ',' or ']', but got ':'"]


def test_python_object_tags_are_refused(tmp_path):
    text = "model: !!python/object/apply:os.system ['echo hi']\n"
    assert problems(tmp_path, text) == [
        "R:1: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed: recipes hold plain data, "
        "not Python objects"]


def test_eval_and_eval_fraction_are_exclusive(tmp_path):
    text = VALID.replace("  train: data.jsonl", "  train: data.jsonl\n  eval: e.jsonl\n  eval_fraction: 0.1")
    assert problems(tmp_path, text) == ["R:3: data: give either `eval` or `eval_fraction`, not both"]


def test_unknown_column_field_is_named(tmp_path):
    text = VALID.replace("  train: data.jsonl", "  train: data.jsonl\n  columns: {ouput: answer}")
    assert problems(tmp_path, text) == [
        "R:3: data: columns: 'ouput' is not a field of format 'instruction'; did you mean 'output'? "
        "(fields: instruction, input, output, prompt, completion, system)"]


def test_overrides_are_coerced_to_the_field_types(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(VALID)
    recipe = recipe_io.load(path, ["train.learning_rate=1e-4", "train.max_steps=50",
                                   "train.gradient_checkpointing=true", "adapter.target_modules=[q_proj, v_proj]",
                                   "output.dir=runs/a"])
    assert recipe.train.learning_rate == 1e-4 and isinstance(recipe.train.learning_rate, float)
    assert recipe.train.max_steps == 50
    assert recipe.train.gradient_checkpointing is True
    assert recipe.adapter.target_modules == ["q_proj", "v_proj"]
    assert recipe.output.dir == "runs/a"


def test_bad_override_is_reported_as_the_override(tmp_path):
    assert problems(tmp_path, VALID, ["train.learning_rat=1e-4"]) == [
        "--set train.learning_rat=1e-4: train.learning_rat: unknown key; did you mean 'learning_rate'?"]
    assert problems(tmp_path, VALID, ["train.max_steps"]) == [
        "--set train.max_steps: expected key.path=value, e.g. --set train.learning_rate=1e-4"]


def test_dump_round_trips_with_every_default(tmp_path):
    recipe = recipe_io.load(QUICKSTART)
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe_io.dump(recipe))
    assert recipe_io.load(path) == recipe
    assert "gradient_checkpointing: false" in path.read_text()


def test_every_field_has_a_description():
    import typing

    from tune.recipe.rewards import RewardFunction

    for section in recipe_io.Recipe.model_fields.values():
        models = [t for t in typing.get_args(section.annotation) or [section.annotation] if t is not type(None)]
        for name, field in models[0].model_fields.items():
            assert field.description, name
    assert all(field.description for field in RewardFunction.model_fields.values())
