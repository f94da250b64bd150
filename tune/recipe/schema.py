"""The recipe schema: pydantic models that map 1:1 to the YAML sections. Every field has a one-line
description (it feeds `tune schema` and docs/recipes.md); unknown keys are errors.

Nothing heavy is imported here: `tune validate` must stay fast.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tune.recipe.rewards import GRPOSection, RewardSection
from tune.recipe.rules import method_problem
from tune.recipe.section import Section, did_you_mean


class ModelSection(Section):
    name: str = Field(description="Hub id (org/name), local folder, .gguf file, or a short name: tiny-llama (`tune init-tiny`), smollm2-135m-instruct, minilm (`tune models list`).")
    gguf_file: str | None = Field(None, description="A .gguf file inside the model.name folder or hub repo; GGUF bases are converted once into a Hugging Face folder in TUNE_HOME.")
    revision: str | None = Field(None, description="Hub branch, tag or commit to pin; ignored for local folders.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight and compute dtype; auto = bfloat16 on a GPU that supports it, else float32.")
    quantization: Literal["none", "nf4", "fp4", "int8"] = Field(
        "none", description="Quantize the frozen base: nf4/fp4 = 4-bit QLoRA, int8 = 8-bit (needs bitsandbytes).")
    double_quant: bool = Field(True, description="4-bit only: also quantize the quantization constants (~0.4 bit/param saved).")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with a hub model; leave off unless you trust its authors.")
    allow_pickle: bool = Field(False, description="Allow loading .bin (pickle) weights when a model has no safetensors; pickles can run code.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto = what transformers picks (SDPA where it can).")
    adapter: str | None = Field(None, description="dpo: a `tune run` output dir (e.g. an SFT run) whose adapter training continues; that model is the reference.")


FORMAT_FIELDS = {
    # Field names a format reads from each row, before `data.columns` renames them.
    "instruction": ("instruction", "input", "output", "prompt", "completion", "system"),
    "chat": ("messages", "role", "content"),
    "completion": ("text",),
    "classification": ("text", "text_pair", "label"),
    "preference": ("prompt", "chosen", "rejected", "system"),
    "prompt": ("prompt", "system"),  # every other column goes to the reward functions by name
    "unpaired": ("prompt", "completion", "label", "system"),
}


class WeightedSource(Section):
    path: str = Field(description="File, glob, folder, saved dataset folder, or hub dataset id.")
    weight: float = Field(1.0, gt=0, le=100, description="Rows drawn per row of the source: 2 = every row twice, 0.5 = a seeded half.")
    split: str | None = Field(None, description="Split of this hub dataset or saved DatasetDict (e.g. test for data.eval); default data.split.")
    revision: str | None = Field(None, description="Hub branch, tag or commit of this source; default data.revision.")


SourceList = str | list[str | WeightedSource]


class AugmentSection(Section):
    rewordings: int = Field(4, ge=0, le=32, description="Rewordings of each question kept per row (held-out ones included); 0 = none.")
    statements: int = Field(2, ge=0, le=16, description="The answer as plain statements per row, trained as text: the answer itself, then model-written restatements; 0 = none.")
    passages: int = Field(0, ge=0, le=16, description="Passages each row's statements are also trained in, as plain text: beside about three other rows' statements, in an order never the same; 0 = none.")
    reverse: int = Field(0, ge=0, le=8, description="Questions asked the other way round per row (the answer's name -> what the question was about); 0 = none.")
    heldout: float = Field(0.25, ge=0.0, le=0.5, description="Share of each row's rewordings never trained on: the run's own unseen-wording check (printed, and what train.keep: best selects by).")
    heldout_pick: Literal["farthest", "random"] = Field("farthest", description="Which rewordings are held out: farthest = those sharing the fewest words with the question (people reword that far; the check reads closer to them), random = any.")
    samples: int = Field(12, ge=1, le=64, description="Candidates sampled per row and kind; the filters keep the usable ones.")
    from_answer: int = Field(6, ge=0, le=64, description="More rewording candidates per row, asked from the answer alone (in the answer's words as well as the question's), through the same filters; 0 = none.")
    swaps: int = Field(0, ge=0, le=8, description="Rewordings per row made by trading one word of the question for a word near it in the generator's embeddings (staff -> personnel), kept when the question reads as well and still asks for its answer; trained, never held out; 0 = none.")
    frames: int = Field(0, ge=0, le=8, description="Rewordings per row made by asking the question in the other frames people use for it ('How much does X cost?' -> 'What do you charge for X?', 'Can I X?' -> 'Is it possible to X?'; English), kept when they read as well and still ask for the answer; trained, never held out; 0 = none.")
    subject: bool = Field(False, description="Every trained question (the FAQ's and its rewordings, swaps and frames; not reverse ones) that names nothing of what the FAQ is about (the name at least half the answers share: 'Are you open on Saturdays?') also trained naming it ('Is Veldmark Animal Clinic open on Saturdays?'), the most fluent of a few forms; never held out.")
    round_trip: float | None = Field(0.5, ge=0.0, le=10.0, description="Keep a rewording or reverse question only when the generator finds the row's answer after it at most this many nats per token less likely than after the row's own question (it asks the same thing); the likeliest are kept first; null = off.")
    model: str | None = Field(None, description="The generator: any model name tune resolves (folder, hub id, GGUF, packaged); default the base being tuned.")
    rows: str | None = Field(None, description="A file `tune data augment` wrote, after your review (rows cut, fixed or added; `heldout: true` marks the unseen-wording check): trained as it stands, nothing generated; null = generate.")
    temperature: float = Field(1.0, gt=0, le=2.0, description="Sampling temperature of the generator.")
    top_p: float = Field(0.95, gt=0, le=1.0, description="Nucleus sampling mass of the generator.")
    max_new_tokens: int = Field(48, ge=8, le=512, description="Longest candidate in tokens.")


class DataSection(Section):
    train: SourceList = Field(description="Training data: files (JSONL, JSON, CSV, Parquet, TXT), globs, folders, saved datasets or hub ids; a list may give {path, weight, split, revision}.")
    eval: SourceList | None = Field(None, description="Held-out data in the same format as train; omit to use eval_fraction.")
    eval_fraction: float = Field(0.0, ge=0.0, le=0.5, description="Share of train rows held out for eval when `eval` is not given (fixed seed).")
    allow_eval_overlap: bool = Field(False, description="Let data.eval be mostly train rows (e.g. to read the trained pairs' margins); otherwise an eval of which half or more of the rows are train rows is refused.")
    split: str = Field("train", description="Split to read from a hub dataset or a saved DatasetDict, for train and eval alike; a {path, split} entry names its own.")
    revision: str | None = Field(None, description="Hub dataset branch, tag or commit to pin.")
    format: Literal["instruction", "chat", "completion", "classification", "preference", "prompt", "unpaired"] = Field(
        "instruction", description="Row shape: instruction = {instruction, input?, output} or {prompt, completion}; chat = messages/conversations; completion = raw text; classification = {text, text_pair?, label}; preference = {prompt, chosen, rejected}; prompt = {prompt, system?, ...columns for the rewards}; unpaired = {prompt, completion, label: true|false}.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map from the format's field names to your file's column names, e.g. {output: answer}.")
    template: str = Field(
        "auto", description="Prompt template: auto (the model's chat template, else alpaca), model, alpaca, chatml, or a .jinja file.")
    system_prompt: str | None = Field(None, description="System message put before every example (a row's own system message wins).")
    max_length: int = Field(1024, ge=16, le=1_048_576, description="Longest example in tokens, prompt plus response (block size for completion).")
    overlength: Literal["truncate", "drop", "error"] = Field(
        "truncate", description="What to do with an example longer than max_length; the count is reported either way.")
    train_on: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant", description="Tokens that carry loss: assistant = every reply and its end token; last_assistant = the final reply only; all = every token.")
    packing: bool = Field(
        False, description="Pack several examples into each row of max_length (padding-free, own position ids, no attention across examples); batch_size then counts rows.")
    group_by_length: bool = Field(
        False, description="SFT without packing, DPO and classification: batch examples (pairs) of similar length together so less padding is computed.")
    labels: list[str | int] | None = Field(
        None, min_length=2, description="classification: the label names in id order; default = every label in the train split, sorted (numbers numerically).")
    drop_bad_pairs: bool = Field(False, description="preference: skip (and count) rows whose chosen equals rejected or has an empty side, instead of stopping.")
    replay: float = Field(0.0, ge=0.0, le=4.0, description="sft: base-model answers mixed in per training row to keep general skills (0.5 = one per two rows); generated greedily from data.replay_prompts before training.")
    replay_loss: Literal["tokens", "distribution"] = Field("tokens", description="sft (data.replay): tokens = replay answers train as labels; distribution = toward the base model's whole next-token distribution at each answer token (KL, adapter off), which keeps more of what the model knew.")
    replay_prompts: str = Field("general", description="sft (data.replay) and grpo (grpo.replay): prompts the base model answers for replay: general (bundled everyday prompts) or a file of instruction/prompt rows.")
    probes: list[str] = Field(default_factory=list, description="sft/grpo: files of {question, expected} answered greedily before and after training; the run prints and saves (probes.md) a before/after table and the share whose answer contains the expected text as whole words or a whole number (under 100 also spelled out).")
    probe_max_new_tokens: int = Field(48, ge=1, le=1024, description="sft/grpo: longest probe answer in tokens.")
    augment: AugmentSection | None = Field(None, description="sft on instruction or chat rows: each question reworded, its answer restated (and optionally asked in reverse) by a model before training; rows in augment.jsonl, `tune data augment` writes them for review.")

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if self.eval is not None and self.eval_fraction > 0:
            raise ValueError("give either `eval` or `eval_fraction`, not both")
        known = FORMAT_FIELDS[self.format]
        for field in self.columns:
            if field not in known:
                hint = did_you_mean(field, known)
                raise ValueError(f"columns: '{field}' is not a field of format '{self.format}'{hint} "
                                 f"(fields: {', '.join(known)})")
        return self


class AdapterSection(Section):
    method: Literal["lora", "dora", "rslora"] = Field(
        "lora", description="lora; dora = weight-decomposed LoRA (better at low rank, slower); rslora = alpha/sqrt(r) scaling.")
    r: int = Field(16, ge=1, le=4096, description="LoRA rank: higher learns more and costs more memory.")
    alpha: float | None = Field(None, gt=0, description="LoRA scaling numerator; default 2 x r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Layers that get adapters: all-linear (every linear layer but the output head) or a list of names.")
    target_router: bool = Field(False, description="MoE bases: all-linear also adapts the router that picks each token's experts (off: routing stays as pretrained).")
    modules_to_save: list[str] = Field(default_factory=list, description="Layers trained fully and saved with the adapter (e.g. embed_tokens when adding tokens).")
    init: Literal["default", "gaussian", "orthogonal", "pissa", "olora", "eva", "corda"] = Field(
        "default", description="How the adapter starts: default (B = 0, the adapter starts as a no-op), gaussian, orthogonal; pissa / olora start from the base's principal directions (saved as a plain LoRA of twice the rank); eva from the training rows' activations (sft); corda from the base's directions weighed by what its activations use (sft; see corda_method).")
    corda_method: Literal["kpm", "ipm"] = Field("kpm", description="init: corda: kpm (knowledge-preserving) trains the directions the general prompts (data.replay_prompts) use least, leaving what the model knows; ipm (instruction-previewed) starts from the directions the training rows use most.")
    lora_plus_ratio: float | None = Field(None, ge=1, description="LoRA+: the B matrices learn this many times faster than A (the paper uses 16); none = one learning rate.")
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="Per-layer ranks: a layer name or regex (matched at the end of the name, e.g. 'mlp.down_proj' or 'layers.0.self_attn.q_proj') to its rank.")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="Per-layer alphas, named like rank_pattern.")
    layers: list[int] | None = Field(None, description="Which transformer blocks get adapters (their indices, from 0); none = all.")

    @model_validator(mode="after")
    def _default_alpha(self) -> AdapterSection:
        if self.alpha is None:  # resolved here, once: the saved recipe.yaml and every method see the number
            self.alpha = 2 * self.r
        return self

    @field_validator("rank_pattern")
    @classmethod
    def _positive_ranks(cls, ranks: dict[str, int]) -> dict[str, int]:
        for name, rank in ranks.items():
            if rank < 1:
                raise ValueError(f"'{name}': a rank is at least 1, not {rank}")
        return ranks

    @field_validator("layers")
    @classmethod
    def _layer_indices(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (not layers or min(layers) < 0):
            raise ValueError("name at least one block, by its index from 0 (or leave layers out for all)")
        return layers


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL 1.16's DPOConfig


class TrainSection(Section):
    method: Literal["sft", "classify", "dpo", "orpo", "kto", "reward", "grpo"] = Field(
        "sft", description="sft = supervised fine-tuning; classify = sequence classification head + adapter; dpo/orpo (pairs) and kto (unpaired rows) = preference alignment; reward = a reward model from pairs; grpo = optimize reward functions on sampled completions.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run; overrides epochs when set.")
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(1.0, description="Passes over the training data (used when max_steps is not set); auto (sft) = as many as train each of your rows about 16 times, its generated rewordings and statements counted (16 passes without data.augment, about 4 with its defaults).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate of the adapter weights.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming the learning rate up from 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the adapter weights.")
    batch_size: int = Field(4, ge=1, description="Examples per device per forward pass.")
    gradient_accumulation: int = Field(1, ge=1, description="Forward passes summed per optimizer step (effective batch = batch_size x this).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: much less memory, ~30% slower.")
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "adafactor"] = Field(
        "auto", description="auto = paged 8-bit AdamW for a quantized base on a GPU, else torch AdamW.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip gradients to this norm; 0 disables clipping.")
    seed: int = Field(42, description="Seed for weight init, data order and dropout.")
    logging_steps: int = Field(10, ge=1, description="Log loss and learning rate every this many steps.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every this many steps (default: at the end only).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Trackers to log to besides metrics.jsonl (each needs its package installed).")
    save_steps: int = Field(250, ge=1, description="Write a resumable checkpoint every this many steps (and at the last step).")
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints kept on disk; older ones are deleted.")
    keep: Literal["final", "best"] = Field("final", description="sft: best = at every eval_steps answer the unseen wordings (held-out rewordings, probe sets the base mostly fails) and the probe sets it mostly knows, and keep the adapter with the best unseen-wording accuracy whose kept share stays at or above min_kept_share; the final adapter, when it misses the bar, also competes scaled toward the base (x0.85, 0.75, 0.65, 0.55 until one keeps the bar, then the step toward the one above halved twice).")
    min_kept_share: float = Field(0.85, ge=0.0, le=1.0, description="sft with keep: best: the least share of the base's right probe answers an adapter must keep to be chosen.")
    stop_after: int | None = Field(None, ge=1, description="sft with keep: best: stop once this many evaluations in a row fall under min_kept_share.")
    eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks (names, or task YAML files relative to the recipe) scored after training on the kept adapter and on the base beside it, written to eval/lm-eval.json; needs tune-peft[eval]. Not for classify or reward.")
    eval_tasks_limit: float | None = Field(None, gt=0, description="eval_tasks: at most this many examples per task (a number below 1 is a share); none = all.")
    kept_by: Literal["probes", "tasks"] = Field("probes", description="What the guard's kept share counts (sft keep: best, grpo): the base's right probe answers still right, or the base's right eval_tasks items still right (scored at every evaluation, eval_tasks_limit items per task).")
    use_liger_kernel: bool | Literal["auto"] = Field("auto", description="GPU: Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused cross-entropy; `pip install liger-kernel`); auto = on for SFT on a CUDA GPU when installed.")
    neftune_alpha: float | None = Field(None, gt=0, description="sft: NEFTune, uniform noise of this scale on the input embeddings while training (the paper uses 5); none = off.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile: slow first steps, faster after (mostly on a GPU).")
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none", description="classify: loss weight per label; balanced = n_rows / (n_labels x rows of the label), or a {label: weight} mapping.")
    beta: float = Field(0.1, gt=0, description="dpo/kto/orpo: how far the policy may move from the reference; higher = stays closer (IPO's tau).")
    loss_type: str | list[str] = Field("sigmoid", description="dpo: TRL preference loss (sigmoid = DPO, ipo, hinge, robust, ...); a list sums several with equal weights.")


class OutputSection(Section):
    dir: str | None = Field(None, description="Where the adapter and run records go; default runs/<recipe file name>.")
    overwrite: bool = Field(False, description="Allow writing into a non-empty output dir (its old files are replaced).")


class DistributedSection(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="Used when several processes run (`tune run --nproc N`, torchrun, accelerate launch): ddp = a full copy per device; fsdp = weights, gradients and optimizer state sharded; deepspeed = ZeRO.")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="Collective backend; auto = nccl on GPUs, gloo on the CPU.")
    find_unused_parameters: bool = Field(False, description="ddp: tolerate trainable weights that get no gradient in a step (slower; LoRA on all-linear never needs it).")
    fsdp_sharding: Literal["full_shard", "shard_grad_op"] = Field(
        "full_shard", description="fsdp: full_shard = weights re-sharded after forward (least memory, like ZeRO-3); shard_grad_op = kept whole until backward ends (faster, like ZeRO-2).")
    fsdp_offload: bool = Field(False, description="fsdp: keep sharded weights, gradients and optimizer state in CPU RAM between uses (fits larger models, much slower).")
    fsdp_cpu_ram_efficient_loading: bool = Field(True, description="fsdp: asks accelerate to read the checkpoint on the first process only and send the others their shards (one copy in CPU RAM, not N); on the CPU with transformers 5.25 every process was measured reading it anyway.")
    fsdp_version: Literal[1, 2] = Field(2, description="fsdp: 2 = per-parameter sharding (fully_shard, the default of transformers 5); 1 = the legacy FlatParameter wrapper.")
    zero_stage: Literal[1, 2, 3] = Field(3, description="deepspeed: ZeRO stage; 1 shards optimizer state, 2 also gradients, 3 also weights.")
    zero_offload: Literal["none", "optimizer", "all"] = Field("none", description="deepspeed: move optimizer state (and with all, weights too; stage 3) to CPU RAM.")
    deepspeed_config: str | None = Field(None, description="deepspeed: a DeepSpeed JSON config used instead of zero_stage/zero_offload; its \"auto\" values are filled from the recipe.")

    @model_validator(mode="after")
    def _check(self) -> DistributedSection:
        # A changed key of another strategy is almost always a forgotten `strategy:` line; say so instead of
        # ignoring it. Defaults pass, so a resolved recipe.yaml (every key written out) loads as it is.
        changed = [name for name, field in type(self).model_fields.items() if getattr(self, name) != field.default]
        for name in changed:
            owner = "fsdp" if name.startswith("fsdp_") else "deepspeed" if name.startswith(("zero_", "deepspeed_")) else None
            if owner and owner != self.strategy:
                raise ValueError(f"distributed.{name}: applies to strategy: {owner}, not {self.strategy}")
        if self.deepspeed_config is not None and {"zero_stage", "zero_offload"} & set(changed):
            raise ValueError("distributed.deepspeed_config: give either a config file or zero_stage/zero_offload, not both")
        if self.zero_offload == "all" and self.zero_stage != 3:
            raise ValueError("distributed.zero_offload: all (weights too) needs zero_stage: 3")
        return self


class Recipe(Section):
    model: ModelSection = Field(description="The foundation model and how it is loaded.")
    data: DataSection = Field(description="Training data, its format and how it is rendered and tokenized.")
    adapter: AdapterSection = Field(default_factory=AdapterSection, description="The parameter-efficient adapter.")
    train: TrainSection = Field(default_factory=TrainSection, description="The optimization loop.")
    output: OutputSection = Field(default_factory=OutputSection, description="Where results are written.")
    distributed: DistributedSection = Field(default_factory=DistributedSection, description="Several processes (GPUs) on one recipe: how the work is split; see the Multi-GPU section.")
    reward: RewardSection | None = Field(None, description="grpo: what is optimized: reward functions and/or a reward model.")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="grpo: group size, sampling, loss, and the guard that keeps the best checkpoint before the model forgets.")

    @model_validator(mode="after")
    def _check_method(self) -> Recipe:
        # Keys that only make sense together; each message leads with the key to fix (see load._describe).
        losses = self.train.loss_type
        for name in ([losses] if isinstance(losses, str) else losses) or ["(empty list)"]:
            if name not in DPO_LOSSES:  # TRL itself only rejects a bad name when the loss is first computed
                raise ValueError(f"train.loss_type: '{name}' is not a DPO loss{did_you_mean(name, DPO_LOSSES)} "
                                 f"(one of {', '.join(DPO_LOSSES)})")
        problem = method_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _check_distributed(self) -> Recipe:
        strategy = self.distributed.strategy
        if strategy == "fsdp" and self.model.quantization == "int8":
            raise ValueError("model.quantization: FSDP shards 4-bit bases (nf4/fp4, stored in the compute dtype), "
                             "not int8; use nf4, or distributed.strategy: ddp")
        if strategy == "fsdp" and self.train.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            # PEFT's FSDP guide: bitsandbytes' 8-bit optimizer states fail when an FSDP checkpoint is saved.
            raise ValueError(f"train.optimizer: {self.train.optimizer} cannot be checkpointed under FSDP; use adamw_torch "
                             "(or auto): FSDP already shards its states across the devices")
        if strategy != "ddp" and self.train.eval_tasks:
            raise ValueError(f"train.eval_tasks: the tasks are scored on rank 0 alone, which {strategy}'s sharded "
                             "weights cannot do; score them with `tune eval RUN --tasks ...` afterwards")
        if strategy != "ddp" and self.data.probes:
            raise ValueError(f"data.probes: the tuned model answers probes on rank 0 alone, which {strategy}'s sharded "
                             "weights cannot do; probe with ddp, or run `tune eval` on the adapter afterwards")
        return self

