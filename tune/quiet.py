"""What libraries do on their own when imported: kept off the network and off the terminal."""

from __future__ import annotations

import os

# Kernels that libraries fetch from a hub by themselves, with no switch of their own: bitsandbytes asks
# for a CPU 4-bit GEMM whenever it is imported on an AVX512-BF16 CPU, transformers for a GGUF kernel
# when it keeps GGUF weights packed. Both fall back to their built-in code when the fetch fails.
HUB_KERNELS_FETCHED_UNASKED = ("kernels-community/quantization-bitsandbytes", "ggml-org/ggml-quantization")


def keep_kernels_local() -> None:
    """No kernel is downloaded (or looked up in the hub cache) unless the user set USE_HUB_KERNELS=1.

    Runs when `tune` is imported, before anything can import bitsandbytes. USE_HUB_KERNELS is
    transformers' switch for the kernels it maps itself; for the two callers above, LOCAL_KERNELS (the
    `kernels` package's per-repository override) points their repository at a path holding no build, so
    `kernels` fails locally before any resolver reaches the hub and the library uses its own code.
    """
    if os.environ.get("USE_HUB_KERNELS", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return
    os.environ["USE_HUB_KERNELS"] = "0"
    entries = [e for e in os.environ.get("LOCAL_KERNELS", "").split(":") if e]
    mapped = {e.split("=", 1)[0] for e in entries}
    entries += [f"{repo}={os.devnull}" for repo in HUB_KERNELS_FETCHED_UNASKED if repo not in mapped]
    os.environ["LOCAL_KERNELS"] = ":".join(entries)
    import logging

    # bitsandbytes logs its fallback ("Failed to load CPU gemm_4bit_forward ...") at import time: advice
    # for a kernel the user did not ask for.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Silence progress bars and advice meant for library developers; our own lines report progress."""
    import logging
    import warnings

    # Progress bars drawn with bare tqdm (transformers' GGUF loader) read this when tqdm is first imported.
    os.environ.setdefault("TQDM_DISABLE", "1")

    # Set here too for a USE_HUB_KERNELS=1 user: the hub kernel's own advice is not for them either.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)\.")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # PEFT's advice for its own adapter variants, which tune already follows: PiSSA/OLoRA adapters are
    # saved converted to plain LoRA, EVA gets its default settings and a model that is already built.
    for advice in (r".*(PiSSA|OLoRA|CorDA) changes the base weights.*", r".*`eva_config` is not specified.*",
                   r".*eva initialization used with low_cpu_mem_usage.*"):
        warnings.filterwarnings("ignore", message=advice, category=UserWarning)
