"""Sampling several continuations per prompt runs each prompt through the model once and repeats its cache
(tune/infer/generate.py shared_prompt_cache): greedy continuations must then be the plain call's, token for
token, with left padding, on Llama and on Gemma 3's sliding-window layers."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

from tune.infer.phases import continue_in_phases, shared_prompt_cache
from tune.infer.sampling import sample_batch

PROMPTS = ["the cat sat on the mat and then", "a"]  # different lengths: the short one is left-padded


def continuations(model, tokenizer, samples: int, shared: bool) -> list[list[int]]:
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    extra = {}
    if shared:
        key, cache = shared_prompt_cache(model, batch, samples)
        extra = {key: cache}
        width = batch["input_ids"].shape[1]
        assert cache.get_seq_length() == width - 1  # all but the last prompt token, which generate feeds
    repeated = {name: tensor.repeat_interleave(samples, 0) for name, tensor in batch.items()}
    with torch.no_grad():
        output = model.generate(**repeated, **extra, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                pad_token_id=tokenizer.pad_token_id)
    if shared:  # generate continued the given cache rather than building its own
        assert cache.get_seq_length() == width + 11
    return output[:, batch["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def tiny(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token  # as tune's load_tokenizer sets it
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), tokenizer


def test_the_shared_prompt_cache_continues_as_the_plain_call(tiny):
    model, tokenizer = tiny
    assert continuations(model, tokenizer, 3, shared=True) == continuations(model, tokenizer, 3, shared=False)


def test_the_shared_prompt_cache_covers_sliding_window_layers(tiny):
    _, tokenizer = tiny
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=0)
    model = Gemma3ForCausalLM(config).eval()
    assert continuations(model, tokenizer, 2, shared=True) == continuations(model, tokenizer, 2, shared=False)


def test_seeded_samples_repeat_and_differ_between_samples(tiny):
    model, tokenizer = tiny
    first = sample_batch(model, tokenizer, PROMPTS, 4, 10, 1.0, 1.0, seed=3)
    assert first == sample_batch(model, tokenizer, PROMPTS, 4, 10, 1.0, 1.0, seed=3)
    assert [len(texts) for texts in first] == [4, 4]
    assert len(set(first[0])) > 1  # a random tiny model at temperature 1: the samples are not one copy


def test_sequences_leave_the_batch_when_their_line_ends_and_the_rest_write_on(tiny_model, monkeypatch):
    """Greedy, so the phased calls must write what one call writes: the first sequence ends early (its third
    token made the end token), the others run the whole length through three phases of the cache."""
    from tune.infer import phases

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        free = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    stop = free[0, width + 2].item()
    assert stop not in free[1, width:].tolist()
    tokenizer.add_special_tokens({"eos_token": tokenizer.convert_ids_to_tokens(stop)})  # an existing id, now skipped
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.eos_token_id == stop
    with torch.no_grad():
        plain = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=stop, eos_token_id=stop,
                               stop_strings=["\n"], tokenizer=tokenizer)
    expected = [text.strip().split("\n")[0] for text in tokenizer.batch_decode(plain[:, width:], skip_special_tokens=True)]
    monkeypatch.setattr(phases, "PHASES", (4, 3))
    key, cache = shared_prompt_cache(model, batch, 1)
    written = continue_in_phases(model, tokenizer, dict(batch), key, cache, 12, {"do_sample": False}, ["\n"])
    lines = [text.strip().split("\n")[0] for text in tokenizer.batch_decode(written, skip_special_tokens=True)]
    assert lines == expected
    assert len(tokenizer(lines[0], add_special_tokens=False)["input_ids"]) < len(tokenizer(lines[1], add_special_tokens=False)["input_ids"])


def test_batched_answers_come_back_in_order_as_one_prompt_at_a_time(tiny):
    """generate_batch sorts prompts by length and drops ended answers from the batch; each answer must still
    be the one plain generate gives that prompt alone, at its place in the list."""
    from tune.infer.generate import generate_batch, inference

    model, tokenizer = tiny
    questions = ["the cat sat on the mat and then the dog", "a", "the dog ran", "where is the cat today", "b c"]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    alone = []
    for conversation in conversations:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with inference(model, tokenizer):  # the precision generate_batch runs in (bf16 autocast where native)
            out = model.generate(**ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        row = out[0, ids["input_ids"].shape[1]:].tolist()
        finished = tokenizer.eos_token_id in row
        alone.append((tokenizer.decode(row[:row.index(tokenizer.eos_token_id)] if finished else row,
                                       skip_special_tokens=True).strip(), finished))
    assert generate_batch(model, tokenizer, conversations, 20, batch_size=2) == alone
    assert len(set(alone)) == len(alone)


def test_a_model_with_a_cache_of_its_own_gets_one_plain_generate_call(tiny, monkeypatch):
    """transformers' own rule (_supports_default_dynamic_cache) says which models keep a cache tune cannot
    share or cut (xlnet, rwkv, ...): those get one generate call, and the same continuations."""
    from tune.infer.phases import decode

    model, tokenizer = tiny
    tokenizer.padding_side = "left"
    batch = dict(tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False))
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(k.get("max_new_tokens")) or generate(*a, **k))
    with torch.no_grad():
        phased = decode(model, tokenizer, batch, 2, 30, {"do_sample": False})
        assert calls == [16, 8, 6]
        monkeypatch.setattr(type(model), "_supports_default_dynamic_cache", classmethod(lambda cls: False))
        calls.clear()
        plain = decode(model, tokenizer, batch, 2, 30, {"do_sample": False})
    assert calls == [30]
    assert tokenizer.batch_decode(plain, skip_special_tokens=True) == tokenizer.batch_decode(phased, skip_special_tokens=True)
