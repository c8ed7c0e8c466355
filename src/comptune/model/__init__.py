"""Target models: the bundled Llama-style LM and loading of any HF causal LM."""

from .._lazy import lazy_exports

__all__ = ["ComptuneLMConfig", "ComptuneLMForCausalLM"]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "ComptuneLMConfig": ".loading",
    "ComptuneLMForCausalLM": ".loading",
})
