"""The streamed merge's view of adapters on parameters (target_parameters: MoE expert stacks, a router weight).

In memory transformers 5 holds each layer's experts fused (`mlp.experts.gate_up_proj`, experts x out x in) and
PEFT wraps those 3-D tensors, nesting one wrapper per tensor on the same module; on disk the checkpoint keeps one
weight per expert (`mlp.experts.3.gate_proj.weight`). So the delta of a fused tensor is computed by PEFT's own
wrapper, built on the meta device (no base weights are read), and split into the checkpoint's names by
transformers' own reverse of its loading conversion, the one save_pretrained uses. A checkpoint that already
stores the fused tensor takes the delta as it is; any other layout is left to the in-memory merge."""

from __future__ import annotations

import re

from tune.models.run_dir import AdapterRun

ADAPTER = "default"


class ExpertDeltas:
    """Deltas for the checkpoint's tensors that belong to wrapped parameters, one fused tensor computed at a time."""

    def __init__(self, wrappers: dict, disk_names: dict[str, list[str]], model):
        self.wrappers = wrappers  # fused parameter name -> PEFT ParamWrapper
        self.disk_names = disk_names  # fused parameter name -> the checkpoint tensors it is stored as
        self.owner = {disk: fused for fused, names in disk_names.items() for disk in names}
        self.model = model  # the meta-device base, which transformers' reverse conversion consults
        self.pending: dict[str, dict] = {}  # fused name -> its split deltas not yet taken

    def __contains__(self, disk_name: str) -> bool:
        return disk_name in self.owner

    def take(self, disk_name: str):
        """The float32 delta to add to this checkpoint tensor; a fused tensor's split is kept until all its
        pieces are taken, so peak memory is one fused delta, not all of them."""
        fused = self.owner[disk_name]
        if fused not in self.pending:
            self.pending[fused] = self.split(fused, fused_delta(self.wrappers[fused]))
        pieces = self.pending[fused]
        delta = pieces.pop(disk_name)
        if not pieces:
            del self.pending[fused]
        return delta

    def split(self, fused: str, delta) -> dict:
        from transformers.core_model_loading import revert_weight_conversion

        if self.disk_names[fused] == [fused]:
            return {fused: delta}
        return {name: tensor.contiguous() for name, tensor in revert_weight_conversion(self.model, {fused: delta}).items()}


def fused_delta(wrapper):
    """scale * B @ A in the wrapped parameter's own layout, float32, as PEFT's get_delta_weight computes it."""
    param = wrapper.get_param()
    if param.ndim == 2:  # a plain weight (e.g. the router) wrapped as a parameter: PEFT's Linear delta
        a, b = wrapper.lora_A[ADAPTER].weight, wrapper.lora_B[ADAPTER].weight
        return (b.float() @ a.float()) * wrapper.scaling[ADAPTER]
    lhs, rhs, scale = wrapper.get_delta_factors(ADAPTER)  # per expert, in the stack's (in, out) order
    return (lhs.float() @ rhs.float()) * scale


def expert_deltas(run: AdapterRun, checkpoint_names: set[str]) -> tuple[ExpertDeltas | None, set[str] | str]:
    """(deltas, the adapter file's key stems they cover) or (None, why the stream cannot place them)."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora.layer import ParamWrapper
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    config = AutoConfig.from_pretrained(run.base, revision=run.revision, trust_remote_code=run.trust_remote_code)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, trust_remote_code=run.trust_remote_code)
    model = PeftModel.from_pretrained(base, run.path, low_cpu_mem_usage=True)
    # PEFT leaves the adapter on the base's (meta) device; the real A/B matrices are assigned in place.
    saved = load_file(run.path / "adapter_model.safetensors")
    loaded = model.load_state_dict({re.sub(r"\.(lora_[AB])\.weight$", rf".\1.{ADAPTER}.weight", key): value
                                    for key, value in saved.items()}, strict=False, assign=True)
    if loaded.unexpected_keys:
        return None, f"PEFT's model has no place for adapter tensor {loaded.unexpected_keys[0]}"
    wrappers, stems = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, ParamWrapper):
            if module.lora_A[ADAPTER].weight.is_meta or module.lora_B[ADAPTER].weight.is_meta:
                return None, f"the adapter file holds no weights for {name}"
            stems.add(name)
            fused = name.removeprefix("base_model.model.").replace(".base_layer", "") + "." + module.parameter_name
            wrappers[fused] = module
    disk_names = {}
    for fused, wrapper in wrappers.items():
        if fused in checkpoint_names:
            disk_names[fused] = [fused]
            continue
        shape = torch.empty(wrapper.get_param().shape, device="meta")
        names = sorted(revert_weight_conversion(base, {fused: shape}))
        if not set(names) <= checkpoint_names:
            return None, f"the checkpoint stores {fused} in a layout transformers' conversion does not name"
        disk_names[fused] = names
    return ExpertDeltas(wrappers, disk_names, base), stems
