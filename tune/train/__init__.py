"""Training: the shared skeleton (run.py) and one short module per `train.method` (methods.py maps
the names)."""
