"""The output layer scored only where the loss looks, with its gradient taken in the same pass.

TRL 1.16 already replaces the full `(batch, length, vocabulary)` logits with a tiled log-prob kernel
(`trl.trainer.utils.add_fused_lm_head`), but off Triton devices it scores every position, prompt tokens
included, in float32 tiles of 4096 tokens x 32k vocabulary entries, and recomputes each tile in the
backward pass. On a CPU with SmolLM2's 49k vocabulary that is most of a step's extra memory and a large
share of its time. `compact_lm_head` swaps in a head that:
- projects only the positions whose next token carries loss (the prompt share of SFT rows, DPO prompts);
- works through them a bounded number of tokens at a time, each over the whole vocabulary, so no tile
  exceeds `TILE_BYTES` whatever the vocabulary;
- takes d log p / d hidden while the tile is in hand (softmax and one-hot against the head weight), so the
  backward pass is one multiply instead of a second projection.
The loss is the same, token for token (tests/train/test_lm_head.py checks it against full logits).

It needs the head weight frozen (LoRA leaves it so; a trained head keeps TRL's kernel) and applies to
the log-probs with their gradient; entropy, mean logit and top-1 come without one, as TRL uses them
(metrics only in SFT, DPO and KTO)."""

from __future__ import annotations

import types

# float32 logits and probabilities of one tile, together. SmolLM2 (49k vocabulary): 170 positions a tile;
# 256 MiB tiles were no faster and peaked about 90 MiB higher (bench/README.md).
TILE_BYTES = 64 * 2**20


def tile_tokens(vocab_size: int) -> int:
    """How many positions one tile scores: two float32 (tokens x vocabulary) buffers within TILE_BYTES."""
    return max(16, TILE_BYTES // (vocab_size * 4 * 2))


def supports(model) -> bool:
    """Whether the compact head computes what the model's own head would: a frozen linear head, no
    logit scaling or soft-capping (those models keep TRL's kernel)."""
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    scaled = any(getattr(config, key, None) not in (None, 1.0) for key in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return head is not None and not head.weight.requires_grad and not scaled


def install(trainer, on_gpu: bool, sharded: bool) -> str:
    """Put the compact head under a built TRL trainer where it applies; returns the line saying which
    head computes the loss. On a GPU TRL's Triton kernel already skips ignored positions (and TRL 1.16
    refuses Liger's fused linear cross-entropy, keeping its own); sharded heads are DTensors."""
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if on_gpu:
        return "loss: TRL's fused LM head (Triton tiles over the positions that carry loss)"
    if sharded or not supports(model):
        return "loss: TRL's fused LM head (tiles over every position)"
    compact_lm_head(model)
    return (f"loss: only the positions that carry loss reach the output layer, {tile_tokens(model.config.vocab_size)} "
            "at a time, gradient taken in the same pass")


def compact_lm_head(model) -> None:
    """Replace the `fused_lm_head=True` forward TRL patched onto `model` (the base under PEFT) with the
    compact one; calls without `fused_lm_head` still reach the original forward (generation, eval)."""
    fused = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or kwargs.get("output_router_logits"):
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch, **kwargs)
        from trl.trainer.utils import FusedCausalLMOutput

        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        mask = labels != -100
        head = self.get_output_embeddings()
        per_token = CompactLogProb.apply(hidden[mask], head.weight, head.bias, labels[mask])
        log_probs, entropy, mean_logits, is_top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                                   mean_logits=mean_logits, is_top1=is_top1.bool(), label_mask=mask)

    model.forward = types.MethodType(forward, model)


def _autocast_dtype(tensor):
    import torch

    kind = tensor.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else tensor.dtype


def _make_function():
    import torch

    class CompactLogProb(torch.autograd.Function):
        """Per-position log p(target), entropy, mean logit and top-1 of `hidden @ weight.T (+ bias)`.

        hidden [N, H] holds only the positions that carry loss; weight [V, H] is frozen."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets):
            dtype = _autocast_dtype(hidden)
            weight = weight.to(dtype)  # once per call, not once per tile
            bias = None if bias is None else bias.to(dtype)
            count, vocab = hidden.shape[0], weight.shape[0]
            wants_grad = ctx.needs_input_grad[0]
            log_probs, entropy, mean_logits = (hidden.new_empty(count, dtype=torch.float32) for _ in range(3))
            is_top1 = torch.empty(count, dtype=torch.bool, device=hidden.device)
            grad_hidden = hidden.new_empty(hidden.shape, dtype=torch.float32) if wants_grad else None
            step = tile_tokens(vocab)
            for start in range(0, count, step):
                end = min(start + step, count)
                target = targets[start:end]
                logits = hidden[start:end].to(dtype) @ weight.t()
                if bias is not None:
                    logits += bias
                logits = logits.float()
                log_z = torch.logsumexp(logits, dim=-1)
                mean_logits[start:end] = logits.mean(dim=-1)
                is_top1[start:end] = logits.argmax(dim=-1) == target  # argmax takes the first of equal maxima, as TRL
                log_p = logits.sub_(log_z.unsqueeze(-1))  # in place: the tile's one float32 buffer
                log_probs[start:end] = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
                probs = log_p.exp()
                entropy[start:end] = -(probs.unsqueeze(1) @ log_p.unsqueeze(2)).view(-1)
                if wants_grad:  # d log p(target) / d hidden = weight[target] - probs @ weight
                    grad_hidden[start:end] = weight[target].float() - (probs.to(dtype) @ weight).float()
            ctx.save_for_backward(grad_hidden)
            ctx.hidden_dtype = hidden.dtype
            ctx.mark_non_differentiable(entropy, mean_logits, is_top1)
            return log_probs, entropy, mean_logits, is_top1

        @staticmethod
        def backward(ctx, grad_log_probs, *_):
            (grad_hidden,) = ctx.saved_tensors
            return (grad_log_probs.unsqueeze(-1) * grad_hidden).to(ctx.hidden_dtype), None, None, None

    return CompactLogProb


class _Lazy:
    """torch is imported on first use, so importing this module stays cheap."""

    function = None

    def apply(self, *args):
        if _Lazy.function is None:
            _Lazy.function = _make_function()
        return _Lazy.function.apply(*args)


CompactLogProb = _Lazy()
