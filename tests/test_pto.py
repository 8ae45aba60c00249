"""Tests of jaxicl.pto: the hand-set linear-attention transformer equals the PtO algorithm, and PtO's
sample efficiency on sparse regression (it beats tuned ridge when n < d).

Shape legend: B prompts, N points, d input dimension, W = 2d+2 token width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl import estimators, pto, tasks

D = 20
SPARSE = tasks.TaskConfig(family="sparse", d=D, sparsity=3, w_var=1.0, n_points=12, noise_var=0.01)


@pytest.fixture(scope="module")
def prompts() -> tasks.Prompt:
  return tasks.sample_batch(jax.random.PRNGKey(0), SPARSE, 8)


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("lr,steps", [(0.002, 1), (0.001, 4), (0.0005, 10)])
def test_construction_equals_pto_algorithm(prompts, lr, steps):
  """The transformer with hand-set weights gives estimators.pto's prefix-wise predictions (≤ 1e-5 rel.)."""
  params = pto.build_params(D, lr, steps)
  ours = jax.jit(pto.predict_batch)(params, prompts.xs, prompts.ys)
  ref = estimators.batched(lambda x, y: estimators.pto(x, y, lr=lr, steps=steps))(prompts.xs, prompts.ys)
  assert ours.shape == ref.shape == (8, SPARSE.n_points)
  assert np.all(np.isfinite(ours))
  assert _rel_err(ours, ref) <= 1e-5
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(ref))))


def test_first_layer_computes_preprocessing_for_context_and_query(prompts):
  """After layer 1 the scratch slot holds diag(r̂)x for every token, r̂ = (1/n)Σ_i y_i x_i over the context."""
  xs, ys = prompts.xs[0], prompts.ys[0]
  n = 7
  context = (jnp.arange(xs.shape[0]) < n).astype(jnp.float32)
  z = pto.attention_layer(pto.preprocess_layer(D), pto.embed(xs, ys, context), context)
  slots = pto.Slots(D)
  r_hat = np.asarray(xs[:n]).T @ np.asarray(ys[:n]) / n
  np.testing.assert_allclose(z[:, slots.x_tilde], np.asarray(xs) * r_hat, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(z[:, :D], xs)  # the residual stream keeps x
  np.testing.assert_array_equal(z[:, slots.p], 0.0)  # no prediction yet
  # removing head k of layer 1 removes exactly coordinate k of the preprocessing
  mask = jnp.ones(D).at[3].set(0.0)
  z_masked = pto.attention_layer(pto.preprocess_layer(D), pto.embed(xs, ys, context), context, mask)
  np.testing.assert_array_equal(z_masked[:, slots.x_tilde[3]], 0.0)
  np.testing.assert_allclose(np.delete(np.asarray(z_masked[:, slots.x_tilde]), 3, 1),
                             np.delete(np.asarray(z[:, slots.x_tilde]), 3, 1))


def test_gd_layers_track_the_gd_iterate(prompts):
  """After 1 + t layers, p_j = w̃_tᵀ x̃_j at every token (context and query), w̃_t = estimators.gd_weights."""
  xs, ys = prompts.xs[1], prompts.ys[1]
  n, lr = 9, 0.001
  context = (jnp.arange(xs.shape[0]) < n).astype(jnp.float32)
  r_hat = estimators.averaging_weights(xs[:n], ys[:n])
  z = pto.forward(pto.build_params(D, lr, 3), pto.embed(xs, ys, context), context)
  w_tilde = estimators.gd_weights(xs[:n] * r_hat, ys[:n], lr, 3)
  np.testing.assert_allclose(z[:, pto.Slots(D).p], (xs * r_hat) @ w_tilde, rtol=1e-4, atol=1e-6)


def test_zero_gd_steps_predicts_zero_and_bad_steps_raise(prompts):
  preds = pto.predict(pto.build_params(D, 0.1, 0), prompts.xs[0], prompts.ys[0])
  np.testing.assert_array_equal(preds, 0.0)
  with pytest.raises(ValueError, match="steps"):
    pto.build_params(D, 0.1, -1)


def test_pto_beats_tuned_ridge_when_n_below_d():
  """d=20, s=3, n=10 < d: PtO with (η, T) tuned on held-out prompts has a lower Monte Carlo excess risk than
  ridge with λ tuned the same way, by a margin far beyond the standard error of the paired difference."""
  n = 10
  cfg = tasks.TaskConfig(family="sparse", d=D, sparsity=3, w_var=1.0, n_points=n + 1, noise_var=0.01)
  tune_set = tasks.sample_batch(jax.random.PRNGKey(11), cfg, 500)
  test_set = tasks.sample_batch(jax.random.PRNGKey(12), cfg, 1500)
  # η small enough that no prompt's GD on x̃ diverges (λ_max(X̃ᵀX̃/n) is heavy-tailed at n < d)
  best_pto, _ = estimators.tune("pto", {"lr": [0.002, 0.005], "steps": [200, 800]},
                                tune_set.xs, tune_set.ys, tune_set.targets, n)
  best_ridge, _ = estimators.tune("ridge", {"lam": [0.01, 0.1, 0.3, 1.0, 3.0, 10.0]},
                                  tune_set.xs, tune_set.ys, tune_set.targets, n)

  def query_errors(fn):
    preds = jax.jit(jax.vmap(lambda x, y: fn(x[:n], y[:n]) @ x[n]))(test_set.xs, test_set.ys)
    return np.asarray((preds - test_set.targets[:, n]) ** 2, np.float64)

  err_pto = query_errors(lambda x, y: estimators.pto_weights(x, y, **best_pto))
  err_ridge = query_errors(lambda x, y: estimators.ridge_weights(x, y, **best_ridge))
  diff = err_ridge - err_pto
  se = diff.std(ddof=1) / np.sqrt(diff.size)
  assert np.all(np.isfinite(err_pto))
  assert diff.mean() > 10 * se, (err_pto.mean(), err_ridge.mean(), se)
  assert err_pto.mean() < 0.8 * err_ridge.mean()
