"""tune: parameter-efficient fine-tuning from one YAML recipe."""

from tune.quiet import keep_kernels_local

__version__ = "0.1.0"

# Before anything below tune imports bitsandbytes or transformers: no kernel comes from a hub unasked.
keep_kernels_local()
