"""The model card (README.md) written into every export: YAML metadata the Hugging Face Hub reads, then the
recipe, the run's final metrics, the verification numbers, and how to load the result."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tune.models.resolve import looks_local

HOW_TO_LOAD = {
    "adapter": """```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{out}")  # loads the base named in adapter_config.json
tokenizer = AutoTokenizer.from_pretrained("{out}")
```

Serve with vLLM: `vllm serve {base} --enable-lora --max-lora-rank {max_rank} --lora-modules tuned={out}`.""",
    "merged": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
```""",
    "gguf": """```bash
llama-cli -m {out}/{gguf} -cnv              # llama.cpp, chat template from the file
ollama create tuned -f {out}/Modelfile && ollama run tuned
```""",
}


def write_card(out_dir: Path, run, kind: str, report: dict, final_name: Path) -> None:
    recipe = run.recipe
    run_summary = _read_json(run.path / "run.json")
    base = run.base_name
    meta = {"base_model": base} if not looks_local(base) and "/" in base else {}
    if kind == "adapter":
        meta["library_name"] = "peft"
    elif kind == "merged":
        meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["tune", run.method, recipe.get("train", {}).get("method", "sft")] + \
        (["merged"] if kind == "merged" else ["gguf"] if kind == "gguf" else [])
    if run.quantized:
        meta["tags"].append("qlora")
    datasets = [name for name in _as_list(recipe.get("data", {}).get("train")) if _is_hub_dataset(name)]
    if datasets:
        meta["datasets"] = datasets

    parts = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {final_name.name}", "",
             f"A {run.method} adapter on `{base}` trained with tune, exported as **{kind}**"
             + (f" ({report['gguf']['quant']})." if kind == "gguf" else "."), ""]
    if run_summary:
        parts += ["## Training result", "", "| metric | value |", "|---|---|"]
        for key in ("steps", "first_loss", "last_loss", "eval_loss", "train_seconds", "trainable_parameters"):
            if run_summary.get(key) is not None:
                parts.append(f"| {key} | {run_summary[key]} |")
        parts.append("")
    checks = report.get("verification") or []
    parts += ["## Verification", ""]
    if checks:
        parts += [_check_line(check) for check in checks]
    else:
        parts.append("- skipped (--no-verify)")
    if "readback" in report:
        readback = report["readback"]
        parts.append(f"- GGUF read back: {readback['tensors']} tensors, " +
                     (f"max relative weight error {readback['max_relative_error']:.2e}" if "max_relative_error"
                      in readback else f"{readback['tokens']} tokens, hyper-parameters and tokenizer keys"))
    for warning in report.get("serving", {}).get("warnings", []):
        parts.append(f"- serving warning: {warning}")
    parts += ["", "## How to load", "", HOW_TO_LOAD[kind].format(
        out=final_name, base=base, gguf=report.get("gguf", {}).get("file", ""),
        max_rank=report.get("serving", {}).get("max_lora_rank") or 16), ""]
    if recipe:
        parts += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", ""]
    (out_dir / "README.md").write_text("\n".join(parts), encoding="utf-8")


def _check_line(check: dict) -> str:
    if "min_cosine" in check:  # a GGUF read back by transformers
        return (f"- {check['what']}: min cosine {check['min_cosine']:.5f} and top-1 agreement "
                f"{check['top1_agreement']:.2f} against base+adapter; tokenizer equal on "
                f"{check['tokenizer_probes_equal']} probes")
    return (f"- {check['what']}: max |logit difference| against base+adapter {check['max_abs_logit_diff']:.2e}, "
            f"against the base {check['max_abs_logit_diff_vs_base']:.2e} (tolerance {check['tolerance']:.1e}; "
            f"the adapter moves logits by up to {check['adapter_effect']:.2e})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _is_hub_dataset(name: str) -> bool:
    return "/" in name and not looks_local(name) and not Path(name).suffix and not Path(name).exists()
