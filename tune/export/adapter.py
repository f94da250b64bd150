"""`tune export --format adapter`: a clean PEFT dir for multi-adapter servers (vLLM, TGI, LoRAX), and a
report of what would stop them serving it. The rules are vLLM's (the strictest of the three)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tune.export.merge import TOKENIZER_FILES

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
RECORD_FILES = ("recipe.yaml", "versions.json", "data_fingerprint.json", "metrics.jsonl", "run.json")
HEAD_FILES = ("labels.json", "config.json")  # a classifier's labels and head config (classify and reward runs)
# vLLM's --max-lora-rank accepts only these; an adapter of smaller rank is padded up to it.
VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Layers vLLM can put LoRA on for Llama/Mistral/Qwen2 (it packs q/k/v and gate/up itself).
VLLM_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                "lm_head"}


def copy_adapter(run, out_dir: Path) -> None:
    """Adapter, tokenizer (with the trained chat template) and the run's records; no checkpoints."""
    for name in ADAPTER_FILES + TOKENIZER_FILES + RECORD_FILES + HEAD_FILES:
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, out_dir / name)


def compatibility(config: dict) -> dict:
    """{'rank', 'max_lora_rank', 'warnings'}: each warning is one line a user can act on."""
    warnings = []
    ranks = [config.get("r", 0), *config.get("rank_pattern", {}).values()]
    rank = max(ranks)
    max_rank = next((allowed for allowed in VLLM_MAX_RANKS if allowed >= rank), None)
    if max_rank is None:
        warnings.append(f"rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_RANKS[-1]}); "
                        "train with a smaller adapter.r or export --format merged")
    if config.get("use_dora"):
        warnings.append("DoRA adapters are not served by vLLM, TGI or LoRAX; export --format merged instead")
    if config.get("modules_to_save"):
        warnings.append(f"modules_to_save {sorted(set(config['modules_to_save']))} (whole trained layers) are not served by "
                        "vLLM; export --format merged instead")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    leaves = sorted({name.rsplit(".", 1)[-1] for name in targets})
    unsupported = [name for name in leaves if name not in VLLM_MODULES]
    if unsupported:
        warnings.append(f"target modules {unsupported} are not LoRA-capable in vLLM for Llama-family models "
                        f"(supported: {', '.join(sorted(VLLM_MODULES))})")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        warnings.append("adapters with trained bias terms are not supported by vLLM")
    if config.get("layers_to_transform") or config.get("layer_replication"):
        warnings.append("layers_to_transform / layer_replication are not supported by vLLM")
    return {"rank": rank, "max_lora_rank": max_rank, "target_modules": leaves, "warnings": warnings,
            "vllm_ok": not warnings}


def lines(report: dict) -> list[str]:
    if report["vllm_ok"]:
        return [f"serving: vLLM/TGI/LoRAX-compatible (rank {report['rank']}; vLLM needs "
                f"--enable-lora --max-lora-rank {report['max_lora_rank']} or more)"]
    return [f"warning: {warning}" for warning in report["warnings"]]


def write_report(out_dir: Path, report: dict) -> None:
    (out_dir / "serving_compatibility.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
