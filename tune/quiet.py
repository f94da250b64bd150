"""Keeping the terminal for the lines users read."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence progress bars and advice meant for library developers; our own lines report progress."""
    import logging
    import os
    import warnings

    # Progress bars drawn with bare tqdm (transformers' GGUF loader) read this when tqdm is first imported.
    os.environ.setdefault("TQDM_DISABLE", "1")

    # bitsandbytes logs at import time (CPU kernel advice), so its logger is set before anything imports it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)\.")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
