"""The comptune target model: a small Llama-style causal LM (nanoGPT-style, one readable file).

Module names match the reference study's 67M "Pile 4L" model so decompositions and component
keys read the same: `h.{i}.attn.{q,k,v,o}_proj`, `h.{i}.mlp.{c_fc,down_proj}`, `h.{i}.rms_{1,2}`,
`ln_f`, `wte`, tied `lm_head`. RMSNorm (fp32), rotate-half RoPE, non-gated tanh-GELU MLP, no biases.

This file imports only torch and transformers, so `save_pretrained` can copy it beside the
weights and the model loads with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
on a machine without comptune.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutput


class ComptuneLMConfig(PretrainedConfig):
    model_type = "comptune_lm"

    def __init__(
        self,
        vocab_size: int = 8192,
        n_layer: int = 4,
        d_model: int = 128,
        n_head: int = 4,
        d_mlp: int = 512,
        n_kv_head: int | None = None,
        n_ctx: int = 256,
        rope_base: float = 10000.0,
        rms_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"n_head={n_head} must be a multiple of n_kv_head={n_kv_head} (grouped-query attention)")
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.d_model = d_model
        self.n_head = n_head
        self.d_mlp = d_mlp
        self.n_kv_head = n_kv_head  # key/value heads; fewer than n_head = grouped-query attention
        self.n_ctx = n_ctx
        self.rope_base = rope_base
        self.rms_eps = rms_eps
        self.initializer_range = initializer_range
        kwargs.setdefault("use_cache", False)  # no KV cache: generation recomputes the prefix
        # PreTrainedConfig is declared as a dataclass without this field, but it accepts extra kwargs at runtime
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)  # type: ignore[call-arg]

    # names transformers/peft look up generically
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def num_key_value_heads(self) -> int:
        return self.n_kv_head

    @property
    def max_position_embeddings(self) -> int:
        return self.n_ctx


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in fp32 as in the reference model
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_cos_sin(T: int, d_head: int, base: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head))
    t = torch.arange(T, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, d_head/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, d_head), rotate-half layout
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ComptuneLMConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head
        self.d_head = cfg.d_model // cfg.n_head
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * self.d_head, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * self.d_head, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, dh)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)  # (B, Hkv, T, dh)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv_head != self.n_head:  # grouped-query: KV head j serves query heads j·r … j·r + r − 1
            r = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)  # (B, H, T, dh)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: ComptuneLMConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ComptuneLMConfig):
        super().__init__()
        self.rms_1 = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.rms_2 = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask):
        x = x + self.attn(self.rms_1(x), cos, sin, attn_mask)
        return x + self.mlp(self.rms_2(x))


class ComptuneLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ComptuneLMConfig
    base_model_prefix = "comptune_lm"
    _tied_weights_keys = {"lm_head.weight": "wte.weight"}
    _supports_sdpa = True

    def __init__(self, config: ComptuneLMConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = RMSNorm(config.d_model, config.rms_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:  # type: ignore[override]  # transformers types it nn.Module
        self.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        B, T = input_ids.shape  # (B, T)
        if T > self.config.n_ctx:
            raise ValueError(f"sequence length {T} exceeds the model's context n_ctx={self.config.n_ctx}")
        x = self.wte(input_ids)  # (B, T, D)
        cos, sin = rope_cos_sin(T, self.config.d_model // self.config.n_head, self.config.rope_base, x.device, x.dtype)
        attn_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # causal AND key-is-not-padding, (B, 1, T, T); a fully masked row would give NaN, so
            # every query may always see itself
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            attn_mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
            attn_mask = attn_mask | torch.eye(T, dtype=torch.bool, device=x.device)[None, None]
        for block in self.h:
            x = block(x, cos, sin, attn_mask)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # no KV cache: always feed the whole (context-truncated) sequence
        input_ids = input_ids[:, -self.config.n_ctx :]
        if attention_mask is not None:
            attention_mask = attention_mask[:, -self.config.n_ctx :]
        return {"input_ids": input_ids, "attention_mask": attention_mask}


ComptuneLMConfig.register_for_auto_class()
ComptuneLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
