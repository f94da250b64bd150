"""`tune plan --nproc N`: one device's share of a plan made for one process, split as the recipe's
`distributed` section says (what torch DDP, FSDP and DeepSpeed ZeRO allocate per device):
- ddp: a full copy of everything, plus DDP's gradient buckets (flat copies of every gradient);
- fsdp full_shard and ZeRO-3: weights, adapter, gradients and optimizer state divided by N; the 4-bit
  quantization statistics (absmax, codes) are not parameters and stay whole on every device; two decoder
  layers are all-gathered at a time (the one computing and the one prefetched);
- fsdp shard_grad_op: weights gathered after forward stay whole until backward ends;
- ZeRO-1 divides the optimizer state, ZeRO-2 also the gradients (each keeps gradient buckets);
- offload (fsdp_offload, zero_offload) moves those shards to CPU RAM, reported on a line of its own.
Communication buffers are estimates; the shares are exact divisions of the single-process figures.
"""

from __future__ import annotations

from dataclasses import replace


def sharding(recipe, nproc: int, recipe_dir) -> dict:
    """What the recipe's strategy splits across nproc devices, and what it moves to CPU RAM."""
    section, split = recipe.distributed, {"n": nproc, "weights": False, "gradients": False, "optimizer": False,
                                          "offload_optimizer": False, "offload_weights": False, "label": ""}
    if nproc == 1:
        return split
    if section.strategy == "ddp":
        return split | {"label": f"{nproc} processes, ddp"}
    if section.strategy == "fsdp":  # every state is sharded; shard_grad_op only keeps weights whole during a step
        offload = section.fsdp_offload
        return split | {"weights": True, "gradients": True, "optimizer": True, "sharding": section.fsdp_sharding,
                        "offload_optimizer": offload, "offload_weights": offload,
                        "label": f"{nproc} processes, fsdp {section.fsdp_sharding}" + (" offload" if offload else "")}
    import json

    from tune.paths import find_regular_file

    stage, offload = section.zero_stage, section.zero_offload
    if section.deepspeed_config is not None and (found := find_regular_file(section.deepspeed_config, recipe_dir)):
        zero = json.loads(found.read_text()).get("zero_optimization", {})
        stage = zero.get("stage", 0)
        offload = ("all" if zero.get("offload_param", {}).get("device") == "cpu" else
                   "optimizer" if zero.get("offload_optimizer", {}).get("device") == "cpu" else "none")
    return split | {"weights": stage == 3, "gradients": stage >= 2, "optimizer": stage >= 1, "sharding": "full_shard",
                    "offload_optimizer": offload != "none", "offload_weights": offload == "all",
                    "label": f"{nproc} processes, deepspeed zero-{stage}" + (f" offload {offload}" if offload != "none" else "")}


def per_device(plan, split: dict, stats: int, layers: int):
    """One device's share of a plan made for one process (see the module docstring)."""
    n, shardable = split["n"], plan.weights - stats
    offloaded = 0
    if not split["weights"]:
        weights, adapter, communication = plan.weights, plan.adapter, 0
    elif split.get("sharding") == "shard_grad_op":  # gathered after forward and kept until backward ends
        weights, adapter, communication = stats + shardable + shardable // n, plan.adapter, 0
    else:
        weights, adapter = stats + shardable // n, plan.adapter // n
        communication = 2 * (shardable // layers)  # the layer computing and the one prefetched
        if split["offload_weights"]:
            offloaded += weights - stats + adapter
            weights, adapter = stats, 0
    gradients = plan.gradients // n if split["gradients"] else plan.gradients
    optimizer = plan.optimizer // n if split["optimizer"] else plan.optimizer
    if not split["gradients"]:
        communication += plan.gradients  # DDP's bucket copies of every gradient (ZeRO-1 buckets them too)
    if split["offload_optimizer"]:  # the optimizer steps on the CPU, so the gradient shards go there too
        offloaded, optimizer, gradients = offloaded + optimizer + gradients, 0, 0
    return replace(plan, weights=weights, adapter=adapter, gradients=gradients, optimizer=optimizer,
                   communication=communication, offloaded=offloaded, processes=split["label"])

