"""Per-document attention for packed rows equals the masked SDPA path, forward and backward, and leaves
everything that is not a packed row (padded batches, generation with a KV cache) to SDPA itself."""

import torch
from transformers import AutoModelForCausalLM

from tune.models.attention import document_bounds, packed_attention_name


def test_document_bounds_follow_position_resets():
    assert document_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [0, 3, 5, 9]
    assert document_bounds(torch.tensor([[0, 1, 2, 3]])) is None
    assert document_bounds(torch.tensor([[7]])) is None  # one new token during generation


def test_packed_rows_match_the_masked_path_and_generation_is_unchanged(tiny_model, monkeypatch):
    from tune.models import attention

    found = []
    monkeypatch.setattr(attention, "document_bounds", lambda ids, real=attention.document_bounds: found.append(
        real(ids)) or found[-1])
    torch.manual_seed(0)
    masked = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    packed = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                                  attn_implementation=packed_attention_name())
    vocab = masked.config.vocab_size
    ids = torch.randint(5, vocab, (1, 60))
    positions = torch.cat([torch.arange(n) for n in (17, 25, 18)]).unsqueeze(0)
    outputs = []
    for model in (masked, packed):
        model.zero_grad()
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits.float().logsumexp(-1).sum().backward()
        outputs.append((logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert [0, 17, 42, 60] in found  # the packed row took the per-document path, in every layer
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-5, rtol=0)
    assert torch.allclose(outputs[0][1], outputs[1][1], atol=1e-5, rtol=1e-4)
    prompt = torch.randint(5, vocab, (2, 12))
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0  # left padding, as batched generation uses
    with torch.no_grad():
        generated = [m.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                pad_token_id=0) for m in (masked, packed)]
    assert torch.equal(generated[0], generated[1])


def test_layers_with_a_sliding_window_keep_the_masked_path(monkeypatch):
    from tune.models import attention

    seen = []
    monkeypatch.setattr("transformers.integrations.sdpa_attention.sdpa_attention_forward",
                        lambda *args, **kwargs: seen.append(kwargs) or ("masked", None))
    query = torch.zeros(1, 2, 6, 4)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    module = torch.nn.Module()
    assert attention.packed_sdpa(module, query, query, query, None, position_ids=positions,
                                 sliding_window=4)[0] == "masked"
    assert seen and seen[0]["sliding_window"] == 4  # a local layer's window lives in the mask it was given
