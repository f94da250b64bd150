"""Proof that a merged model is the adapter's model: the same probe prompts go through base+adapter (PEFT,
unmerged, float32) and through the result, and the largest absolute logit difference must stay within
what rounding the weights to the result's dtype can explain. The reference is the 16/32-bit base even for
a QLoRA adapter, because that is the base the merge uses.

The tolerance alone cannot see a merge that did nothing when the adapter moves logits by less than the
tolerance (a 16-bit result of a light adapter): the plain base is then within it too. So the result must
also be CLOSER times nearer to base+adapter than to the base alone, whenever the adapter's effect stands
clear of the rounding noise the result shows."""

from __future__ import annotations

from dataclasses import dataclass

from tune.errors import TuneError

PROBES = ("What is the capital of France?", "Translate the colour into French: red",
          "Write one sentence about the sea.")

# Allowed max |logit difference| as a share of the largest reference logit (at least 1.0), per dtype of
# the stored weights. float32 only reorders float32 sums; the 16-bit ones round every weight once
# (bfloat16 keeps 8 bits of mantissa, float16 11), which moves logits by about that relative amount.
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
# How much nearer base+adapter than the base a result must be. The noise is the smaller of its two distances
# (a right merge is off base+adapter by rounding only, an empty one off the base); with an effect of at least
# (CLOSER + 1) x noise a right merge always passes, as |result - base| >= effect - |result - base+adapter|,
# and an empty one always fails. Below that the two cannot be told apart from logits, and the line says so.
CLOSER = 4


class VerificationError(TuneError):
    """The result does not reproduce base+adapter; the export is removed."""

    exit_code = 3


@dataclass
class Reference:
    probes: list  # token id lists
    adapted: list  # base+adapter logits per probe (float32 tensors)
    base: list  # the base's logits per probe (adapter switched off)
    base_effect: float  # max |adapter logits - base logits|: how much the adapter changes the model


@dataclass
class Verification:
    what: str
    max_diff: float
    tolerance: float
    base_effect: float
    from_base: float  # max |result logits - base logits|

    @property
    def measurable(self) -> bool:
        """The adapter's effect stands clear of the rounding noise this result shows."""
        return self.base_effect > 0 and self.base_effect >= (CLOSER + 1) * min(self.max_diff, self.from_base)

    @property
    def nearer_adapter(self) -> bool:
        return not self.measurable or self.from_base >= CLOSER * self.max_diff

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance and self.nearer_adapter

    def line(self) -> str:
        # A failed nearness check means the result sits by the base: it is >= CLOSER x nearer the base.
        verdict = "OK" if self.ok else "FAILED" if self.nearer_adapter else \
            "FAILED: it is nearer the base than base+adapter, as if the adapter were not merged"
        nearer = (f"the result must be {CLOSER}x nearer base+adapter than the base" if self.measurable else
                  f"within {CLOSER + 1}x of the rounding noise, so a merge that did nothing could pass unseen")
        return (f"verify {self.what}: max |logit diff| vs base+adapter {self.max_diff:.2e}, vs the base "
                f"{self.from_base:.2e} (tolerance {self.tolerance:.1e}; the adapter itself moves logits by up to "
                f"{self.base_effect:.2e}; {nearer}) {verdict}")

    def as_dict(self) -> dict:
        return {"what": self.what, "max_abs_logit_diff": self.max_diff, "tolerance": self.tolerance,
                "adapter_effect": self.base_effect, "max_abs_logit_diff_vs_base": self.from_base,
                "adapter_measurable": self.measurable, "ok": self.ok}


def probe_texts(tokenizer) -> list[str]:
    """The probes as the model sees them at inference: rendered with the run's chat template."""
    if not tokenizer.chat_template:
        return list(PROBES)
    return [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True) for text in PROBES]


def probe_ids(tokenizer) -> list[list[int]]:
    # A rendered template carries its own special tokens; plain text gets the tokenizer's (e.g. BOS).
    special = not tokenizer.chat_template
    return [list(tokenizer(text, add_special_tokens=special)["input_ids"]) for text in probe_texts(tokenizer)]


def reference(run) -> Reference:
    """Logits of base+adapter on the probes, and the base's alone (the adapter switched off)."""
    import torch
    from transformers import AutoTokenizer

    from tune.export.merge import load_peft

    tokenizer = AutoTokenizer.from_pretrained(run.path)
    probes = probe_ids(tokenizer)
    model = load_peft(run, torch.float32)
    adapted, bases, effect = [], [], 0.0
    with torch.no_grad():
        for ids in probes:
            batch = torch.tensor([ids])
            logits = model(batch).logits[0].float()
            with model.disable_adapter():
                base = model(batch).logits[0].float()
            adapted.append(logits)
            bases.append(base)
            effect = max(effect, (logits - base).abs().max().item())
    del model
    return Reference(probes, adapted, bases, effect)


def compare(what: str, logits: list, ref: Reference, dtype_name: str, tolerance: float | None = None) -> Verification:
    scale = max(1.0, max(r.abs().max().item() for r in ref.adapted))
    diff = max((got.float() - want).abs().max().item() for got, want in zip(logits, ref.adapted))
    from_base = max((got.float() - base).abs().max().item() for got, base in zip(logits, ref.base))
    return Verification(what, diff, tolerance if tolerance is not None else TOLERANCE[dtype_name] * scale,
                        ref.base_effect, from_base)


def merged_logits(model_dir, probes: list) -> list:
    """The merged checkpoint's logits, its stored weights computed in float32 (so the check measures
    the weights, not the precision of a CPU's 16-bit matmuls)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    architectures = AutoConfig.from_pretrained(model_dir).architectures or []
    auto = AutoModelForSequenceClassification if any(a.endswith("ForSequenceClassification") for a in architectures) \
        else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        logits = [model(torch.tensor([ids])).logits[0].float() for ids in probes]
    del model
    return logits


def verify_merged(model_dir, ref: Reference, dtype_name: str) -> Verification:
    return compare("merged", merged_logits(model_dir, ref.probes), ref, dtype_name)


# llama.cpp computes with the file's weights (f16, or q8_0 with 8-bit quantized activations), so its
# logits drift further than a float32 forward over the same weights: allowed share of the largest logit.
GGUF_TOLERANCE = {"f16": 2e-2, "bf16": 5e-2, "q8_0": 1e-1}


def gguf_check(path, ref: Reference, quant: str) -> Verification | None:
    """The GGUF's logits from llama.cpp on the same probe ids; None when llama-cpp-python is absent."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import torch

    longest = max(len(ids) for ids in ref.probes)
    model = Llama(model_path=str(path), n_ctx=max(64, longest), logits_all=True, verbose=False, n_threads=2)
    logits = []
    for ids in ref.probes:
        model.reset()
        model.eval(ids)
        logits.append(torch.tensor(model.scores[: len(ids)]).float())
    model.close()
    scale = max(1.0, max(r.abs().max().item() for r in ref.adapted))
    return compare(f"gguf {quant} (llama.cpp)", logits, ref, quant, GGUF_TOLERANCE[quant] * scale)


# What the file must reproduce when transformers dequantizes it and runs it in float32: the direction of every
# position's logits (per quant: f16 rounds each weight once; q8_0 stores 32-value blocks as int8 x scale, and
# SmolLM2-135M's 30 layers give a worst position of 0.986), and the argmax nearly everywhere (ties in a random
# tiny model may flip under rounding).
GGUF_COSINE = {"f16": 0.999, "bf16": 0.995, "q8_0": 0.98}
GGUF_TOP1 = 0.9


@dataclass
class GgufLogits:
    min_cosine: float
    cosine_bar: float
    top1_agreement: float
    tokens_equal: int  # probe texts the file's own tokenizer encodes exactly as the run's tokenizer does
    probes: int

    @property
    def ok(self) -> bool:
        return self.min_cosine >= self.cosine_bar and self.top1_agreement >= GGUF_TOP1 and self.tokens_equal == self.probes

    def line(self) -> str:
        return (f"verify gguf (transformers' GGUF loader): min cosine {self.min_cosine:.6f} (>= {self.cosine_bar}), "
                f"top-1 agreement {self.top1_agreement:.2f} (>= {GGUF_TOP1}) vs base+adapter; its tokenizer "
                f"encodes {self.tokens_equal}/{self.probes} probes as the run's does "
                + ("OK" if self.ok else "FAILED"))

    def as_dict(self) -> dict:
        return {"what": "gguf (transformers)", "min_cosine": self.min_cosine, "top1_agreement": self.top1_agreement,
                "tokenizer_probes_equal": f"{self.tokens_equal}/{self.probes}", "ok": self.ok}


def gguf_transformers_check(path, ref: Reference, tokenizer, config_dir, quant: str = "f16") -> GgufLogits | str:
    """The GGUF read back by transformers (weights dequantized, llama.cpp's tensor layout undone) against
    base+adapter on the probe ids, and its tokenizer on the probe texts; a reason string when transformers
    cannot read this architecture."""
    import contextlib
    import io

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tune.quiet import quiet_libraries

    quiet_libraries()
    try:
        # The merged config, not the one transformers derives from the file: its GGUF reader maps only some
        # keys and assumes the rest (qwen3 head_dim 128, qwen3_moe expert width 768). The file's own
        # hyper-parameters are compared with the merged config by the read-back instead.
        config = AutoConfig.from_pretrained(config_dir)
        with contextlib.redirect_stderr(io.StringIO()):  # its bare tqdm bar ignores quiet_libraries once imported
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                         dtype=torch.float32).eval()
            loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError, TypeError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    cosines, agree, positions = [], 0, 0
    with torch.no_grad():
        for ids, want in zip(ref.probes, ref.adapted):
            got = model(torch.tensor([ids])).logits[0].float()[:, : want.shape[-1]]
            want = want[:, : got.shape[-1]]  # a converter may drop padded embedding rows
            cosines.append(torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item())
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            positions += len(ids)
    del model
    texts = probe_texts(tokenizer)
    equal = sum(loaded(text)["input_ids"] == tokenizer(text)["input_ids"] for text in texts)
    return GgufLogits(min(cosines), GGUF_COSINE[quant], agree / positions, equal, len(texts))
