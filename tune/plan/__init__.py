"""`tune plan`: a recipe's peak GPU memory estimated from the model config (memory.py), split across
processes as the distributed section says (sharding.py)."""
