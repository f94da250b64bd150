"""Attention for packed rows on the CPU: each document of a packed row attends only to itself, so instead
of one SDPA call over the whole row with a block-diagonal mask (which the CPU runs as the plain masked
path, over every pair of positions in the row), each document gets its own causal SDPA call, which the
CPU runs with its flash kernel over that document alone.

Measured on SmolLM2-135M, one packed row of 1024 tokens (5 documents), forward + backward on 2 cores:
3.52 -> 2.71 s under bf16 autocast (-23%), 5.34 -> 4.10 s in float32 (-23%); outputs equal to the masked
path within 3.4e-5 on values up to 53 in float32. Everything that is not a packed training row
(padded batches, generation with a KV cache) goes to transformers' own SDPA path with its mask."""

from __future__ import annotations

NAME = "tune_packed_sdpa"


def packed_attention_name() -> str:
    """Register the implementation (once) and return the name `attn_implementation` takes."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets, for every call passed through
    return NAME


def document_bounds(position_ids) -> list[int] | None:
    """Where the documents of one packed row start (and the row ends): wherever the position does not
    follow on from the one before, as transformers detects packing. None when the row holds one document."""
    row = position_ids[0]
    starts = ((row[1:] - row[:-1]) != 1).nonzero().flatten() + 1
    if len(starts) == 0:
        return None
    return [0, *starts.tolist(), row.shape[0]]


def packed_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    bounds = None
    local = kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None  # masks it must keep
    if position_ids is not None and not local and query.shape[0] == 1 and query.shape[2] == key.shape[2] == position_ids.shape[-1]:
        bounds = document_bounds(position_ids)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key/value head serves `groups` heads
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    pieces = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], dropout_p=dropout, is_causal=True,
        scale=scaling) for start, end in zip(bounds, bounds[1:])]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None
