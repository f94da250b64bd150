"""Using a model: generation, greedy answers cached for the base, loss/perplexity and classification
reports on a file. Used by the CLI (generate, chat, eval, predict) and by training (probes, replay)."""
