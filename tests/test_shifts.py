"""Distribution shifts: parsing, label consistency on every family, and each shift's moments by sampling."""

import jax
import numpy as np
import pytest

from jaxicl import shifts, tasks

KEY = jax.random.PRNGKey(7)
transform = jax.jit(shifts.transform, static_argnums=0)  # one compile per shift (and shape), not one per op
sample_batch = jax.jit(tasks.sample_batch, static_argnums=(1, 2))


def _prompts(task, n):
  return jax.tree.map(np.asarray, sample_batch(jax.random.PRNGKey(3), task, n))


def _shift(text, prompts, t=None, key=KEY):
  (spec,) = shifts.parse(text)
  return jax.tree.map(np.asarray, transform(spec, key, prompts, t))


def test_parse_names_parameters_and_all():
  assert shifts.parse("skewed,scaled=3") == (shifts.ShiftSpec("skewed", 1.0), shifts.ShiftSpec("scaled", 3.0))
  assert shifts.parse(["noisy=0.5", "orthogonal"]) == (shifts.ShiftSpec("noisy", 0.5), shifts.ShiftSpec("orthogonal"))
  assert shifts.parse([]) == ()
  assert [s.name for s in shifts.parse("all")] == list(shifts.SHIFTS)
  assert str(shifts.ShiftSpec("scaled", 3.0)) == "scaled=3"


@pytest.mark.parametrize("text, named", [("sclaed", "sclaed"), ("scaled=x", "scaled=x"), ("scaled=-1", "scaled=-1"),
                                         ("w_scaled=inf", "w_scaled=inf"), ("noisy=-0.1", "noisy=-0.1"),
                                         ("orthogonal=2", "orthogonal=2"), ("skewed", "skewed=1 is given twice"),
                                         ("all", "skewed=1 is given twice"), ("", "an empty item")])
def test_parse_rejects_bad_items_naming_them(text, named):
  with pytest.raises(ValueError, match=named):
    shifts.parse(f"skewed,{text}")


@pytest.mark.parametrize("task", [
    tasks.TaskConfig(d=4, n_points=7, noise_var=0.3),
    tasks.TaskConfig(family="sparse", d=4, sparsity=2, w_var=1.0, n_points=7, noise_var=0.1, cov="toeplitz", rho=0.5),
    tasks.TaskConfig(d=4, n_points=7, pool_size=3, prior_mean_norm=1.0),
], ids=["linear", "sparse-toeplitz", "pool"])
def test_every_shift_keeps_labels_consistent_and_moves_only_its_points(task):
  prompts = _prompts(task, 16)
  noise = prompts.ys - prompts.targets
  t = 3
  for spec in shifts.parse("all"):
    out = jax.tree.map(np.asarray, transform(spec, KEY, prompts, t))
    np.testing.assert_allclose(out.targets, np.einsum("bnd,bd->bn", out.xs, out.w), atol=1e-5, err_msg=str(spec))
    if spec.name != "noisy":
      np.testing.assert_allclose(out.ys - out.targets, noise, atol=1e-5, err_msg=str(spec))
    changed = np.any(out.xs != prompts.xs, axis=(0, 2))  # which points moved, over the batch
    expected = {"orthogonal": np.arange(7) == t, "in_context": np.arange(7) == t, "mismatch": np.arange(7) == t,
                "half_subspace": np.arange(7) != t, "scaled": np.ones(7, bool), "skewed": np.ones(7, bool),
                "w_scaled": np.zeros(7, bool), "noisy": np.zeros(7, bool)}[spec.name]
    np.testing.assert_array_equal(changed, expected, err_msg=str(spec))


def test_scaled_inputs_and_scaled_theta_are_exact():
  prompts = _prompts(tasks.TaskConfig(d=3, n_points=5, noise_var=0.2), 32)
  out = _shift("scaled=3", prompts)
  np.testing.assert_allclose(out.xs, 3 * prompts.xs, rtol=1e-6)
  np.testing.assert_allclose(out.targets, 3 * prompts.targets, rtol=1e-5, atol=1e-5)
  out = _shift("w_scaled=2.5", prompts)
  np.testing.assert_allclose(np.linalg.norm(out.w, axis=-1), 2.5 * np.linalg.norm(prompts.w, axis=-1), rtol=1e-6)
  np.testing.assert_array_equal(out.xs, prompts.xs)


def _cov_tolerance(sigma, n):
  """Standard deviation of each entry of the sample covariance of n Gaussian vectors with covariance Σ."""
  return np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n)


def test_skewed_inputs_have_the_skewed_covariance():
  d, decay = 4, 1.5
  prompts = _prompts(tasks.TaskConfig(d=d, n_points=10), 2000)
  out = _shift(f"skewed={decay}", prompts)
  sigma = shifts.skewed_covariance(jax.random.fold_in(KEY, 0), d, decay)
  # Σ = U diag(λ) Uᵀ: its spectrum is λ_j ∝ j^-a with trace d.
  np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(sigma))[::-1], shifts.skew_spectrum(d, decay), rtol=1e-5)
  assert np.trace(sigma) == pytest.approx(d, rel=1e-5)
  x = out.xs.reshape(-1, d).astype(np.float64)
  n = x.shape[0]
  emp = x.T @ x / n
  assert np.all(np.abs(emp - sigma) < 5 * _cov_tolerance(sigma, n)), (emp, sigma)
  assert not np.allclose(sigma, np.diag(np.diag(sigma)), atol=0.05)  # a rotated, not axis-aligned, spectrum


def test_noisy_adds_test_time_label_noise_only():
  noise_var, extra = 0.25, 0.75
  prompts = _prompts(tasks.TaskConfig(d=3, n_points=10, noise_var=noise_var), 2000)
  out = _shift(f"noisy={extra}", prompts)
  np.testing.assert_array_equal(out.targets, prompts.targets)
  np.testing.assert_array_equal(out.xs, prompts.xs)
  resid = (out.ys - out.targets).ravel().astype(np.float64)
  n = resid.size
  var = noise_var + extra
  assert abs(resid.mean()) < 5 * np.sqrt(var / n)
  assert abs(resid.var() - var) < 5 * var * np.sqrt(2 / n)  # SD of a Gaussian sample variance: σ²√(2/n)


def test_orthogonal_query_is_orthogonal_to_the_context_and_keeps_its_norm():
  d = 5
  prompts = _prompts(tasks.TaskConfig(d=d, n_points=8), 256)
  for t in range(d):
    out = _shift("orthogonal", prompts, t)
    q = out.xs[:, t]
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(prompts.xs[:, t], axis=-1), rtol=1e-5)
    cosines = np.einsum("bd,bjd->bj", q, out.xs[:, :t]) / (
        np.linalg.norm(q, axis=-1)[:, None] * np.linalg.norm(out.xs[:, :t], axis=-1))
    assert t == 0 or np.max(np.abs(cosines)) < 1e-4, (t, np.max(np.abs(cosines)))
    if t == 0:  # no context: the query is unchanged
      np.testing.assert_allclose(q, prompts.xs[:, 0], rtol=1e-6)
  assert shifts.SHIFTS["orthogonal"].defined(d - 1, d) and not shifts.SHIFTS["orthogonal"].defined(d, d)


def test_in_context_query_repeats_a_uniformly_chosen_context_point():
  t, n = 4, 4000
  prompts = _prompts(tasks.TaskConfig(d=3, n_points=6), n)
  out = _shift("in_context", prompts, t)
  match = np.all(out.xs[:, t][:, None, :] == prompts.xs[:, :t], axis=-1)  # [B, t]
  assert np.all(match.sum(-1) == 1)  # exactly one context point (inputs are a.s. distinct)
  counts = match.sum(0)
  p = 1 / t
  assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p))), counts


def test_half_subspace_context_has_rank_d_over_2_and_keeps_its_mean_norm():
  d, t = 6, 5
  prompts = _prompts(tasks.TaskConfig(d=d, n_points=9), 1000)
  out = _shift("half_subspace", prompts, t)
  context = np.delete(out.xs, t, axis=1).astype(np.float64)
  assert {int(np.linalg.matrix_rank(c, tol=1e-4)) for c in context} == {d // 2}
  np.testing.assert_array_equal(out.xs[:, t], prompts.xs[:, t])
  sq = np.sum(context**2, axis=-1).ravel()
  k = d // 2
  # ||x'||² = (d/k)·χ²_k: mean d, variance (d/k)²·2k
  assert abs(sq.mean() - d) < 5 * (d / k) * np.sqrt(2 * k / sq.size)
  # every prompt has its own subspace
  assert np.linalg.matrix_rank(np.concatenate([context[0], context[1]]), tol=1e-4) > k


def test_mismatch_query_comes_from_the_test_covariance():
  d, t, decay = 3, 2, 1.0
  prompts = _prompts(tasks.TaskConfig(d=d, n_points=4), 8000)
  out = _shift(f"mismatch={decay}", prompts, t)
  np.testing.assert_array_equal(np.delete(out.xs, t, 1), np.delete(prompts.xs, t, 1))
  sigma = shifts.skewed_covariance(jax.random.fold_in(KEY, 0), d, decay)
  q = out.xs[:, t].astype(np.float64)
  emp = q.T @ q / q.shape[0]
  assert np.all(np.abs(emp - sigma) < 5 * _cov_tolerance(sigma, q.shape[0])), (emp, sigma)


def test_shift_is_vmappable_and_jittable_with_a_traced_query_index():
  prompts = _prompts(tasks.TaskConfig(d=3, n_points=5), 8)
  (spec,) = shifts.parse("in_context")
  batched = jax.jit(jax.vmap(lambda t: shifts.transform(spec, KEY, prompts, t)))(np.arange(1, 5))
  for i, t in enumerate(range(1, 5)):
    np.testing.assert_array_equal(np.asarray(batched.xs[i]), _shift("in_context", prompts, t).xs)


def test_undefined_shifts_are_named():
  with pytest.raises(ValueError, match="orthogonal.*n < d"):
    shifts.check_task(shifts.ShiftSpec("orthogonal"), 3, [5])
  with pytest.raises(ValueError, match="half_subspace"):
    shifts.check_task(shifts.ShiftSpec("half_subspace"), 1, [0, 1, 2])
  shifts.check_task(shifts.ShiftSpec("orthogonal"), 3, [0, 1, 2, 3])
