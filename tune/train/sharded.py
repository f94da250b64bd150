"""Inside each process of a sharded run (FSDP, ZeRO-3): FSDP switched on where accelerate would leave it
off (the CPU), and the adapter gathered from its shards for rank 0 to write. distributed.py decides what a
run is given; this is what a sharded model needs from tune while it trains and when it is saved."""

from __future__ import annotations

from pathlib import Path


def shard_on_cpu() -> None:
    """FSDP over gloo. accelerate turns its FSDP plugin on for accelerators only: on a CPU its state keeps
    MULTI_CPU and drops the plugin, and every Trainer would silently wrap the model in DDP (a full copy
    each). torch's fully_shard runs on CPU tensors, so as soon as a Trainer has built its Accelerator, a
    plugin made from the same fsdp_config is put in, as accelerate does on a GPU; the rest of the Trainer's
    set-up (no move of a model whose new head rank 0 broadcasts later, the optimizer made before wrapping,
    TRL's reference handling) then follows the FSDP path. Patched in this worker process only."""
    from transformers import Trainer

    original = Trainer.create_accelerator_and_postprocess
    if getattr(original, "tune_shards_on_cpu", False):
        return

    def create(self) -> None:
        original(self)
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            from accelerate.state import PartialState
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            plugin, state = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args), self.accelerator.state
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.fsdp_plugin, state.distributed_type = plugin, DistributedType.FSDP
            # Each new AcceleratorState() copies the type from the PartialState: set it there too (as on a GPU).
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

    create.tune_shards_on_cpu = True
    Trainer.create_accelerator_and_postprocess = create


def save_adapter(trainer, folder: Path, main: bool, **kwargs) -> None:
    """Rank 0 (`main`) writes the adapter. FSDP and ZeRO-3 hold it in shards: every process first takes part in
    gathering it (a collective), as Trainer.save_model does."""
    state = None
    if trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2:
        state = gathered_adapter(trainer.model)
    elif trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        if trainer.is_fsdp_enabled:
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if main:
        trainer.model.save_pretrained(folder, safe_serialization=True, state_dict=state, **kwargs)


def gathered_adapter(model) -> dict:
    """FSDP2: the adapter's tensors (PEFT names them after the adapter, `...lora_A.default.weight`) in full,
    each all-gathered from its shards in the same order on every process; the base's shards stay where they
    are (accelerate's get_state_dict would gather the whole base onto every process first). When an adapter
    targets embed_tokens or lm_head, PEFT also saves those whole layers (save_embedding_layers="auto"), so
    they are gathered too."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES
    from torch.distributed.tensor import DTensor

    names = tuple(model.peft_config)
    targets = " ".join(str(config.target_modules) for config in model.peft_config.values())
    embeddings = tuple(f"{layer}." for layer in EMBEDDING_LAYER_NAMES if layer in targets)
    state = {}
    for key, value in model.state_dict().items():
        if any(f".{name}." in key or key.endswith(f".{name}") for name in names) or any(e in key for e in embeddings):
            state[key] = (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu().clone()
    return state
