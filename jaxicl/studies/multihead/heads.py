"""Per-head kernel-smoother parameters of a trained one-layer model (``softmax_icl`` / ``linear_icl``).

Shape legend: h heads, K = p/h head width, p embedding dimension, d input dimension, B prompts, D context.

With read-in E = W_in ∈ R^{(d+1)×p} (or the fixed zero padding [I_{d+1} 0] when ``read_in=False``), split into
its x rows E_x ∈ R^{d×p} and its y row E_y ∈ R^p, a token z_i = [x_i; y_i] embeds to e_i = E_xᵀx_i + E_yᵀy_i
and the query [x; 0] to E_xᵀx. Head k (query/key/value kernels Q_k, K_k, V_k ∈ R^{p×K}, output rows
o_k = W_out[kK:(k+1)K] ∈ R^K, logit scale s) then computes exactly

    ŷ = Σ_k Σ_i a_ki (c_k y_i + u_kᵀx_i),      a_ki = softmax_i(x_iᵀA_k x + y_i b_kᵀx)

with
    A_k = s (E_x K_k)(E_x Q_k)ᵀ  ∈ R^{d×d}      (the effective kernel; theory: A_k = w_k I),
    b_k = s (E_x Q_k)(K_kᵀE_y)   ∈ R^d          (label-dependent logit; theory: 0),
    c_k = E_yᵀ V_k o_k           ∈ R            (output weight of the label),
    u_k = E_x V_k o_k            ∈ R^d          (value read from x_i; theory: 0 without a prior mean),

(for ``linear_icl`` a_ki = logit_ki / D instead of the softmax). The kernel scale of head k is
w_k = tr(A_k)/d, and its anisotropy ||A_k − w_k I||_F / ||A_k||_F says how far A_k is from w_k I.
Theory (shared/theory.md): unbiasedness needs Σ_k c_k w_k = 1; the multi-head optimum is a zero-sum pair,
Σ_k c_k = 0 with w_1 = −w_2 → 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxicl.models import ModelConfig


class HeadParams(NamedTuple):
  """Effective kernel-smoother parameters of every head (see the module docstring); numpy float64."""

  A: np.ndarray  # [h, d, d] kernel matrices: logit_ki = x_iᵀ A_k x (+ y_i b_kᵀ x)
  b: np.ndarray  # [h, d]   label-dependent logit
  c: np.ndarray  # [h]      label output weights
  u: np.ndarray  # [h, d]   x-value output weights

  @property
  def w(self) -> np.ndarray:
    """Kernel scales w_k = tr(A_k)/d, [h]."""
    return np.trace(self.A, axis1=1, axis2=2) / self.A.shape[-1]

  @property
  def anisotropy(self) -> np.ndarray:
    """||A_k − w_k I||_F / ||A_k||_F, [h] (0 for A_k = w_k I; 0 for a zero head)."""
    eye = np.eye(self.A.shape[-1])
    num = np.linalg.norm(self.A - self.w[:, None, None] * eye, axis=(1, 2))
    den = np.linalg.norm(self.A, axis=(1, 2))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def logit_scale(model_cfg: ModelConfig) -> float:
  """s: ``attn_scale`` or the default 1/√(p/h) of ``jaxicl.models``."""
  return model_cfg.logit_scale(0)


def read_in_matrix(params: Any, d: int, model_cfg: ModelConfig) -> np.ndarray:
  """E ∈ R^{(d+1)×p}: the learned ``W_in`` kernel, or the zero padding [I_{d+1} 0] when ``read_in=False``."""
  if model_cfg.read_in:
    return np.asarray(params["W_in"]["kernel"], np.float64)
  return np.eye(d + 1, model_cfg.embed_dim)


def extract_heads(params: Any, d: int, model_cfg: ModelConfig) -> HeadParams:
  """The ``HeadParams`` of one run's parameters (a plain dict without the leading run axis)."""
  if model_cfg.name not in ("softmax_icl", "linear_icl"):
    raise ValueError(f"ModelConfig.name={model_cfg.name!r}: head extraction needs a one-layer model")
  e = read_in_matrix(params, d, model_cfg)
  e_x, e_y = e[:d], e[d]  # [d, p], [p]
  attn = params["attn"]
  q = np.asarray(attn["query"]["kernel"], np.float64)  # [p, h, K]
  k = np.asarray(attn["key"]["kernel"], np.float64)
  v = np.asarray(attn["value"]["kernel"], np.float64)
  h, kdim = q.shape[1], q.shape[2]
  o = np.asarray(params["W_out"]["kernel"], np.float64)[:, 0].reshape(h, kdim)  # [h, K]
  s = logit_scale(model_cfg)
  qx = np.einsum("dp,phk->hdk", e_x, q)  # E_x Q_k  [h, d, K]
  kx = np.einsum("dp,phk->hdk", e_x, k)  # E_x K_k
  ky = np.einsum("p,phk->hk", e_y, k)  # K_kᵀ E_y  [h, K]
  vo = np.einsum("phk,hk->hp", v, o)  # V_k o_k   [h, p]
  return HeadParams(A=s * np.einsum("hik,hjk->hij", kx, qx), b=s * np.einsum("hdk,hk->hd", qx, ky),
                    c=vo @ e_y, u=np.einsum("dp,hp->hd", e_x, vo))


def kernel_predict(heads: HeadParams, xs: np.ndarray, ys: np.ndarray, softmax: bool = True) -> np.ndarray:
  """ŷ [B] of the kernel smoother ``heads`` for prompts xs [B, N, d], ys [B, N] (last point = query).

  Evaluates Σ_k Σ_i a_ki (c_k y_i + u_kᵀx_i) in float64 numpy, independently of the model code, so that
  ``kernel_predict(extract_heads(params)) == model.apply(params)`` checks the extraction.
  """
  xs = np.asarray(xs, np.float64)
  ys = np.asarray(ys, np.float64)
  ctx_x, ctx_y, query = xs[:, :-1], ys[:, :-1], xs[:, -1]  # [B, D, d], [B, D], [B, d]
  logits = (np.einsum("bid,hde,be->bhi", ctx_x, heads.A, query)
            + ctx_y[:, None, :] * np.einsum("hd,bd->bh", heads.b, query)[:, :, None])  # [B, h, D]
  if softmax:
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
  else:
    weights = logits / ctx_x.shape[1]
  values = heads.c[None, :, None] * ctx_y[:, None, :] + np.einsum("bid,hd->bhi", ctx_x, heads.u)  # [B, h, D]
  return np.sum(weights * values, axis=(1, 2))


def handset_params(d: int, model_cfg: ModelConfig, w, c) -> dict:
  """Parameters of a one-layer model whose head k is exactly the kernel smoother A_k = w_k I, c_k, b_k = u_k = 0.

  W_in = [I_{d+1} 0] (or no W_in with ``read_in=False``); head k reads x into its first d coordinates
  (Q_k = [I_d; 0], K_k = (w_k/s)[I_d; 0]) and y into coordinate 0 of its value, W_out[kK] = c_k.
  Needs head width K = p/h ≥ d. Returns float32 numpy arrays in the model's parameter tree.
  """
  w = np.atleast_1d(np.asarray(w, np.float64))
  c = np.atleast_1d(np.asarray(c, np.float64))
  p, h, kdim = model_cfg.embed_dim, model_cfg.heads[0], model_cfg.head_dims[0]
  if w.shape != (h,) or c.shape != (h,):
    raise ValueError(f"w, c: need {h} entries each (one per head), got {w.shape}, {c.shape}")
  if kdim < d or p < d + 1:
    raise ValueError(f"ModelConfig.embed_dim={p}: hand-set heads need p/h >= d={d} and p >= d+1")
  s = logit_scale(model_cfg)
  q = np.zeros((p, h, kdim))
  k = np.zeros((p, h, kdim))
  v = np.zeros((p, h, kdim))
  out = np.zeros((p, 1))
  for j in range(h):
    q[:d, j, :d] = np.eye(d)
    k[:d, j, :d] = (w[j] / s) * np.eye(d)
    v[d, j, 0] = 1.0
    out[j * kdim, 0] = c[j]
  params = {"attn": {"query": {"kernel": q}, "key": {"kernel": k}, "value": {"kernel": v}}, "W_out": {"kernel": out}}
  if model_cfg.read_in:
    params["W_in"] = {"kernel": np.eye(d + 1, p)}
  return _to_float32(params)


def _to_float32(tree):
  if isinstance(tree, dict):
    return {key: _to_float32(val) for key, val in tree.items()}
  return np.asarray(tree, np.float32)


def canonical(heads: HeadParams) -> HeadParams:
  """The same predictor's sign-canonical form: all of (A, b, c, u) negated when Σ_k w_k < 0.

  Flipping every head, (A_k, b_k, c_k, u_k) → (−A_k, −b_k, −c_k, −u_k), gives the predictor's value on the
  context (−x_i, −y_i); for zero-mean symmetric data (x_i and θ symmetric about 0) the loss is the same, so
  training lands in either orientation at random. Canonicalising makes Σ c_k (and a single head's w, c)
  comparable across seeds; Σ c_k w_k is unchanged.
  """
  if np.sum(heads.w) >= 0:
    return heads
  return HeadParams(A=-heads.A, b=-heads.b, c=-heads.c, u=-heads.u)


def summarize_heads(heads: HeadParams) -> dict:
  """JSON-friendly per-head numbers: w_k, c_k, Σ c_k w_k, Σ c_k, anisotropy, ||b_k||, ||u_k||."""
  w = heads.w
  return {"w": w.tolist(), "c": heads.c.tolist(), "sum_cw": float(heads.c @ w), "sum_c": float(heads.c.sum()),
          "anisotropy": heads.anisotropy.tolist(), "b_norm": np.linalg.norm(heads.b, axis=1).tolist(),
          "u_norm": np.linalg.norm(heads.u, axis=1).tolist()}
