"""Models: a name resolved to a local folder once per command (resolve.py), GGUF conversion (gguf.py),
loading base, tokenizer and adapter config (load.py), classifiers, run dirs read back, the tiny model."""
