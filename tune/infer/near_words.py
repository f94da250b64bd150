"""What the generator itself says of words and texts, for swap rewordings (tune/data/swaps.py): which words
its input embeddings place nearest a word, and how likely it finds a text."""

from __future__ import annotations

NEIGHBOURS = 8  # near words tried per word; most good swaps of the FAQs measured were among the first five


def word_neighbours(model, tokenizer, count: int = NEIGHBOURS):
    """near(words) -> {word: up to `count` whole words nearest it by the cosine of the input embeddings},
    leaving out forms of the word itself (its first five letters, or one inside the other). Only words the
    tokenizer writes as one token (with a leading space) have neighbours; the rest get none."""
    import torch

    built: dict = {}

    def table():  # built on the first call: a run without swaps never pays for it (262k rows for Gemma 3)
        if not built:
            weight = model.get_input_embeddings().weight.detach()
            pieces = tokenizer.convert_ids_to_tokens(list(range(min(weight.shape[0], len(tokenizer)))))
            spaced = [(i, piece[1:]) for i, piece in enumerate(pieces) if piece and piece[0] in "Ġ▁"
                      and piece[1:].isalpha() and piece[1:].islower() and len(piece) > 4]
            built["words"] = [w for _, w in spaced]
            built["rows"] = torch.nn.functional.normalize(weight[torch.tensor([i for i, _ in spaced])].float(), dim=-1)
            built["row_of"] = {w: n for n, w in enumerate(built["words"])}
        return built["words"], built["rows"], built["row_of"]

    def near(asked: list[str]) -> dict[str, list[str]]:
        words, rows, row_of = table()
        found = {}
        for word in asked:
            row = row_of.get(word)
            if row is None:
                continue
            sims = rows @ rows[row]
            sims[row] = -2.0
            out = []
            for n in sims.topk(min(5 * count, len(words))).indices.tolist():
                other = words[n]
                if other[:5] == word[:5] or other in word or word in other:
                    continue
                out.append(other)
                if len(out) == count:
                    break
            found[word] = out
        return found

    return near


def text_fluency(model, tokenizer):
    """fluency(texts) -> the mean log-probability per token of each text after "Question:" (plain text, so
    any model reads it the same way)."""
    from tune.infer.generate import answer_logprobs

    prefix = tokenizer("Question:", add_special_tokens=False)["input_ids"]

    def fluency(texts: list[str]) -> list[float]:
        examples = []
        for text in texts:
            ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            examples.append({"input_ids": prefix + ids, "labels": [-100] * len(prefix) + ids})
        return answer_logprobs(model, tokenizer, examples)

    return fluency
