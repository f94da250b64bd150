"""Merging an adapter into its base, two ways, with the same result on disk (sharded safetensors, config,
generation config, and the run's tokenizer with the chat template it trained with).

- streamed: reads the base's safetensors shards tensor by tensor, adds scale * B @ A to each adapted
  weight and writes output shards as they fill, so peak memory is about one shard, not the model; adapters on
  parameters (MoE expert stacks, a router) are split into the checkpoint's per-expert names (expert_merge).
- in memory: PEFT's own merge_and_unload() on the whole model; used for DoRA (its magnitude vector
  needs the norm of the merged weight, so the update is not a plain low-rank sum), for a base that is not
  a local safetensors checkpoint, and for adapter features the stream does not model.
Both merge the 16/32-bit base: a QLoRA adapter is never merged into 4-bit weights."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from tune.errors import TuneError
from tune.models.run_dir import AdapterRun, base_config, checkpoint_files

DTYPES = ("auto", "float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
PREFIX = "base_model.model."  # PEFT's prefix on every saved adapter key


def parse_size(text: str) -> int:
    """'2GB', '500MB', '100KB' or a byte count -> bytes (decimal units, as transformers counts them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", str(text).upper())
    if not match or float(match.group(1)) <= 0:
        raise TuneError(f"--shard-size: {text!r} is not a size like 2GB, 500MB or 100KB")
    return int(float(match.group(1)) * 1000 ** " KMGT".index(match.group(2) or " "))


def output_dtype(run: AdapterRun, name: str):
    """The merged weights' dtype: as asked, or (auto) the dtype the base checkpoint is stored in."""
    import torch

    if name not in DTYPES:
        raise TuneError(f"--dtype: {name!r} is not one of {', '.join(DTYPES)}")
    if name == "auto":
        config = base_config(run)
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return getattr(torch, name)


def stream_blocker(run: AdapterRun) -> str | None:
    """Why the streamed merge cannot be used for this adapter and base (None: it can)."""
    config = run.config
    if run.labels is not None:
        return "a classifier's head is not in the base checkpoint"
    if checkpoint_files(run.base) is None:
        return "the base is not a local safetensors checkpoint"
    if config.get("use_dora"):
        return "DoRA rescales each merged weight by its column norm, which only PEFT's merge does"
    for key, reason in (("modules_to_save", "modules_to_save replace whole layers"),
                        ("alpha_pattern", "per-module alpha (alpha_pattern)"),
                        ("lora_bias", "LoRA bias terms"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers"),
                        ("trainable_token_indices", "trainable token indices"),
                        ("layer_replication", "layer replication")):
        if config.get(key):
            return reason
    if config.get("bias", "none") != "none":
        return f"bias={config['bias']!r} adapters"
    return None


def lora_pairs(run: AdapterRun, wrapped: set[str] = frozenset()) -> dict:
    """{base weight name: (A, B, scale)} from the adapter file; scale is alpha/r, or alpha/sqrt(r) for rsLoRA.
    `wrapped`: key stems of adapters on parameters, whose deltas expert_merge computes."""
    from safetensors.torch import load_file

    tensors = load_file(run.path / "adapter_model.safetensors")
    alpha = float(run.config["lora_alpha"])
    pairs = {}
    for key, a in tensors.items():
        if key.rsplit(".lora_", 1)[0] in wrapped:
            continue
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise TuneError(f"{run.path}: adapter tensor {key} is not a LoRA A/B matrix")
            continue
        stem = key[: -len(".lora_A.weight")]
        rank = a.shape[0]  # the real rank, which rank_pattern may have changed per module
        scale = alpha / math.sqrt(rank) if run.config.get("use_rslora") else alpha / rank
        name = stem.removeprefix(PREFIX) + ".weight"
        pairs[name] = (a, tensors[stem + ".lora_B.weight"], scale)
    return pairs


def checkpoint_names(run: AdapterRun) -> set[str]:
    from safetensors import safe_open

    names = set()
    for file in checkpoint_files(run.base):
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    return names


def merge_streamed(run: AdapterRun, out_dir: Path, dtype, shard_bytes: int, experts=None,
                   wrapped: set[str] = frozenset()) -> dict:
    """Write the merged checkpoint to out_dir without ever holding more than one shard of it (plus one fused
    expert delta, when `experts` has them: see expert_merge)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = checkpoint_files(run.base)
    pairs = lora_pairs(run, wrapped)
    # ---- plan: every tensor's source and output size from the headers, then the output shards
    plan, sizes = [], {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                plan.append((file, name))
                sizes[name] = math.prod(shape) * dtype.itemsize
    missing = sorted(set(pairs) - {name for _, name in plan})
    if missing:  # the adapter names layers the checkpoint does not hold under those names
        raise TuneError(f"{run.path}: the adapter targets {missing[0]}, which the base checkpoint "
                        f"{run.base} does not hold ({len(missing)} such weights); is --base the right model?")
    shards, current, filled = [], [], 0
    for file, name in plan:
        if current and filled + sizes[name] > shard_bytes:
            shards.append(current)
            current, filled = [], 0
        current.append((file, name))
        filled += sizes[name]
    shards.append(current)

    # ---- merge and write, shard by shard; input handles are opened and closed in file order
    weight_map, total, handle, open_file = {}, 0, None, None
    for number, shard in enumerate(shards, start=1):
        shard_name = "model.safetensors" if len(shards) == 1 else \
            f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        merged = {}
        for file, name in shard:
            if file != open_file:  # the previous file's map is released when its handle is dropped
                handle, open_file = safe_open(file, framework="pt"), file
            weight = handle.get_tensor(name)
            if name in pairs:
                a, b, scale = pairs[name]
                # The same order of operations as PEFT's get_delta_weight, in float32, rounded once.
                weight = weight.float() + (b.float() @ a.float()) * scale
            elif experts is not None and name in experts:
                weight = weight.float() + experts.take(name)
            merged[name] = weight.to(dtype).contiguous()
            weight_map[name] = shard_name
            total += sizes[name]
        save_file(merged, str(out_dir / shard_name), metadata={"format": "pt"})
        del merged
    handle = None
    if len(shards) > 1:
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    config = base_config(run)
    config["dtype"] = str(dtype).replace("torch.", "")
    config.pop("torch_dtype", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if (Path(run.base) / "generation_config.json").is_file():
        shutil.copyfile(Path(run.base) / "generation_config.json", out_dir / "generation_config.json")
    copy_tokenizer(run, out_dir)
    merged_weights = len(pairs) + (len(experts.owner) if experts is not None else 0)
    return {"method": "streamed", "shards": len(shards), "merged_weights": merged_weights}


def load_peft(run: AdapterRun, dtype=None):
    """Base (16/32-bit, safetensors only, never the 4-bit QLoRA weights) + the adapter, unmerged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    names = run.labels  # a classify or reward run: the base with its label head, as it was trained
    head = {} if names is None else {
        "num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
        "pad_token_id": json.loads((run.path / "config.json").read_text()).get("pad_token_id")}
    auto = AutoModelForCausalLM if names is None else AutoModelForSequenceClassification
    try:
        base = auto.from_pretrained(run.base, dtype=dtype or torch.float32, revision=run.revision,
                                    trust_remote_code=run.trust_remote_code, use_safetensors=True, **head)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TuneError(f"model.name: cannot load '{run.base}' (safetensors only): {first[:300]}") from None
    return PeftModel.from_pretrained(base, run.path).eval()


def merge_in_memory(run: AdapterRun, out_dir: Path, dtype, shard_bytes: int) -> dict:
    """PEFT's merge_and_unload() on the whole model, saved in `dtype`."""
    import torch

    # Merging in float32 and rounding once keeps 16-bit results as close to base+adapter as they can be.
    model = load_peft(run, torch.float32).merge_and_unload()
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True, max_shard_size=shard_bytes)
    if (Path(run.base) / "generation_config.json").is_file():  # keep the base's own, not a derived one
        shutil.copyfile(Path(run.base) / "generation_config.json", out_dir / "generation_config.json")
    copy_tokenizer(run, out_dir)
    shards = len(list(out_dir.glob("*.safetensors")))
    return {"method": "in-memory", "shards": shards, "merged_weights": None}


def copy_tokenizer(run: AdapterRun, out_dir: Path) -> None:
    """The run's tokenizer files: they carry the chat template the adapter was trained with."""
    for name in TOKENIZER_FILES:
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, out_dir / name)


def merge(run: AdapterRun, out_dir: Path, dtype_name: str = "auto", shard_size: str = "2GB",
          in_memory: bool = False) -> dict:
    """Merge into out_dir (which must exist); the report says which way it was done and why."""
    shard_bytes = parse_size(shard_size)
    dtype = output_dtype(run, dtype_name)
    blocker = "--in-memory was given" if in_memory else stream_blocker(run)
    experts, wrapped = None, set()
    if blocker is None and run.config.get("target_parameters"):
        from tune.export.expert_merge import expert_deltas

        experts, wrapped = expert_deltas(run, checkpoint_names(run))
        blocker = wrapped if experts is None else None
    if blocker is None:
        report = merge_streamed(run, out_dir, dtype, shard_bytes, experts, wrapped)
    else:
        report = merge_in_memory(run, out_dir, dtype, shard_bytes)
        report["why_in_memory"] = blocker
    report["dtype"] = str(dtype).replace("torch.", "")
    return report
