"""The PyTorch reference: Garg et al.'s ICL model (Hugging Face GPT-2 backbone between two plain linear layers).

    tokens x_1, y_1, x_2, … (y_i in coordinate 0 of a width-d token, as jaxicl's ``interleaved`` layout)
    h = GPT2Model(inputs_embeds = read_in(tokens)),  ŷ_i = read_out(h)[2i]   (the x_i token)

``read_in`` / ``read_out`` keep PyTorch's default init for a linear layer (kernel and bias U(±1/√fan_in));
the backbone keeps Hugging Face's GPT-2 init. ``port_weights`` copies a jaxicl ``gpt2`` parameter tree into
it, so both implementations can be checked to compute the same function (tests/test_reference.py).
Needs the optional ``[bench]`` extra (torch, transformers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import GPT2Config, GPT2Model


class Reference(torch.nn.Module):
  """read_in -> GPT-2 (no dropout) -> read_out; ``forward(xs [B, N, d], ys [B, N]) -> preds [B, N]``."""

  def __init__(self, d: int, n_points: int, width: int, n_layers: int, n_heads: int, mlp_ratio: int = 4):
    super().__init__()
    self.d = d
    conf = GPT2Config(n_positions=2 * n_points, n_embd=width, n_layer=n_layers, n_head=n_heads,
                      n_inner=mlp_ratio * width, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    self.read_in = torch.nn.Linear(d, width)
    self.backbone = GPT2Model(conf)
    self.read_out = torch.nn.Linear(width, 1)

  def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    y_tokens = torch.nn.functional.pad(ys[..., None], (0, self.d - 1))
    tokens = torch.stack([xs, y_tokens], dim=2).flatten(1, 2)  # [B, 2N, d]
    h = self.backbone(inputs_embeds=self.read_in(tokens)).last_hidden_state
    return self.read_out(h)[:, ::2, 0]


def fan_in_qk_(model: Reference, generator: torch.Generator) -> None:
  """Redraws every block's query and key kernels (the first 2E columns of HF's ``c_attn``) from N(0, 1/E):
  jaxicl's ``qk_init="fan_in"``; values, biases and everything else keep Hugging Face's init."""
  with torch.no_grad():
    for block in model.backbone.h:
      w = block.attn.c_attn.weight  # [E, 3E], y = x @ W + b; columns: query, key, value
      width = w.shape[0]
      w[:, :2 * width] = torch.randn(width, 2 * width, generator=generator) / width ** 0.5


def port_weights(params: Any, model: Reference, n_layers: int) -> None:
  """Copies a jaxicl ``gpt2`` parameter tree (interleaved layout, with MLP) into ``model`` in place."""
  t = lambda a: torch.tensor(np.asarray(a, np.float32))
  sd = {"read_in.weight": t(params["read_in"]["kernel"]).T, "read_in.bias": t(params["read_in"]["bias"]),
        "read_out.weight": t(params["read_out"]["kernel"]).T, "read_out.bias": t(params["read_out"]["bias"]),
        "backbone.ln_f.weight": t(params["ln_f"]["scale"]), "backbone.ln_f.bias": t(params["ln_f"]["bias"])}
  n_pos = model.backbone.wpe.weight.shape[0]
  sd["backbone.wpe.weight"] = t(params["pos_embed"])[:n_pos]
  for layer in range(n_layers):
    block, pre = params[f"block_{layer}"], f"backbone.h.{layer}."
    attn = block["attn"]
    width = attn["out"]["bias"].shape[0]
    qkv_w = [t(attn[k]["kernel"]).reshape(width, width) for k in ("query", "key", "value")]  # [E, H·K]
    qkv_b = [t(attn[k]["bias"]).reshape(width) for k in ("query", "key", "value")]
    sd[pre + "attn.c_attn.weight"] = torch.cat(qkv_w, dim=1)  # HF Conv1D: y = x @ W + b
    sd[pre + "attn.c_attn.bias"] = torch.cat(qkv_b)
    sd[pre + "attn.c_proj.weight"] = t(attn["out"]["kernel"]).reshape(width, width)
    sd[pre + "attn.c_proj.bias"] = t(attn["out"]["bias"])
    for ln in ("ln_1", "ln_2"):
      sd[pre + f"{ln}.weight"] = t(block[ln]["scale"])
      sd[pre + f"{ln}.bias"] = t(block[ln]["bias"])
    sd[pre + "mlp.c_fc.weight"] = t(block["mlp"]["fc"]["kernel"])
    sd[pre + "mlp.c_fc.bias"] = t(block["mlp"]["fc"]["bias"])
    sd[pre + "mlp.c_proj.weight"] = t(block["mlp"]["proj"]["kernel"])
    sd[pre + "mlp.c_proj.bias"] = t(block["mlp"]["proj"]["bias"])
  missing, unexpected = model.load_state_dict(sd, strict=False)
  left = [k for k in missing if not k.endswith(("wte.weight", "attn.bias", "attn.masked_bias"))]
  if left or unexpected:
    raise ValueError(f"port_weights: missing {left}, unexpected {unexpected}")


def sample_prompts(generator: torch.Generator, batch: int, n_points: int, d: int, n_dims: int | None = None,
                   sparsity: int | None = None, w_var: float = 1.0, noise_std: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """Regression prompts y = wᵀx + σε, x ~ N(0, I_d), ε ~ N(0, 1). -> xs [B, N, d], ys [B, N], w [B, d].

  w ~ N(0, w_var·I_d), or with ``sparsity`` s: s coordinates drawn uniformly (without replacement) get
  N(0, w_var) entries, the rest 0. ``n_dims`` (Garg et al.'s dims curriculum): coordinates >= n_dims of x are 0
  and a sparse support is drawn among the first n_dims (so w stays s-sparse)."""
  n_dims = d if n_dims is None else n_dims
  xs = torch.randn(batch, n_points, d, generator=generator)
  xs[..., n_dims:] = 0
  w = torch.randn(batch, d, generator=generator) * w_var ** 0.5
  w[:, n_dims:] = 0
  if sparsity is not None:
    scores = torch.rand(batch, d, generator=generator)
    scores[:, n_dims:] = 2.0  # never among the s smallest
    support = scores.argsort(dim=1)[:, :sparsity]
    w = torch.zeros_like(w).scatter_(1, support, w.gather(1, support))
  ys = (xs @ w[..., None])[..., 0]
  if noise_std:
    ys = ys + noise_std * torch.randn(batch, n_points, generator=generator)
  return xs, ys, w
