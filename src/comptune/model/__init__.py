"""Target models: the bundled Llama-style LM and loading of any HF causal LM."""

from transformers import AutoConfig, AutoModelForCausalLM

from .modeling_comptune import ComptuneLMConfig, ComptuneLMForCausalLM

AutoConfig.register(ComptuneLMConfig.model_type, ComptuneLMConfig, exist_ok=True)
AutoModelForCausalLM.register(ComptuneLMConfig, ComptuneLMForCausalLM, exist_ok=True)

__all__ = ["ComptuneLMConfig", "ComptuneLMForCausalLM"]
