"""Preprocess-then-optimize (PtO) written as an explicit linear-attention transformer, weights set in code.

Shape legend: N points per prompt, n context points, d input dimension, T tokens (= N), W = 2d+2 token
width, H heads of a layer, K query/key width of a head, V value width of a head, L = 1 + T_gd layers,
B prompts.

The algorithm (``jaxicl.estimators.pto``) on a context (x_i, y_i), i = 1..n, and a query x_q:

    r̂ = (1/n) Σ_i y_i x_i ∈ R^d,      x̃ = diag(r̂) x  (context and query),
    w̃_0 = 0,  w̃_{t+1} = w̃_t + (η/n) Σ_i x̃_i (y_i − w̃_tᵀ x̃_i)   (T_gd GD steps on (x̃_i, y_i)),
    ŷ_q = w̃_{T_gd}ᵀ x̃_q.

The transformer. Token j carries four slots in its residual stream z_j ∈ R^W:

    z_j = [ x_j (d) | y_j (1) | x̃_j (d, scratch, starts at 0) | p_j (1, running prediction, starts at 0) ],

with y_j = 0 for every token that is not in the context (in particular the query). Every layer is a
multi-head *linear* attention block with a residual connection, no softmax, no LayerNorm, no MLP:

    z_j ← z_j + Σ_k W_O^k (1/n) Σ_{i ∈ context} ((W_Q^k)ᵀ z_j · (W_K^k)ᵀ z_i) (W_V^k)ᵀ z_i,

with W_Q^k, W_K^k ∈ R^{W×K}, W_V^k ∈ R^{W×V}, W_O^k ∈ R^{V×W} (the keys/values are the context tokens;
every token, context or query, is a query of the attention). The prediction is the read-out ŷ_q = p_q.

Layer 1 (preprocessing), H = d heads of width K = V = 1. Head k reads coordinate k of x as query,
the label as key, coordinate k of x as value, and writes into scratch slot x̃_k:

    W_Q^k = e_{x_k},  W_K^k = e_y,  W_V^k = e_{x_k},  W_O^k = e_{x̃_k}ᵀ
    head_k(z_j) = (1/n) Σ_i (x_jk · y_i) x_ik = x_jk · r̂_k   ⇒   x̃_j = diag(r̂) x_j after the layer.

So a purely linear-attention layer computes diag(r̂)x exactly: the product r̂_k · x_jk is the bilinear
form q·k (query coordinate x_jk times key y_i) multiplied by the value x_ik, summed over i. No product
of two attention outputs and no MLP is needed. It does need d heads: a single head's logit q·k is one
bilinear form of (z_j, z_i), so its output Σ_i (q·k_i) v_i is rank one in (query, value) space and
cannot produce the d separate products x_jk r̂_k (k = 1..d) at once. This is why the first layer is the
multi-head one.

Layers 2..T_gd+1 (one GD step each, von Oswald et al. style), one head with K = d, V = 1:

    W_Q = W_K = [e_{x̃_1} … e_{x̃_d}],  W_V = e_y − e_p,  W_O = η e_pᵀ
    p_j ← p_j + (η/n) Σ_i (x̃_j · x̃_i)(y_i − p_i).

By induction p_j = w̃_tᵀ x̃_j for every token j (context and query) after t GD layers: if
p_i = w̃_tᵀ x̃_i, then p_j + (η/n) Σ_i x̃_jᵀ x̃_i (y_i − w̃_tᵀ x̃_i) = x̃_jᵀ w̃_{t+1}. The residual
stream thus carries the running prediction of the current GD iterate at every token; the weights
w̃_t are never formed explicitly.

``predict`` gives the prefix-wise curve (prediction i from points 0..i-1 and query x_i, as the
estimators do) by running the transformer once per prefix (a vmap over the N context masks), so
``predict(params, xs, ys) == estimators.pto(xs, ys, lr, steps)`` up to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Layer = dict[str, jax.Array]  # {"query": [H, W, K], "key": [H, W, K], "value": [H, W, V], "out": [H, V, W]}
Params = list[Layer]


class Slots:
  """Index layout of the residual stream of width W = 2d + 2."""

  def __init__(self, d: int):
    self.d = d
    self.x = np.arange(d)  # x_j
    self.y = d  # y_j (0 unless j is a context token)
    self.x_tilde = d + 1 + np.arange(d)  # x̃_j = diag(r̂) x_j, written by layer 1
    self.p = 2 * d + 1  # running prediction p_j, updated by every GD layer
    self.width = 2 * d + 2


def preprocess_layer(d: int) -> Layer:
  """Layer 1: d heads (K = V = 1); head k writes x_jk · r̂_k into slot x̃_k (see module docstring)."""
  s = Slots(d)
  q = np.zeros((d, s.width, 1), np.float32)
  k = np.zeros((d, s.width, 1), np.float32)
  v = np.zeros((d, s.width, 1), np.float32)
  o = np.zeros((d, 1, s.width), np.float32)
  for head in range(d):
    q[head, s.x[head], 0] = 1.0
    k[head, s.y, 0] = 1.0
    v[head, s.x[head], 0] = 1.0
    o[head, 0, s.x_tilde[head]] = 1.0
  return {"query": jnp.asarray(q), "key": jnp.asarray(k), "value": jnp.asarray(v), "out": jnp.asarray(o)}


def gd_layer(d: int, lr: float | jax.Array) -> Layer:
  """One GD step of size η on (x̃_i, y_i): one head, q = k = x̃, v = y − p, output η·(·) into p."""
  s = Slots(d)
  qk = np.zeros((1, s.width, d), np.float32)
  qk[0, s.x_tilde, np.arange(d)] = 1.0
  v = np.zeros((1, s.width, 1), np.float32)
  v[0, s.y, 0], v[0, s.p, 0] = 1.0, -1.0
  o = jnp.zeros((1, 1, s.width), jnp.float32).at[0, 0, s.p].set(jnp.asarray(lr, jnp.float32))
  return {"query": jnp.asarray(qk), "key": jnp.asarray(qk), "value": jnp.asarray(v), "out": o}


def build_params(d: int, lr: float | jax.Array, steps: int) -> Params:
  """The hand-set weights of the PtO transformer: [preprocess_layer] + ``steps`` × [gd_layer(η)]."""
  if not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps={steps!r}: the number of GD layers must be a Python integer >= 0")
  return [preprocess_layer(d)] + [gd_layer(d, lr) for _ in range(int(steps))]


def embed(xs: jax.Array, ys: jax.Array, context: jax.Array) -> jax.Array:
  """Tokens [T, W] for points xs [N, d], ys [N] and a 0/1 context mask [N]: z_j = [x_j; m_j y_j; 0; 0]."""
  d = xs.shape[-1]
  y = (ys * context)[:, None]
  zeros = jnp.zeros((xs.shape[0], d + 1), xs.dtype)
  return jnp.concatenate([xs, y, zeros], axis=-1)


def attention_layer(layer: Layer, z: jax.Array, context: jax.Array, head_mask: jax.Array | None = None) -> jax.Array:
  """z + Σ_k W_O^k (1/n) Σ_{i: m_i=1} (q_k(z_j)·k_k(z_i)) v_k(z_i): [T, W], mask [T] -> [T, W].

  ``head_mask`` [H] (optional) multiplies each head's output before W_O, as in ``jaxicl.models``.
  """
  q = jnp.einsum("tw,hwk->thk", z, layer["query"])
  k = jnp.einsum("tw,hwk->thk", z, layer["key"])
  v = jnp.einsum("tw,hwv->thv", z, layer["value"])
  n = jnp.maximum(jnp.sum(context), 1.0)
  scores = jnp.einsum("thk,shk->hts", q, k) * (context / n)[None, None, :]  # [H, T, T], keys = context only
  heads = jnp.einsum("hts,shv->thv", scores, v)  # [T, H, V]
  if head_mask is not None:
    heads = heads * head_mask[None, :, None]
  return z + jnp.einsum("thv,hvw->tw", heads, layer["out"])


def forward(params: Params, z: jax.Array, context: jax.Array, head_masks: list[jax.Array] | None = None) -> jax.Array:
  """The residual stream after every layer: tokens [T, W], context [T] -> [T, W]."""
  for index, layer in enumerate(params):
    z = attention_layer(layer, z, context, None if head_masks is None else head_masks[index])
  return z


def predict_query(params: Params, xs: jax.Array, ys: jax.Array, context: jax.Array, query: int | jax.Array) -> jax.Array:
  """ŷ = p of token ``query`` after the transformer, with the points where ``context`` = 1 as context. -> []."""
  d = xs.shape[-1]
  z = forward(params, embed(xs, ys, context), context)
  return z[query, Slots(d).p]


def predict(params: Params, xs: jax.Array, ys: jax.Array) -> jax.Array:
  """Prefix-wise predictions [N] for one prompt xs [N, d], ys [N]: preds[i] from points 0..i-1 and x_i.

  Equals ``estimators.pto(xs, ys, lr, steps)`` for ``params = build_params(d, lr, steps)``.
  """
  n_points = xs.shape[0]
  idx = jnp.arange(n_points)
  masks = (idx[None, :] < idx[:, None]).astype(xs.dtype)  # row i: context = points j < i
  return jax.vmap(lambda m, i: predict_query(params, xs, ys, m, i))(masks, idx)


def predict_batch(params: Params, xs: jax.Array, ys: jax.Array) -> jax.Array:
  """``predict`` over prompts: [B, N, d], [B, N] -> [B, N]."""
  return jax.vmap(lambda x, y: predict(params, x, y))(xs, ys)

