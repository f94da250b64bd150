"""Inference inputs: a prompt the model cannot read whole is refused with its token counts (past the
context a model answers garbage, with exit 0)."""

from typer.testing import CliRunner

from tune.cli import app


def test_a_prompt_longer_than_the_context_is_refused(tiny_model):
    prompt = "tell me more " * 1200  # ~3,600 tokens for a 2,048-token model
    result = CliRunner().invoke(app, ["generate", str(tiny_model), "--prompt", prompt, "--max-new-tokens", "16"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("--prompt: the prompt is ") and line.endswith(
        " tokens and the answer may add 16, but the model reads at most 2048; shorten the prompt or lower "
        "--max-new-tokens")
    assert int(line.split("the prompt is ")[1].split()[0]) > 2048
