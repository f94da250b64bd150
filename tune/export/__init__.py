"""The deploy stage: merge an adapter into its base (in memory or shard by shard), export it as a clean
PEFT adapter, a merged checkpoint or a GGUF file, prove each result against base+adapter, and describe
it in a model card. `tune.export.pipeline` is the entry the CLI calls; nothing here imports the CLI."""
