"""Tests of jaxicl.interpret: head masking / importance, pruning, probing, attention maps.

Shape legend: B prompts, N points, d input dimension, L layers, H max heads, P predictions, E width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl import evaluate, interpret, models, tasks

TASK = tasks.TaskConfig(d=3, n_points=6, w_var=1.0, noise_var=0.01)
CFG = models.ModelConfig(name="gpt2", width=16, n_layers=2, heads=(4, 2), mlp_ratio=2, max_points=8)


@functools.lru_cache(maxsize=None)
def setup():
  """A tiny gpt2 with (4, 2) heads and weights drawn large enough that every head matters."""
  model = models.build_model(CFG, TASK)
  params = jax.jit(model.init)(jax.random.PRNGKey(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
  prompts = tasks.sample_batch(jax.random.PRNGKey(2), TASK, 16)
  return model, jax.tree.unflatten(tree, leaves), prompts


def test_single_head_masks():
  masks = interpret.single_head_masks((4, 2))
  assert masks.shape == (8, 2, 4)
  assert np.all(masks.sum(axis=(1, 2)) == 7)
  assert masks[1 * 4 + 2, 1, 2] == 0 and masks[0, 0, 0] == 0
  np.testing.assert_array_equal(interpret.valid_heads((4, 2)), [[1, 1, 1, 1], [1, 1, 0, 0]])


def test_masking_a_head_equals_zeroing_its_output_projection():
  model, params, prompts = setup()
  apply = jax.jit(lambda p, m: model.apply(p, prompts.xs, prompts.ys, head_mask=m))
  ones = jnp.ones((2, 4))
  full = apply(params, ones)
  for layer, k in [(0, 0), (0, 3), (1, 1)]:
    masked = apply(params, ones.at[layer, k].set(0.0))
    zeroed = apply(interpret.zero_head(params, layer, k, model.n_heads), ones)
    np.testing.assert_allclose(masked, zeroed, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(masked - full))) > 1e-3  # the head did contribute


def test_importance_of_a_zeroed_head_is_zero():
  model, params, prompts = setup()
  zeroed = interpret.zero_head(params, 1, 0, model.n_heads)
  imp = interpret.head_importance(model, zeroed, prompts)
  assert imp.shape == (2, 4)
  # The masked and the unmasked pass differ only in float32 rounding: each prediction accumulates about
  # E + F + 2N = 60 products (eps32 = 1.2e-7 each), so the risks differ by at most ~eps32 · 60 · risk.
  preds = np.asarray(model.apply(zeroed, prompts.xs, prompts.ys), np.float64)
  risk = np.mean((preds - np.asarray(prompts.targets, np.float64)) ** 2)
  tol = 1.2e-7 * (CFG.width * (1 + CFG.mlp_ratio) + 2 * TASK.n_points) * risk
  assert abs(imp[1, 0]) <= tol
  assert np.all(np.isnan(imp[1, 2:])) and np.all(np.isfinite(imp[0])) and np.isfinite(imp[1, 1])
  assert np.all(np.abs(imp[0]) > 100 * tol) and abs(imp[1, 1]) > 100 * tol


def test_vmapped_importance_equals_python_loop_over_masks():
  model, params, prompts = setup()
  apply = jax.jit(lambda p, m: model.apply(p, prompts.xs, prompts.ys, head_mask=m))  # one compile for the loop

  def risk(p, mask):
    return np.mean((np.asarray(apply(p, jnp.asarray(mask)), np.float64) - np.asarray(prompts.targets)) ** 2, 0)

  full = risk(params, np.ones((2, 4))).mean()
  loop = np.full((2, 4), np.nan)
  for layer, h in enumerate(model.n_heads):
    for k in range(h):
      mask = np.ones((2, 4), np.float32)
      mask[layer, k] = 0.0
      loop[layer, k] = risk(params, mask).mean() - full
  np.testing.assert_allclose(interpret.head_importance(model, params, prompts), loop, rtol=1e-4, atol=1e-6)
  # bounded-memory path (lax.map in batches) and a subset of points
  np.testing.assert_allclose(interpret.head_importance(model, params, prompts, batch_size=3), loop,
                             rtol=1e-4, atol=1e-6)
  # vmapped over runs: two "seeds" stacked on a leading axis
  other = jax.tree.map(lambda a: 0.9 * a, params)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
  runs = interpret.head_importance_runs(model, stacked, prompts)
  assert runs.shape == (2, 2, 4)
  np.testing.assert_allclose(runs[0], loop, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(runs[1], interpret.head_importance(model, other, prompts), rtol=1e-4, atol=1e-6)
  at_points = interpret.head_importance_runs(model, stacked, prompts, points=[2, 5])  # no recompile
  assert not np.allclose(at_points[0], runs[0])
  # prompts in chunks (the last one padded: its padding must not count) and masks in batches: the same numbers
  n = prompts.xs.shape[0]
  assert n % 3 != 0
  chunked = interpret.head_importance_runs(model, stacked, prompts, batch_size=3, prompt_chunk=3)
  np.testing.assert_allclose(chunked, runs, rtol=1e-4, atol=1e-6)


def test_pruning_mask_policies():
  imp = np.array([[0.1, 0.5, 0.2, 0.3], [0.4, 0.9, np.nan, np.nan], [2.0, 1.0, np.nan, np.nan]])
  heads = (4, 2, 2)
  np.testing.assert_array_equal(interpret.pruning_mask(imp, heads), [[1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(interpret.pruning_mask(imp, heads, keep_all=(), top_k=2),
                                [[0, 1, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(interpret.pruning_mask(imp, heads, keep_all=(1, 2)),
                                [[0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
  usage = interpret.head_usage(imp, heads)
  assert usage["effective_heads"][2] == pytest.approx(9.0 / 5.0)
  assert usage["top1_share"][0] == pytest.approx(0.5 / 1.1)


def test_pruned_evaluation_equals_masked_full_model():
  model, params, prompts = setup()
  imp = interpret.head_importance(model, params, prompts)
  mask = interpret.pruning_mask(imp, model.n_heads)
  assert mask.sum() == 4 + 1
  stacked = jax.tree.map(lambda a: a[None], params)
  pruned = interpret.masked_risk_runs(model, stacked, prompts, mask[None])
  # the same risk summed in another order: float32 rounding over B·P = 96 squared errors and ~60 products per
  # prediction bounds the relative difference by eps32 · (96 + 60)
  np.testing.assert_allclose(pruned[0], evaluate.model_risk(model, params, prompts, jnp.asarray(mask)),
                             rtol=1.2e-7 * (96 + 60))
  mask_again, risk = interpret.pruned_risk(model, params, prompts, imp)  # the same through the one-run helper
  np.testing.assert_array_equal(mask_again, mask)
  np.testing.assert_allclose(risk, pruned[0], rtol=1e-6)
  top2 = interpret.pruned_risk(model, params, prompts, imp, keep_all=(), top_k=2)[0]
  assert top2.sum() == 2 + 2
  full = interpret.masked_risk_runs(model, stacked, prompts, None)
  np.testing.assert_allclose(full, interpret.masked_risk_runs(model, stacked, prompts, np.ones((1, 2, 4))))
  assert not np.allclose(pruned, full)


def test_probe_recovers_planted_linear_signal():
  rng = np.random.default_rng(0)
  a, c = rng.standard_normal(12), 0.7
  h_fit, h_eval = rng.standard_normal((2000, 12)) * 3.0, rng.standard_normal((500, 12)) * 3.0
  y_fit = h_fit @ a + c + 0.05 * rng.standard_normal(2000)
  probe = interpret.fit_probe(h_fit, y_fit)
  risk = np.mean((interpret.apply_probe(probe, h_eval) - (h_eval @ a + c)) ** 2)
  assert risk < 1e-3 * np.var(h_eval @ a)
  np.testing.assert_allclose(probe[0], a, atol=0.01)


def test_probe_risks_and_attention_maps(tmp_path):
  model, params, prompts = setup()
  other = tasks.sample_batch(jax.random.PRNGKey(3), TASK, 16)
  risks = interpret.probe_risks(model, params, prompts, other)
  assert risks.shape == (CFG.n_layers + 1, TASK.n_points) and np.all(np.isfinite(risks))
  hidden = interpret.hidden_states(model, params, prompts.xs, prompts.ys)
  assert hidden.shape == (3, 16, TASK.n_points, CFG.width)
  maps = interpret.attention_maps(model, params, prompts.xs, prompts.ys)
  assert [m.shape for m in maps] == [(16, 4, 12, 12), (16, 2, 12, 12)]
  np.testing.assert_allclose(maps[0].sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.triu(maps[1][0, 0], 1) == 0)  # causal
  assert (tmp_path / "a.png").exists() is False
  interpret.plot_attention(maps, str(tmp_path / "a.png"))
  interpret.plot_importance(interpret.head_importance(model, params, prompts), str(tmp_path / "i.png"))
  assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "i.png").stat().st_size > 0


def test_zero_head_on_one_layer_model():
  task = tasks.TaskConfig(d=3, n_points=6)
  model = models.build_model(models.ModelConfig(name="linear_icl", embed_dim=8, heads=(2,)), task)
  params = jax.jit(model.init)(jax.random.PRNGKey(0))
  prompts = tasks.sample_batch(jax.random.PRNGKey(1), task, 4)
  apply = jax.jit(lambda p, m: model.apply(p, prompts.xs, prompts.ys, head_mask=m))
  masked = apply(params, jnp.array([[1.0, 0.0]]))
  zeroed = apply(interpret.zero_head(params, 0, 1, model.n_heads), jnp.ones((1, 2)))
  # float32 rounding of a prediction that accumulates ~(N + p) products: relative to the largest prediction
  np.testing.assert_allclose(masked, zeroed, rtol=0, atol=1.2e-7 * (6 + 8) * float(jnp.max(jnp.abs(masked))))
  assert not np.allclose(masked, apply(params, jnp.ones((1, 2))))
