"""`target_modules: all-linear` on a mixture-of-experts base, resolved against the built model. transformers
5 stores each layer's experts as fused 3-D parameters (`mlp.experts.gate_up_proj`: experts x 2I x H), which
PEFT adapts as target_parameters; its `all-linear` also reaches the router (`mlp.gate`) through its MoE
conversion. tune leaves the router out unless the recipe asks (adapter.target_router): LoRA on a router
moves which experts see each token, and a few hundred steps of domain data can collapse the routing onto a
few experts (the load-balancing loss that kept it spread is off in fine-tuning), for a gain no measurement
has shown. A dense base keeps PEFT's own `all-linear`."""

from __future__ import annotations

import re

ROUTERS = ("gate", "router")  # the router's own name in Qwen2/3-MoE, Mixtral, OLMoE, DeepSeek (gate), gpt-oss (router)
HEADS = ("lm_head", "score", "classifier")  # output layers all-linear leaves alone


def moe_targets(model, adapter, other_blocks: str | None) -> tuple[list[str], list[str]] | None:
    """(target_modules, target_parameters) for all-linear on an MoE base, or None for a dense one.
    `other_blocks`: the regex of module names adapter.layers leaves out (PEFT's exclude_modules does not
    reach target_parameters, so expert tensors are then named in full, block by block)."""
    import torch

    experts = [(name.rpartition(".")[0], name) for name, param in model.named_parameters() if param.ndim == 3]
    if adapter.target_modules != "all-linear" or not experts:
        return None
    output = model.get_output_embeddings()
    linear, tensors = set(), set()
    for name, module in model.named_modules():
        leaf = name.rpartition(".")[2]
        if leaf in ROUTERS and not adapter.target_router:
            continue
        if isinstance(module, torch.nn.Linear) and module is not output and leaf not in HEADS:
            linear.add(leaf)
        elif leaf in ROUTERS and getattr(getattr(module, "weight", None), "ndim", 0) == 2:
            experts.append((name, f"{name}.weight"))  # a router that is not an nn.Linear (Qwen3-MoE's TopKRouter)
    for owner, name in experts:
        if other_blocks is None:
            tensors.add(name.split(".", name.count(".") - 1)[-1])  # 'experts.gate_up_proj', 'gate.weight'
        elif not re.fullmatch(other_blocks, owner):
            tensors.add(name)
    return sorted(linear), sorted(tensors)


def coverage(model) -> dict[str, int]:
    """What a built PEFT model's adapter reaches, counted by kind: attention, mlp, experts, router, other."""
    from peft.tuners.lora import LoraLayer

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or name.endswith(".base_layer"):
            continue
        kind = layer_kind(name)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def coverage_phrase(counts: dict[str, int], router_in: bool, unit: str = "") -> str:
    """'attention 8, experts 24 <unit>; the router is left out (...)': the counts in a fixed order, for
    validate (weight tensors on disk) and the run (adapted modules)."""
    said = ", ".join(f"{kind} {counts[kind]}" for kind in ("attention", "mlp", "experts", "router", "other") if kind in counts)
    return said + (f" {unit}" if unit else "") + ("" if router_in else "; the router is left out (adapter.target_router: true adds it)")


def layer_kind(name: str) -> str:
    leaf = name.rpartition(".")[2]
    if "experts" in name.split("."):
        return "experts"
    if leaf in ROUTERS:
        return "router"
    if "attn" in name or "attention" in name:
        return "attention"
    if "mlp" in name or "feed_forward" in name or "ffn" in name:
        return "mlp"
    return "other"
