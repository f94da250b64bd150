"""The adapter variants that need the built trainer: EVA's data-driven start, the snapshot PiSSA and OLoRA
are converted against at save time, LoRA+'s optimizer, and the check that rank_pattern, alpha_pattern and
layers named layers that exist. Every method calls `prepare` from skeleton.attach and `conversion` from
skeleton.save; with the default adapter both do nothing."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

from tune.errors import TuneError

CONVERTED = ("pissa", "olora", "corda")  # start from the base's own directions, so they rewrite the base they train on
CALIBRATION_ROWS = 256  # CorDA's covariance: PEFT's guide estimates hidden size / tokens per row x 128 rows


def prepare(run, trainer) -> None:
    adapter = run.recipe.adapter
    adapted = _adapted_layers(trainer.model)
    _check_names(adapter, adapted, trainer.model.config)
    _say_coverage(run, trainer.model)
    if adapter.init == "eva":
        _eva(run, trainer)
    if adapter.init in CONVERTED and run.main:
        _snapshot_start(run, trainer.model)
    if adapter.lora_plus_ratio:
        trainer.optimizer = _lora_plus_optimizer(trainer, adapter.lora_plus_ratio)


def calibrate(run, model, config, tokenizer, train_rows: list[dict]):
    """CorDA (arXiv 2406.05223) needs, before the adapter is attached, the covariance of each adapted layer's
    inputs on calibration rows: kpm takes the general prompts (data.replay_prompts) so that the adapter
    trains the directions they use least and what the model knows is left alone; ipm takes the training rows
    so that it starts from the directions they use most. Returns the config to attach with (all-linear spelt
    out: CorDA's hooks match layer names, not the shorthand); every other init gets its config back as it is."""
    if run.recipe.adapter.init != "corda":
        return config
    import torch
    from peft.tuners.lora.corda import preprocess_corda
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    config = _maybe_include_all_linear_layers(config, model)

    from tune.data.replay import prompt_file, read_prompts

    method = run.recipe.adapter.corda_method
    if method == "kpm":
        prompts = read_prompts(prompt_file(run.recipe.data.replay_prompts, run.recipe_dir))[:CALIBRATION_ROWS]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True) for prompt in prompts]
        rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    else:
        rows = [row["input_ids"] for row in train_rows[:CALIBRATION_ROWS]]

    def run_model():
        with torch.no_grad():
            for ids in rows:
                model(input_ids=torch.tensor([ids], device=model.device))

    run.echo(f"adapter: CorDA ({method}) calibration on {len(rows)} "
             + ("general prompts" if method == "kpm" else "training rows"))
    preprocess_corda(model, config, run_model=run_model)
    return config


def describe(recipe) -> str:
    """The variants in use, for the model line: 'init pissa, LoRA+ x16, 2 rank patterns, blocks 0-3, NEFTune 5'."""
    adapter = recipe.adapter
    said = [f"init {adapter.init}"] if adapter.init != "default" else []
    said += [f"LoRA+ x{adapter.lora_plus_ratio:g}"] if adapter.lora_plus_ratio else []
    said += [f"{len(adapter.rank_pattern)} rank pattern(s)"] if adapter.rank_pattern else []
    said += [f"{len(adapter.alpha_pattern)} alpha pattern(s)"] if adapter.alpha_pattern else []
    said += [f"blocks {', '.join(map(str, adapter.layers))}"] if adapter.layers else []
    said += [f"NEFTune {recipe.train.neftune_alpha:g}"] if recipe.train.neftune_alpha else []
    return ", ".join(said)


@contextlib.contextmanager
def conversion(run, model):
    """The save_pretrained keywords that turn a PiSSA/OLoRA adapter, which only works on the base it rewrote,
    into a plain LoRA of twice the rank on the original base (PEFT's conversion): what merge, export,
    `PeftModel.from_pretrained` and vLLM expect. The starting adapter is written to a scratch folder beside
    the output for PEFT to read, and removed after."""
    if run.initial_adapter is None:
        yield {}
        return
    import copy

    from safetensors.torch import save_file

    scratch = Path(tempfile.mkdtemp(prefix=".initial-adapter-", dir=run.out_dir))
    folder = scratch / "initial"  # PEFT loads it as an adapter named after the folder: no dots
    try:
        config = copy.deepcopy(model.peft_config["default"])
        config.init_lora_weights = True  # loading it must not decompose the base a second time
        config.corda_config = None  # nor calibrate it again
        config.save_pretrained(str(folder))
        save_file(run.initial_adapter, str(folder / "adapter_model.safetensors"))
        yield {"path_initial_model_for_weight_conversion": str(folder)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _adapted_layers(model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [name.removeprefix("base_model.model.") for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def _check_names(adapter, adapted: list[str], config) -> None:
    """PEFT ignores a rank_pattern or alpha_pattern key that matches nothing, and a layer index past the
    model's end: the run would train something other than what the recipe says, so both stop it here."""
    example = adapted[0] if adapted else "none"
    for key, patterns in (("rank_pattern", adapter.rank_pattern), ("alpha_pattern", adapter.alpha_pattern)):
        for pattern in patterns:
            if not any(re.match(rf"(.*\.)?({pattern})$", name) for name in adapted):
                raise TuneError(f"adapter.{key}: '{pattern}' matches none of the adapted layers (named like "
                                f"{example}); use the end of such a name, or a regex matching it")
    if adapter.layers:
        count = getattr(config, "num_hidden_layers", None)
        past = [i for i in adapter.layers if count is not None and i >= count]
        if past:
            raise TuneError(f"adapter.layers: {past[0]} is past the model's last block ({count} blocks, numbered "
                            f"0 to {count - 1})")


def _say_coverage(run, model) -> None:
    """On an MoE base, what the adapter reaches, by kind: the experts and the router are a choice there."""
    from tune.models.targets import coverage, coverage_phrase

    counts = coverage(model)
    if "experts" in counts:
        run.echo(f"adapter: covers {coverage_phrase(counts, 'router' in counts)}")


def _snapshot_start(run, model) -> None:
    """The adapter as initialized, before any step (a resumed run redoes the same seeded decomposition before
    its checkpoint is loaded, so the snapshot always matches the base in memory)."""
    from peft.utils import get_peft_model_state_dict

    run.initial_adapter = {key: value.detach().to("cpu", copy=True).contiguous()
                           for key, value in get_peft_model_state_dict(model, adapter_name="default").items()}


def _eva(run, trainer) -> None:
    """EVA (arXiv 2410.07170): each adapter's A starts as the top right-singular vectors of the activations
    its layer sees on the training rows, and ranks move to the layers whose activations need them."""
    import contextlib

    import torch
    from peft import initialize_lora_eva_weights
    from peft.tuners.lora.eva import prepare_layer_inputs_fn_language_modeling

    def layer_inputs(layer_input, model_input, layer_name):  # the SVD runs in float32, whatever the base
        return prepare_layer_inputs_fn_language_modeling(layer_input, model_input, layer_name).float()

    def forward(model, inputs):
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if run.precision == "bf16-autocast"
                    else contextlib.nullcontext())
        with autocast:
            return model(**inputs)

    run.echo("adapter: EVA initialization from the training rows' activations")
    initialize_lora_eva_weights(trainer.model, dataloader=trainer.get_train_dataloader(), forward_fn=forward,
                                prepare_layer_inputs_fn=layer_inputs, show_progress_bar=False)


def _lora_plus_optimizer(trainer, ratio: float):
    """LoRA+ (arXiv 2402.12354) through PEFT's optimizer builder, on the optimizer class and settings the
    recipe's train.optimizer resolved to; the Trainer builds its schedule on it and saves and resumes it."""
    from peft.optimizers import create_loraplus_optimizer

    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    kwargs = dict(kwargs)
    return create_loraplus_optimizer(trainer.model, optimizer_cls, lr=kwargs.pop("lr"), loraplus_lr_ratio=ratio,
                                     loraplus_weight_decay=trainer.args.weight_decay, **kwargs)
