"""`tune merge` / `tune export` as users run them: exit codes and exact lines."""

import subprocess
import sys

import pytest

from tune.errors import TuneError


def tune(*args):
    return subprocess.run([sys.executable, "-m", "tune", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_bad_adapter_dir_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not an adapter")
    result = tune("merge", tmp_path, tmp_path.parent / "merged-out")
    assert result.returncode == 2
    assert result.stderr == f"{tmp_path}: not an adapter dir: no adapter_config.json (give the output dir of `tune run`)\n"
    assert result.stdout == "" and not (tmp_path.parent / "merged-out").exists()
    bad = tune("export", tmp_path, tmp_path / "x", "--format", "onnx", "--quant", "q4")
    assert bad.returncode == 2
    assert bad.stderr == "--format: 'onnx' is not one of adapter, merged, gguf\n"


def test_merge_no_verify_skips_the_check(trained, tmp_path):
    result = tune("merge", trained("lora"), tmp_path / "m", "--no-verify", "--dtype", "float16")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "merge: streamed shard by shard (14 weights merged); 1 shard(s), float16"
    assert lines[2:] == ["verify: skipped (--no-verify)", f"merged model in {tmp_path / 'm'}"]
    assert (tmp_path / "m" / "model.safetensors").is_file()
    verified = tune("merge", trained("lora"), tmp_path / "m", "--overwrite")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.splitlines()[2].startswith("verify merged: max |logit diff| vs base+adapter ")
    assert verified.stdout.splitlines()[2].endswith(" OK")


def test_help_lists_the_commands_without_importing_torch():
    code = "import sys, tune.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False False\n"
    result = tune("--help")
    assert result.returncode == 0 and " merge " in result.stdout and " export " in result.stdout


def test_a_damaged_adapter_file_is_one_line_for_export_and_generate(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained("lora"), run)
    weights = run / "adapter_model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    for command in (("export", run, tmp_path / "out", "--format", "adapter"), ("generate", run, "--prompt", "hi")):
        result = tune(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.endswith(f"{weights}: damaged adapter file (cut short: {len(whole) // 2} of {len(whole)} "
                                      "bytes); train again, or copy the run dir again\n")
    weights.write_bytes(b"")
    result = tune("merge", run, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr == f"{weights}: damaged adapter file (the file is empty); train again, or copy the run dir again\n"
    assert not (tmp_path / "out").exists()
    weights.unlink()
    result = tune("generate", run, "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr == (f"{run}: no adapter_model.safetensors (an interrupted copy? an adapter_model.bin is a "
                             "pickle, which tune never loads)\n")


def test_leftovers_of_a_killed_export_are_removed_by_the_next_one(trained, tmp_path):
    out = tmp_path / "exported"
    for name in (".exported.partial-k1ll3d", ".exported.old-0123abcd"):  # what a kill mid-export leaves
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"half")
    result = tune("export", trained("lora"), out, "--format", "adapter")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


def test_a_run_dirs_own_recipe_cannot_make_a_command_run_code(trained, tmp_path):
    """A run dir someone sent may set model.trust_remote_code / allow_pickle in its recipe.yaml: every command
    that loads it refuses in one line unless the user grants exactly those, and a grant adds nothing else."""
    import shutil

    import yaml
    from typer.testing import CliRunner

    from tests.conftest import SAMPLE_DATA
    from tune.cli import app
    from tune.infer.reward_model import load_reward_model

    def cli(*args):
        return CliRunner().invoke(app, [str(arg) for arg in args])

    run = tmp_path / "sent"
    shutil.copytree(trained("lora"), run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"] |= {"trust_remote_code": True, "allow_pickle": True}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    asks = f"{run / 'recipe.yaml'}: model.trust_remote_code: true and model.allow_pickle: true would run code from its " \
        "base (tiny-llama) when loaded here; "
    trust = "pass --trust-remote-code --allow-pickle if you trust where this run dir and its base came from\n"
    for command in (("generate", run, "--prompt", "hi"), ("chat", run), ("eval", run, "--data", SAMPLE_DATA),
                    ("predict", run, "--data", SAMPLE_DATA, "--out", tmp_path / "p.jsonl")):
        result = cli(*command)
        assert (result.exit_code, result.stderr) == (2, asks + trust), command
    result = cli("generate", run, "--prompt", "hi", "--trust-remote-code")
    assert (result.exit_code, result.stderr) == (2, f"{run / 'recipe.yaml'}: model.allow_pickle: true would run code "
                                                 "from its base (tiny-llama) when loaded here; pass --allow-pickle if "
                                                 "you trust where this run dir and its base came from\n")
    # merge and export load safetensors only, so the recipe's allow_pickle is never used there
    for command in (("merge", run, tmp_path / "m"), ("export", run, tmp_path / "a", "--format", "adapter")):
        result = cli(*command)
        assert (result.exit_code, result.stderr) == (2, f"{run / 'recipe.yaml'}: model.trust_remote_code: true would "
                                                     "run code from its base (tiny-llama) when loaded here; pass "
                                                     "--trust-remote-code if you trust where this run dir and its base "
                                                     "came from\n"), command
        assert not command[2].exists()
    with pytest.raises(TuneError) as caught:  # a GRPO recipe's reward.model: nothing can grant it
        load_reward_model(run, key="reward.model")
    assert caught.value.problems == [f"reward.model: {asks}retrain it without"]

    granted = cli("generate", run, "--prompt", "hi", "--max-new-tokens", "2", "--trust-remote-code", "--allow-pickle")
    assert granted.exit_code == 0, granted.stderr
    exported = cli("export", run, tmp_path / "a", "--format", "adapter", "--trust-remote-code")
    assert exported.exit_code == 0, exported.stderr

    from tune.models.run_dir import grants, read_adapter_dir

    assert read_adapter_dir(trained("lora"), granted=grants(True, True)).trust_remote_code is False  # not asked for


def test_a_damaged_recipe_in_a_run_dir_is_one_line_per_problem(trained, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from tune.cli import app

    run = tmp_path / "sent"
    shutil.copytree(trained("lora"), run)
    lines = (run / "recipe.yaml").read_text().splitlines()
    number = next(i for i, line in enumerate(lines, start=1) if line.strip().startswith("learning_rate:"))
    lines[number - 1] = lines[number - 1].replace("learning_rate:", "learnig_rate:")
    (run / "recipe.yaml").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["generate", str(run), "--prompt", "hi"])
    assert (result.exit_code, result.stderr) == (
        2, f"{run / 'recipe.yaml'}:{number}: train.learnig_rate: unknown key; did you mean 'learning_rate'?\n")
