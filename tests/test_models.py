"""Tests of jaxicl.models: shapes, causality, head masks, attention paths, dtypes, hand-set weights.

Shape legend: B batch, N points, D = N-1 context points, d input dimension, T tokens, L layers,
H heads, K head width, p embedding dimension, E width.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl import layouts, models, tasks

D_IN = 3  # d
N_POINTS = 6  # N
BATCH = 2  # B
TASK = tasks.TaskConfig(d=D_IN, n_points=N_POINTS, noise_var=0.1)


def small_gpt2(**kw) -> models.ModelConfig:
  base = dict(name="gpt2", width=16, n_layers=3, heads=(4, 1, 2), mlp_ratio=2, max_points=8)
  base.update(kw)
  return models.ModelConfig(**base)


def one_layer(name: str, **kw) -> models.ModelConfig:
  base = dict(name=name, embed_dim=8, heads=(2,))
  base.update(kw)
  return models.ModelConfig(**base)


@pytest.fixture(scope="module")
def batch() -> tasks.Prompt:
  """B prompts of TASK drawn with numpy (y = wᵀx + noise): no compilation needed."""
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((BATCH, N_POINTS, D_IN))
  w = rng.standard_normal((BATCH, D_IN)) / np.sqrt(D_IN)
  targets = np.einsum("bnd,bd->bn", xs, w)
  ys = targets + np.sqrt(TASK.noise_var) * rng.standard_normal((BATCH, N_POINTS))
  return tasks.Prompt(*(jnp.asarray(a, jnp.float32) for a in (xs, ys, targets, w)))


# Compilation dominates the run time on CPU, so every config is built, initialised and jitted once
# per module and shared between the tests (the jitted ``apply`` caches one executable per variant).


@functools.lru_cache(maxsize=None)
def model_for(cfg: models.ModelConfig) -> models.ICLModel:
  """``build_model(cfg, TASK)`` with ``init`` and ``apply`` jitted (capture static)."""
  model = models.build_model(cfg, TASK)
  return model._replace(init=jax.jit(model.init), apply=jax.jit(model.apply, static_argnames="capture"))


@functools.lru_cache(maxsize=None)
def params_for(cfg: models.ModelConfig, perturbed: bool = True) -> dict:
  """Initial parameters (seed 1), by default perturbed (see ``perturb``)."""
  params = model_for(cfg).init(jax.random.PRNGKey(1))
  return perturb(params) if perturbed else params


def build(cfg: models.ModelConfig, perturbed: bool = True) -> tuple[models.ICLModel, dict]:
  return model_for(cfg), params_for(cfg, perturbed)


def param_shapes(cfg: models.ModelConfig) -> dict:
  """The parameter tree as ShapeDtypeStructs (``jax.eval_shape``: nothing is compiled)."""
  return jax.eval_shape(models.build_model(cfg, TASK).init, jax.random.PRNGKey(0))


def perturb(params, seed: int = 7, scale: float = 0.3) -> dict:
  """Adds N(0, scale²) noise (host numpy, so nothing is compiled) to every parameter, so that no
  special structure of the initialisation (zero biases, unit LayerNorm scales) hides a bug."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32), params)


# ---------------------------------------------------------------------------------------------
# Shapes and parameter trees


@pytest.mark.parametrize("name", ["softmax_icl", "linear_icl"])
@pytest.mark.parametrize("read_in", [True, False])
def test_one_layer_shapes_and_param_names(batch, name, read_in):
  model, params = build(one_layer(name, read_in=read_in))
  assert model.layout == "theory" and model.n_heads == (2,)
  expected = {"attn", "W_out"} | ({"W_in"} if read_in else set())
  assert set(params) == expected
  assert set(params["attn"]) == {"query", "key", "value"}
  chex.assert_shape(params["attn"]["query"]["kernel"], (8, 2, 4))
  chex.assert_shape(params["W_out"]["kernel"], (8, 1))
  if read_in:
    chex.assert_shape(params["W_in"]["kernel"], (D_IN + 1, 8))
  preds, aux = model.apply(params, batch.xs, batch.ys, capture=True)
  chex.assert_shape(preds, (BATCH, 1))
  assert preds.dtype == jnp.float32
  assert len(aux["attn"]) == 1
  chex.assert_shape(aux["attn"][0], (BATCH, 2, 1, N_POINTS - 1))  # the query attends to the D context tokens
  chex.assert_trees_all_close(model.apply(params, batch.xs, batch.ys), preds, atol=1e-6)


@pytest.mark.parametrize("layout", ["interleaved", "interleaved_flag"])
def test_gpt2_shapes_and_param_names(batch, layout):
  cfg = small_gpt2(layout=layout)
  model, params = build(cfg)
  assert model.layout == layout and model.n_heads == (4, 1, 2)
  assert set(params) == {"read_in", "pos_embed", "block_0", "block_1", "block_2", "ln_f", "read_out"}
  chex.assert_shape(params["pos_embed"], (2 * cfg.max_points, 16))
  chex.assert_shape(params["read_in"]["kernel"], (D_IN + (layout == "interleaved_flag"), 16))
  for layer, h in enumerate((4, 1, 2)):
    chex.assert_shape(params[f"block_{layer}"]["attn"]["out"]["kernel"], (h, 16 // h, 16))
  preds, aux = model.apply(params, batch.xs, batch.ys, capture=True)
  chex.assert_shape(preds, (BATCH, N_POINTS))
  assert preds.dtype == jnp.float32
  t = 2 * N_POINTS
  chex.assert_shape(list(aux["attn"]), [(BATCH, h, t, t) for h in (4, 1, 2)])
  chex.assert_shape(aux["hidden"], (3 + 1, BATCH, t, 16))
  # hidden[0] is the input embedding: read_in(token) + pos_embed
  tokens = layouts.get_layout(layout).tokens(batch.xs, batch.ys)
  emb = tokens @ params["read_in"]["kernel"] + params["read_in"]["bias"] + params["pos_embed"][:t]
  chex.assert_trees_all_close(aux["hidden"][0], emb, atol=1e-5)


def test_gpt2_same_heads_every_layer_and_no_mlp():
  cfg = small_gpt2(heads=(2,), mlp=False)
  params = param_shapes(cfg)
  assert models.build_model(cfg, TASK).n_heads == (2, 2, 2)
  chex.assert_shape(params["block_2"]["attn"]["query"]["kernel"], (16, 2, 8))
  assert "mlp" not in params["block_0"] and "ln_2" not in params["block_0"]


# ---------------------------------------------------------------------------------------------
# Attention weights and causality


def test_gpt2_attention_weights_are_causal_distributions(batch):
  model, params = build(small_gpt2())
  _, aux = model.apply(params, batch.xs, batch.ys, capture=True)
  t = 2 * N_POINTS
  future = np.triu(np.ones((t, t), bool), k=1)
  for w in aux["attn"]:
    chex.assert_trees_all_close(w.sum(-1), jnp.ones(w.shape[:-1]), atol=1e-5)
    assert np.all(np.asarray(w)[..., future] == 0.0)
    assert np.all(np.asarray(w)[..., ~future] > 0.0)


def test_gpt2_qk_init_fan_in_draws_queries_and_keys_at_unit_logit_scale():
  """qk_init='fan_in': query / key kernels N(0, 1/E), every other parameter the default's (same key, same draw);
  the logits of a LayerNorm'd token then have ~unit variance, so attention at init is far from the uniform causal
  average that GPT-2's 0.02 gives (logit variance (0.02²E)²)."""
  width, n_points = 64, 24
  task = tasks.TaskConfig(d=5, n_points=n_points)
  cfgs = {qk: models.ModelConfig(name="gpt2", width=width, n_layers=2, heads=(4,), max_points=n_points, qk_init=qk)
          for qk in ("gpt2", "fan_in")}
  assert models.ModelConfig(name="gpt2").qk_init == "gpt2"
  params = {qk: models.build_model(c, task).init(jax.random.PRNGKey(3)) for qk, c in cfgs.items()}
  flat = {qk: dict(jax.tree_util.tree_flatten_with_path(p)[0]) for qk, p in params.items()}
  qk_leaves = 0
  for path, default in flat["gpt2"].items():
    name = jax.tree_util.keystr(path)
    ours = np.asarray(flat["fan_in"][path])
    if name.endswith("['query']['kernel']") or name.endswith("['key']['kernel']"):
      qk_leaves += 1
      assert np.std(ours) == pytest.approx(1 / np.sqrt(width), rel=0.05), name  # 4096 draws: SE of std ≈ 1.1 %
      assert np.std(np.asarray(default)) == pytest.approx(models.GPT2_INIT_STD, rel=0.05), name
    else:
      np.testing.assert_array_equal(ours, np.asarray(default), err_msg=name)
  assert qk_leaves == 4  # 2 layers × (query, key)

  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((16, n_points, 5)), jnp.float32)
  ys = jnp.asarray(rng.standard_normal((16, n_points)), jnp.float32)
  for qk, cfg in cfgs.items():
    _, aux = models.build_model(cfg, task).apply(params[qk], xs, ys, capture=True)
    w = np.asarray(aux["attn"][0])[..., -1, :]  # [B, H, T]: the last token's row over all 2N tokens
    uniform = 1.0 / w.shape[-1]
    spread = np.abs(w / uniform - 1).mean()  # 0 for the plain causal average
    if qk == "gpt2":
      assert spread < 0.05, spread
    else:
      assert spread > 0.3, spread


def test_gpt2_causality_by_gradients(batch):
  """Prediction i depends on x_1..x_i and y_1..y_{i-1} only (exactly zero gradient for the rest).

  Runs the default (``auto`` = xla) path used in training; the einsum path's causality is checked by
  its attention weights above and by its agreement with the xla path below.
  """
  model, params = build(small_gpt2())
  xs, ys = batch.xs[:1], batch.ys[:1]
  jac_x, jac_y = jax.jit(jax.jacrev(lambda x, y: model.apply(params, x, y)[0], argnums=(0, 1)))(xs, ys)
  gx = np.abs(np.asarray(jac_x[:, 0])).sum(-1)  # [N preds, N points]
  gy = np.abs(np.asarray(jac_y[:, 0]))  # [N preds, N points]
  idx = np.arange(N_POINTS)
  later_x = idx[None, :] > idx[:, None]  # j > i
  later_or_same_y = idx[None, :] >= idx[:, None]  # j >= i
  assert np.all(gx[later_x] == 0.0) and np.all(gy[later_or_same_y] == 0.0)
  assert np.all(gx[~later_x] > 1e-7) and np.all(gy[~later_or_same_y] > 1e-7)


@pytest.mark.parametrize("name", ["softmax_icl", "linear_icl"])
def test_one_layer_ignores_query_label(batch, name):
  model, params = build(one_layer(name))
  gy = jax.grad(lambda y: model.apply(params, batch.xs, y).sum())(batch.ys)
  assert np.all(np.asarray(gy[:, -1]) == 0.0)
  assert np.all(np.abs(np.asarray(gy[:, :-1])) > 0.0)
  gx = jax.grad(lambda x: model.apply(params, x, batch.ys).sum())(batch.xs)
  assert np.all(np.abs(np.asarray(gx)).sum(-1) > 0.0)  # the query input and every context input matter


@pytest.mark.parametrize("name", ["softmax_icl", "linear_icl"])
def test_one_layer_init_gives_gradient_to_every_parameter(batch, name):
  """The small (non-zero) W_out init: predictions near 0, yet every parameter gets a gradient."""
  model, params = build(one_layer(name), perturbed=False)
  preds = model.apply(params, batch.xs, batch.ys)
  assert float(jnp.abs(preds).max()) < 0.2
  grads = jax.grad(lambda p: jnp.mean((model.apply(p, batch.xs, batch.ys)[:, 0] - batch.ys[:, -1]) ** 2))(params)
  for g in jax.tree_util.tree_leaves(grads):
    assert float(jnp.abs(g).max()) > 0.0


# ---------------------------------------------------------------------------------------------
# Head masks


@pytest.mark.parametrize("name", ["softmax_icl", "linear_icl"])
def test_one_layer_head_mask_equals_zeroed_output_rows(batch, name):
  model, params = build(one_layer(name))  # p = 8, h = 2, K = 4
  full = model.apply(params, batch.xs, batch.ys)
  chex.assert_trees_all_close(model.apply(params, batch.xs, batch.ys, head_mask=jnp.ones((1, 2))), full, atol=1e-6)
  for k in range(2):
    mask = jnp.ones((1, 2)).at[0, k].set(0.0)
    # head k's rows k·K..(k+1)·K-1 of W_out (K = 4)
    zeroed = dict(params, W_out={"kernel": params["W_out"]["kernel"].at[4 * k:4 * (k + 1)].set(0.0)})
    masked = model.apply(params, batch.xs, batch.ys, head_mask=mask)
    chex.assert_trees_all_close(masked, model.apply(zeroed, batch.xs, batch.ys), atol=1e-6)
    assert float(jnp.abs(masked - full).max()) > 1e-4


def test_gpt2_head_mask_equals_zeroed_output_projection(batch):
  model, params = build(small_gpt2())
  full = model.apply(params, batch.xs, batch.ys)
  ones = jnp.ones((3, 4))
  chex.assert_trees_all_close(model.apply(params, batch.xs, batch.ys, head_mask=ones), full, atol=1e-6)
  # entries beyond a layer's head count are ignored
  chex.assert_trees_all_close(model.apply(params, batch.xs, batch.ys, head_mask=ones.at[1, 1:].set(0.0)), full,
                              atol=1e-6)
  for layer, k in [(0, 2), (1, 0), (2, 1)]:
    mask = ones.at[layer, k].set(0.0)
    block = f"block_{layer}"
    out = params[block]["attn"]["out"]
    zeroed_out = dict(out, kernel=out["kernel"].at[k].set(0.0))  # head k's [K, E] slice of the projection
    zeroed = dict(params, **{block: dict(params[block], attn=dict(params[block]["attn"], out=zeroed_out))})
    masked = model.apply(params, batch.xs, batch.ys, head_mask=mask)
    chex.assert_trees_all_close(masked, model.apply(zeroed, batch.xs, batch.ys), atol=1e-5)
    assert float(jnp.abs(masked - full).max()) > 1e-4


def test_head_mask_shape_is_checked(batch):
  model, params = build(small_gpt2())
  with pytest.raises(ValueError, match="head_mask"):
    model.apply(params, batch.xs, batch.ys, head_mask=jnp.ones((2, 4)))


# ---------------------------------------------------------------------------------------------
# Attention paths and dtypes


@pytest.mark.parametrize("name, read_in", [("softmax_icl", True), ("softmax_icl", False), ("linear_icl", True)])
def test_one_layer_factored_path_equals_per_token_projections(batch, name, read_in):
  """``auto`` (attention in token space, no per-token keys or values) computes the same predictions, weights and
  parameter gradients as the per-token ``einsum`` and ``xla`` paths, with a head mask and a padded context."""
  cfg = one_layer(name, read_in=read_in, embed_dim=8, heads=(2,))
  auto, params = build(cfg)
  others = ["einsum"] + (["xla"] if name == "softmax_icl" else [])
  n_context = jnp.asarray([N_POINTS - 1, N_POINTS - 3])
  hm = jnp.asarray([[1.0, 0.5]])

  def loss(model, p):
    preds = model.apply(p, batch.xs, batch.ys, head_mask=hm, n_context=n_context)
    return jnp.sum((preds[:, 0] - batch.targets[:, -1]) ** 2)

  want_loss, want_grad = jax.value_and_grad(functools.partial(loss, auto))(params)
  _, want_aux = auto.apply(params, batch.xs, batch.ys, capture=True, n_context=n_context)
  assert float(np.abs(np.asarray(want_aux["attn"][0])[1, :, 0, -2:]).max()) == 0.0  # padded keys get no weight
  for impl in others:
    model = model_for(dataclasses.replace(cfg, attention_impl=impl))
    got_loss, got_grad = jax.value_and_grad(functools.partial(loss, model))(params)
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    chex.assert_trees_all_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
  _, aux = model_for(dataclasses.replace(cfg, attention_impl="einsum")).apply(params, batch.xs, batch.ys,
                                                                              capture=True, n_context=n_context)
  chex.assert_trees_all_close(aux["attn"][0], want_aux["attn"][0], rtol=1e-5, atol=1e-6)


class _DenseAttention(nn.Module):
  @nn.compact
  def __call__(self, e):
    return [nn.DenseGeneral((2, 4), use_bias=False, kernel_init=nn.initializers.lecun_normal(), name=n)(e)
            for n in ("query", "key", "value")]


class _DenseReadIn(nn.Module):
  """The one-layer model's read-in and attention projections written as plain dense layers."""

  @nn.compact
  def __call__(self, z):
    e = nn.Dense(8, use_bias=False, kernel_init=nn.initializers.lecun_normal(), name="W_in")(z)
    return _DenseAttention(name="attn")(e)


def test_one_layer_kernels_initialise_as_dense_layers():
  """The bare kernels of the one-layer models hold exactly the values ``nn.Dense`` / ``nn.DenseGeneral`` draw under
  the same names (LeCun normal over the flattened fan-in × features)."""
  params = models.build_model(one_layer("softmax_icl", embed_dim=8, heads=(2,)), TASK).init(jax.random.PRNGKey(7))
  ref = _DenseReadIn().init(jax.random.PRNGKey(7), jnp.zeros((1, D_IN + 1)))["params"]
  np.testing.assert_array_equal(np.asarray(params["W_in"]["kernel"]), np.asarray(ref["W_in"]["kernel"]))
  for n in ("query", "key", "value"):
    np.testing.assert_array_equal(np.asarray(params["attn"][n]["kernel"]), np.asarray(ref["attn"][n]["kernel"]))


def test_einsum_and_xla_paths_agree(batch):
  """``auto`` (gpt2: the xla path unless weights are captured; one-layer: the factored path) equals ``einsum``."""
  for cfg in (small_gpt2(), one_layer("softmax_icl")):
    m_x, params = build(cfg)
    m_e = model_for(dataclasses.replace(cfg, attention_impl="einsum"))
    mask = jnp.ones((len(m_e.n_heads), max(m_e.n_heads))).at[0, 1].set(0.0)
    for hm in (mask, None):
      a = m_e.apply(params, batch.xs, batch.ys, head_mask=hm)
      b = m_x.apply(params, batch.xs, batch.ys, head_mask=hm)
      chex.assert_trees_all_close(a, b, atol=1e-5, rtol=1e-5)
    # capture=True falls back to the einsum path, with the same predictions
    c, aux = m_x.apply(params, batch.xs, batch.ys, capture=True)
    assert all(w is not None for w in aux["attn"])
    chex.assert_trees_all_close(c, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"layout": "interleaved_flag", "mlp": False}, {"heads": (2, 4), "n_layers": 2}],
                         ids=["3-layer", "flag-no-mlp", "2-layer"])
def test_gpt2_outputs_only_path_equals_every_token_path(batch, kw):
  """Without capture the decoder drops the last y token and runs its last block at the x tokens only; with
  capture every token goes through every block. Same predictions and the same parameter gradients, on both
  attention paths (the xla path against the einsum path's full computation)."""
  full_model, params = build(small_gpt2(attention_impl="einsum", **kw))
  loss = lambda m, p, capture: jnp.sum(jnp.sin(3 * (m.apply(p, batch.xs, batch.ys, capture=capture)[0] if capture
                                                     else m.apply(p, batch.xs, batch.ys))))
  want = full_model.apply(params, batch.xs, batch.ys, capture=True)[0]
  want_grads = jax.grad(lambda p: loss(full_model, p, True))(params)
  for impl in ("einsum", "xla"):
    model = model_for(small_gpt2(attention_impl=impl, **kw))
    chex.assert_trees_all_close(model.apply(params, batch.xs, batch.ys), want, atol=2e-6, rtol=1e-5)
    chex.assert_trees_all_close(jax.grad(lambda p: loss(model, p, False))(params), want_grads, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("cfg", [small_gpt2(), one_layer("softmax_icl"), one_layer("linear_icl")],
                         ids=["gpt2", "softmax_icl", "linear_icl"])
def test_bfloat16_close_to_float32_with_float32_params(batch, cfg):
  m32, params = build(cfg)
  cfg16 = dataclasses.replace(cfg, dtype="bfloat16")
  m16 = model_for(cfg16)
  for x in jax.tree_util.tree_leaves(param_shapes(cfg16)):
    assert x.dtype == jnp.float32
  a = m32.apply(params, batch.xs, batch.ys)
  b, aux = m16.apply(params, batch.xs, batch.ys, capture=True)
  assert b.dtype == jnp.float32 and aux["attn"][0].dtype == jnp.float32
  scale = float(jnp.abs(a).max())
  assert float(jnp.abs(a - b).max()) < 0.05 * scale + 1e-3
  assert float(jnp.abs(a - b).max()) > 0.0  # the bf16 path really computes in bf16


# ---------------------------------------------------------------------------------------------
# Hand-set weights


def hand_params(cfg: models.ModelConfig, q_blocks, v_rows, out_rows):
  """Parameters of a one-layer model with p = h·K, K ≥ d+1 and e_i = [x_i; y_i; 0] (see the tests below).

  For head k: W_Q^k = q_blocks[k]·[I_d 0] (query picks x, scaled), W_K^k = [I_d 0] (key picks x),
  W_V^k = e_0 e_{d}ᵀ (value coordinate 0 of head k holds y), W_out[k·K] = out_rows[k].
  Every other weight is zero.
  """
  p, h = cfg.embed_dim, cfg.heads[0]
  kd = p // h
  wq = np.zeros((p, h, kd), np.float32)
  wk = np.zeros((p, h, kd), np.float32)
  wv = np.zeros((p, h, kd), np.float32)
  w_out = np.zeros((p, 1), np.float32)
  for k in range(h):
    wq[:D_IN, k, :D_IN] = q_blocks[k] * np.eye(D_IN)
    wk[:D_IN, k, :D_IN] = np.eye(D_IN)
    wv[D_IN, k, 0] = v_rows[k]
    w_out[k * kd, 0] = out_rows[k]
  params = {"attn": {"query": {"kernel": wq}, "key": {"kernel": wk}, "value": {"kernel": wv}},
            "W_out": {"kernel": w_out}}
  if cfg.read_in:  # identity-like read-in: e = [x; y; 0, …, 0]
    params["W_in"] = {"kernel": np.eye(D_IN + 1, p, dtype=np.float32)}
  return jax.tree_util.tree_map(jnp.asarray, params)


@pytest.mark.parametrize("read_in", [True, False])
def test_linear_icl_equals_one_gd_step(batch, read_in):
  """Linear attention with hand-set weights = one GD step from w = 0 with step η.

  Construction (h = 2 heads of width K = 4 ≥ d+1, p = 8, default logit scale s = 1/√K):
  e_i = [x_i; y_i; 0] (identity-like W_in, or the fixed padding); head 0: q = x_q, k_i = x_i,
  v_i = y_i·e_0, so head_0 = (s/D) Σ_i (x_qᵀx_i) y_i e_0; W_out reads coordinate 0 of head 0 with weight
  η/s; head 1 has the same Q/K/V maps but W_out ignores it. Then ŷ = (η/D) Σ_i y_i x_iᵀx_q, which is the
  prediction w_1ᵀx_q of w_1 = w_0 − η∇L(w_0), w_0 = 0, L(w) = (1/2D) Σ_i (wᵀx_i − y_i)².
  """
  eta = 0.7
  cfg = one_layer("linear_icl", read_in=read_in)
  s = 1.0 / np.sqrt(4)
  model = model_for(cfg)
  params = hand_params(cfg, q_blocks=[1.0, 1.0], v_rows=[1.0, 1.0], out_rows=[eta / s, 0.0])
  xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
  ctx_x, ctx_y, x_q = xs[:, :-1], ys[:, :-1], xs[:, -1]
  n_ctx = ctx_x.shape[1]
  grad0 = -np.einsum("bi,bid->bd", ctx_y, ctx_x) / n_ctx  # ∇L(0)
  w1 = -eta * grad0
  expected = np.einsum("bd,bd->b", w1, x_q)[:, None]
  got = model.apply(params, batch.xs, batch.ys)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("read_in", [True, False])
def test_softmax_icl_equals_kernel_predictor(batch, read_in):
  """softmax_icl with hand-set weights = the theory.md predictor ŷ = Σ_k c_k Σ_i y_i softmax_i(w_k x_iᵀx_q).

  Construction (h = 2, K = 4, p = 8, scale s = 1/√K): e_i = [x_i; y_i; 0]; head k: q = (w_k/s) x_q,
  k_i = x_i (logit s·qᵀk_i = w_k x_iᵀx_q), v_i = y_i e_0; W_out reads coordinate 0 of head k with weight c_k.
  Reference computed in numpy (float64) for the debiased pair w = (0.7, −0.7), c = (1/1.4, −1/1.4).
  """
  w = np.array([0.7, -0.7])
  c = 1.0 / (2 * w[0]) * np.array([1.0, -1.0])
  s = 1.0 / np.sqrt(4)
  cfg = one_layer("softmax_icl", read_in=read_in)
  params = hand_params(cfg, q_blocks=w / s, v_rows=[1.0, 1.0], out_rows=c)
  xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
  ctx_x, ctx_y, x_q = xs[:, :-1], ys[:, :-1], xs[:, -1]
  dots = np.einsum("bid,bd->bi", ctx_x, x_q)
  expected = np.zeros(xs.shape[0])
  for wk, ck in zip(w, c):
    logits = wk * dots
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    expected += ck * np.einsum("bi,bi->b", a, ctx_y)
  for impl in ("einsum", "xla"):
    m = model_for(dataclasses.replace(cfg, attention_impl=impl))
    np.testing.assert_allclose(np.asarray(m.apply(params, batch.xs, batch.ys))[:, 0], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Configuration errors


@pytest.mark.parametrize("kwargs, needles", [
    (dict(name="mlp_icl"), ["name", "mlp_icl"]),
    (dict(embed_dim=10, heads=(4,)), ["embed_dim=10", "heads=(4,)"]),
    (dict(embed_dim=0), ["embed_dim=0"]),
    (dict(heads=(0,)), ["heads=(0,)"]),
    (dict(heads=(2, 2)), ["heads=(2, 2)", "exactly one entry"]),
    (dict(name="gpt2", width=30, heads=(8,)), ["heads", "width=30"]),
    (dict(name="gpt2", n_layers=3, heads=(4, 4)), ["heads", "n_layers=3"]),
    (dict(heads=()), ["heads"]),
    (dict(name="gpt2", heads=(8, 0)), ["heads"]),
    (dict(name="gpt2", n_layers=0), ["n_layers=0"]),
    (dict(name="gpt2", mlp_ratio=0), ["mlp_ratio=0"]),
    (dict(name="gpt2", max_points=0), ["max_points=0"]),
    (dict(name="gpt2", width=-8), ["width=-8"]),
    (dict(name="gpt2", layout="theory"), ["layout", "theory"]),
    (dict(name="linear_icl", attention_impl="xla"), ["attention_impl", "linear_icl"]),
    (dict(dtype="float16"), ["dtype", "float16"]),
    (dict(attention_impl="flash"), ["attention_impl", "flash"]),
    (dict(attn_scale=float("nan")), ["attn_scale"]),
    (dict(name="gpt2", qk_init="xavier"), ["qk_init", "xavier"]),
])
def test_bad_config_raises_naming_field(kwargs, needles):
  with pytest.raises(ValueError) as err:
    models.ModelConfig(**kwargs)
  for needle in needles:
    assert needle in str(err.value)


@pytest.mark.parametrize("kwargs", [
    dict(name="softmax_icl", width=64), dict(name="linear_icl", n_layers=2), dict(name="softmax_icl", mlp=False),
    dict(name="softmax_icl", mlp_ratio=2), dict(name="softmax_icl", max_points=8),
    dict(name="linear_icl", layout="interleaved"), dict(name="softmax_icl", io_init="gpt2"),
    dict(name="linear_icl", qk_init="fan_in"),
    dict(name="gpt2", embed_dim=8), dict(name="gpt2", read_in=False),
])
def test_a_field_of_another_model_is_an_error_naming_the_model(kwargs):
  (field, value), = [(k, v) for k, v in kwargs.items() if k != "name"]
  with pytest.raises(ValueError) as err:
    models.ModelConfig(**kwargs)
  assert str(err.value) == f"ModelConfig.{field}={value!r}: does not apply to model {kwargs['name']!r}"


def test_heads_and_head_widths_per_model():
  one = models.ModelConfig(name="softmax_icl", embed_dim=12, heads=3)
  assert one.layer_heads == (3,) and one.head_dims == (4,) and one.logit_scale() == pytest.approx(0.5)
  assert (one.width, one.n_layers, one.layout) == (None, None, None)  # gpt2 fields stay unset
  gpt = models.ModelConfig(name="gpt2", width=24, n_layers=3, heads=(8, 4, 2), attn_scale=0.3)
  assert gpt.layer_heads == (8, 4, 2) and gpt.head_dims == (3, 6, 12) and gpt.logit_scale(2) == 0.3
  assert gpt.embed_dim is None and gpt.read_in is None
  assert models.ModelConfig(name="gpt2", n_layers=2).layer_heads == (8, 8)  # the gpt2 default
  assert models.ModelConfig().layer_heads == (4,) and models.ModelConfig().embed_dim == 64  # one-layer default


def test_xla_attention_refuses_to_return_weights():
  cfg = one_layer("softmax_icl", attention_impl="xla")
  model = models.build_model(cfg, TASK)
  params = model.init(jax.random.PRNGKey(0))
  xs, ys = jnp.ones((1, N_POINTS, D_IN)), jnp.ones((1, N_POINTS))
  with pytest.raises(ValueError, match="attention_impl='xla'"):
    model.apply(params, xs, ys, capture=True)
  auto = models.build_model(dataclasses.replace(cfg, attention_impl="auto"), TASK)
  preds, aux = auto.apply(params, xs, ys, capture=True)  # auto falls back to the explicit weights
  np.testing.assert_allclose(np.asarray(aux["attn"][0]).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(preds), np.asarray(model.apply(params, xs, ys)), rtol=1e-5, atol=1e-6)


def test_build_model_checks_task_dependent_sizes():
  with pytest.raises(ValueError, match="embed_dim=3"):
    models.build_model(models.ModelConfig(embed_dim=3, heads=(1,), read_in=False), TASK)  # p < d+1
  with pytest.raises(ValueError, match="max_points=4"):
    models.build_model(small_gpt2(max_points=4), TASK)
  cfg = models.ModelConfig(name="gpt2", heads=[8, 4, 2], n_layers=3)  # a list is stored as a tuple
  assert cfg.heads == (8, 4, 2) and hash(cfg) == hash(models.ModelConfig(name="gpt2", heads=(8, 4, 2), n_layers=3))


@pytest.mark.parametrize("name", ["softmax_icl", "linear_icl"])
def test_padded_context_masked_equals_the_unpadded_prompt(name, batch):
  """A prompt padded with junk points between its context and its query, with n_context = its D, predicts
  exactly what the unpadded prompt predicts (the junk gets zero attention weight)."""
  model = models.build_model(one_layer(name), TASK)
  params = model.init(jax.random.PRNGKey(3))
  xs, ys = jnp.asarray(batch.xs), jnp.asarray(batch.ys)  # [B, N, d], D = N - 1
  junk_x = 5.0 * jax.random.normal(jax.random.PRNGKey(4), (BATCH, 3, D_IN))
  junk_y = 5.0 * jax.random.normal(jax.random.PRNGKey(5), (BATCH, 3))
  pad_xs = jnp.concatenate([xs[:, :-1], junk_x, xs[:, -1:]], axis=1)
  pad_ys = jnp.concatenate([ys[:, :-1], junk_y, ys[:, -1:]], axis=1)
  want = np.asarray(model.apply(params, xs, ys))
  for n_context in (N_POINTS - 1, jnp.full((BATCH,), N_POINTS - 1)):
    got = np.asarray(model.apply(params, pad_xs, pad_ys, n_context=n_context))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(model.apply(params, pad_xs, pad_ys)), want, atol=1e-3)  # the junk matters unmasked
  if name == "softmax_icl":
    xla = models.build_model(one_layer(name, attention_impl="xla"), TASK)
    np.testing.assert_allclose(np.asarray(xla.apply(params, pad_xs, pad_ys, n_context=N_POINTS - 1)), want,
                               rtol=1e-5, atol=1e-6)
