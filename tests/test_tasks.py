"""Task samplers: moments within statistical tolerances, determinism, jit/vmap, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl import tasks

KEY = jax.random.PRNGKey(0)


def _batch(cfg, n=4000, key=KEY):
  return jax.tree.map(np.asarray, jax.jit(tasks.sample_batch, static_argnums=(1, 2))(key, cfg, n))


def test_shapes_and_label_model():
  cfg = tasks.TaskConfig(d=4, n_points=7, noise_var=0.25)
  b = _batch(cfg, 3000)
  assert b.xs.shape == (3000, 7, 4) and b.ys.shape == (3000, 7) and b.w.shape == (3000, 4)
  np.testing.assert_allclose(b.targets, np.einsum("bnd,bd->bn", b.xs, b.w), rtol=1e-5, atol=1e-5)
  noise = (b.ys - b.targets).ravel()
  se = 0.25 * np.sqrt(2 / noise.size)  # sd of the sample variance
  assert abs(noise.var() - 0.25) < 4 * se
  assert abs(noise.mean()) < 4 * 0.5 / np.sqrt(noise.size)


def test_default_prior_has_unit_norm_and_isotropic_inputs():
  cfg = tasks.TaskConfig(d=5, n_points=4)
  b = _batch(cfg, 8000)
  sq_norm = (b.w ** 2).sum(-1)
  assert abs(sq_norm.mean() - 1.0) < 4 * sq_norm.std() / np.sqrt(sq_norm.size)
  cov = np.cov(b.xs.reshape(-1, 5).T)
  np.testing.assert_allclose(cov, np.eye(5), atol=0.04)


@pytest.mark.parametrize("kind,rho", [("toeplitz", 0.6), ("equicorrelated", 0.4)])
def test_correlated_inputs_have_the_requested_covariance(kind, rho):
  cfg = tasks.TaskConfig(d=4, n_points=5, cov=kind, rho=rho)
  b = _batch(cfg, 8000)
  emp = np.cov(b.xs.reshape(-1, 4).T)
  np.testing.assert_allclose(emp, tasks.covariance(cfg), atol=0.04)
  assert abs(emp[0, 1] - rho) < 0.04


def test_given_covariance_and_prior_mean():
  sigma = ((2.0, 0.5), (0.5, 1.0))
  cfg = tasks.TaskConfig(d=2, n_points=3, cov="given", cov_matrix=sigma, prior_mean=(1.0, -2.0), w_var=0.09)
  b = _batch(cfg, 8000)
  np.testing.assert_allclose(np.cov(b.xs.reshape(-1, 2).T), np.array(sigma), atol=0.06)
  np.testing.assert_allclose(b.w.mean(0), [1.0, -2.0], atol=4 * 0.3 / np.sqrt(8000))
  np.testing.assert_allclose(b.w.var(0), [0.09, 0.09], rtol=0.1)


def test_sampled_prior_mean_has_the_requested_norm_and_is_fixed_per_task_seed():
  cfg = tasks.TaskConfig(d=6, prior_mean_norm=2.0, task_seed=3)
  mean = tasks.prior_mean(cfg)
  assert np.isclose(np.linalg.norm(mean), 2.0)
  np.testing.assert_array_equal(mean, tasks.prior_mean(tasks.TaskConfig(d=6, prior_mean_norm=2.0, task_seed=3)))
  assert not np.allclose(mean, tasks.prior_mean(tasks.TaskConfig(d=6, prior_mean_norm=2.0, task_seed=4)))


def test_local_examples_concentrate_around_the_query():
  cfg = tasks.TaskConfig(d=3, n_points=6, local_radius=0.2)
  b = _batch(cfg, 6000)
  offsets = b.xs[:, :-1] - b.xs[:, -1:]
  np.testing.assert_allclose(offsets.reshape(-1, 3).var(0), [0.04] * 3, rtol=0.08)
  np.testing.assert_allclose(b.xs[:, -1].var(0), [1.0] * 3, rtol=0.08)


def test_sparse_family_has_exactly_s_nonzeros_with_uniform_support():
  cfg = tasks.TaskConfig(family="sparse", d=10, sparsity=3, w_var=1.0, n_points=2)
  b = _batch(cfg, 6000)
  nonzero = b.w != 0
  assert (nonzero.sum(-1) == 3).all()
  freq = nonzero.mean(0)
  np.testing.assert_allclose(freq, 0.3, atol=4 * np.sqrt(0.3 * 0.7 / 6000))
  np.testing.assert_allclose(b.w[nonzero].var(), 1.0, rtol=0.06)


def test_task_pool_draws_only_pool_members_uniformly():
  cfg = tasks.TaskConfig(d=3, n_points=2, pool_size=4, task_seed=7)
  pool = tasks.task_pool(cfg)
  assert pool.shape == (4, 3) and len({tuple(r) for r in pool.round(6)}) == 4
  b = _batch(cfg, 4000)
  index = np.argmin(((b.w[:, None, :] - pool[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_allclose(b.w, pool[index], atol=1e-6)
  np.testing.assert_allclose(np.bincount(index, minlength=4) / 4000, 0.25, atol=4 * np.sqrt(0.25 * 0.75 / 4000))


def test_sampling_is_deterministic_in_seed_and_step():
  cfg = tasks.TaskConfig(d=3, n_points=5)
  seed_key = jax.random.PRNGKey(11)
  a = tasks.sample_batch(tasks.batch_key(seed_key, 5), cfg, 8)
  b = jax.jit(tasks.sample_batch, static_argnums=(1, 2))(tasks.batch_key(seed_key, 5), cfg, 8)
  c = tasks.sample_batch(tasks.batch_key(seed_key, 6), cfg, 8)
  np.testing.assert_allclose(a.xs, b.xs, rtol=1e-6)
  assert not np.allclose(a.xs, c.xs)


def test_vmap_over_keys_equals_loop():
  cfg = tasks.TaskConfig(d=2, n_points=3, noise_var=0.1)
  keys = jax.random.split(KEY, 5)
  batched = jax.vmap(lambda k: tasks.sample_prompt(k, cfg))(keys)
  for i, k in enumerate(keys):
    one = tasks.sample_prompt(k, cfg)
    np.testing.assert_allclose(batched.ys[i], one.ys, rtol=1e-6)


def test_mask_dims_zeroes_inactive_coordinates_and_keeps_labels_consistent():
  cfg = tasks.TaskConfig(d=5, n_points=4, noise_var=0.5)
  b = tasks.sample_batch(KEY, cfg, 16)
  m = jax.jit(tasks.mask_dims)(b, jnp.asarray(2))
  assert np.all(np.asarray(m.xs)[..., 2:] == 0) and np.all(np.asarray(m.w)[..., 2:] == 0)
  np.testing.assert_allclose(m.targets, np.einsum("bnd,bd->bn", b.xs[..., :2], b.w[..., :2]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.ys - m.targets, b.ys - b.targets, atol=1e-5)


def test_user_registered_family():
  @tasks.register_family("constant_one")
  def _ones(key, cfg):
    del key
    return jnp.ones((cfg.d,))

  b = tasks.sample_batch(KEY, tasks.TaskConfig(family="constant_one", d=3, n_points=4), 2)
  np.testing.assert_allclose(b.targets, b.xs.sum(-1), rtol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    (dict(d=0), "d"),
    (dict(family="sparse", d=3, sparsity=4), "sparsity"),
    (dict(noise_var=-0.1), "noise_var"),
    (dict(family="nope"), "family"),
    (dict(d=2, cov="given", cov_matrix=((1.0, 2.0), (2.0, 1.0))), "cov_matrix"),
    (dict(d=2, cov="given", cov_matrix=((1.0, 0.0, 0.0),)), "cov_matrix"),
    (dict(cov="toeplitz", rho=1.0), "rho"),
    (dict(d=3, cov="equicorrelated", rho=-0.9), "rho"),
    (dict(d=2, prior_mean=(1.0,)), "prior_mean"),
    (dict(n_points=0), "n_points"),
    (dict(local_radius=-1.0), "local_radius"),
    (dict(pool_size=0), "pool_size"),
])
def test_bad_config_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=rf"TaskConfig\.{field}="):
    tasks.TaskConfig(**kwargs)


def test_sparse_support_under_a_dims_curriculum_stays_inside_the_active_coordinates():
  """With n_active_dims (traced), every w has exactly s non-zeros, all among the first n_active coordinates,
  the support uniform among them (each active coordinate in it with probability s/n_active)."""
  cfg = tasks.TaskConfig(family="sparse", d=10, sparsity=3, w_var=1.0, n_points=2)
  sample = jax.jit(tasks.sample_batch, static_argnums=(1, 2))
  for n_active in (3, 6, 10):
    b = jax.tree.map(np.asarray, sample(KEY, cfg, 6000, jnp.asarray(n_active)))
    nonzero = b.w != 0
    assert (nonzero.sum(-1) == 3).all()
    assert not nonzero[:, n_active:].any()
    p = 3 / n_active
    np.testing.assert_allclose(nonzero[:, :n_active].mean(0), p, atol=4 * np.sqrt(p * (1 - p) / 6000) + 1e-9)
  masked = jax.tree.map(np.asarray, tasks.mask_dims(sample(KEY, cfg, 64, jnp.asarray(4)), 4))
  assert ((masked.w != 0).sum(-1) == 3).all()  # masking the inputs afterwards keeps all s entries


@pytest.mark.parametrize("variants", [(), ("noise_var=0.5",)], ids=["task", "task_variants"])
def test_engine_draws_sparse_supports_from_the_active_dims(variants):
  """The training step's own batch (read out of the compiled step) is s-sparse inside the active coordinates, also
  when the runs' task values are traced (``train.task_variants``), and a dims curriculum starting below s is a
  config error naming the field."""
  from jaxicl import configs, train
  from jaxicl.models import ModelConfig
  cfg = configs.Config(task=tasks.TaskConfig(family="sparse", d=6, sparsity=2, w_var=1.0, n_points=4),
                       model=ModelConfig(name="gpt2", width=8, n_layers=1, heads=(1,), max_points=4),
                       curriculum=configs.CurriculumConfig(dims_start=3, every=5),
                       train=configs.TrainConfig(steps=10, batch_size=64, task_variants=variants))
  seen = []
  real = tasks.mask_dims

  def spy(prompts, n):
    jax.debug.callback(lambda w, n: seen.append((np.asarray(w), np.asarray(n))), prompts.w, n)
    return real(prompts, n)

  try:
    tasks.mask_dims = spy
    engine = train.Engine(cfg)
    jax.block_until_ready(engine.run_chunk(engine.init(), 1))
  finally:
    tasks.mask_dims = real
  assert seen
  for w, n in seen:
    assert np.all(n == 3)
    nonzero = w.reshape(-1, 6) != 0
    assert (nonzero.sum(-1) == 2).all() and not nonzero[:, 3:].any()
  with pytest.raises(ValueError, match=r"curriculum\.dims_start=1"):
    configs.Config(task=cfg.task, model=cfg.model, curriculum=configs.CurriculumConfig(dims_start=1))


def test_traced_sparse_sampler_draws_the_plain_samplers_w():
  """For the sparse family, sample_batch_traced (per-run task values) draws exactly the w of sample_batch from the
  same key, inside the active dims under a curriculum, and labels with the run's own noise σ² (Monte Carlo,
  2048 prompts × 5 points: the variance estimate of ε has SE ≈ σ²·√(2/10240) ≈ 0.0035, tolerance 0.02)."""
  cfg = tasks.TaskConfig(family="sparse", d=10, sparsity=3, w_var=1.0, n_points=5, noise_var=0.25)
  tp = tasks.task_params(cfg)
  for n_active in (None, 4):
    traced = jax.tree.map(np.asarray, tasks.sample_batch_traced(KEY, cfg, tp, 2048, n_active))
    plain = jax.tree.map(np.asarray, tasks.sample_batch(KEY, cfg, 2048, n_active))
    np.testing.assert_array_equal(traced.w, plain.w)
    nonzero = traced.w != 0
    assert (nonzero.sum(-1) == 3).all() and (n_active is None or not nonzero[:, n_active:].any())
    np.testing.assert_allclose(np.var(traced.ys - traced.targets), 0.25, atol=0.02)
    np.testing.assert_allclose(traced.targets, np.einsum("bnd,bd->bn", traced.xs, traced.w), rtol=1e-5, atol=1e-5)


def test_traced_sampler_is_padding_invariant_and_has_the_scenario_distribution():
  """sample_prompt_traced: the first D context points and the query do not depend on the padded length; inputs
  have covariance Σ = (1-ρ)I + ρ11ᵀ, local context points x_i - x_q have r²Σ, labels have noise σ² (Monte Carlo,
  n = 20000: the sample covariance's entries have SE ≤ √(2/n)·max Σ_ii ≈ 0.01, tolerance 0.06)."""
  small = tasks.TaskConfig(d=3, n_points=5, noise_var=0.5, cov="equicorrelated", rho=0.5, local_radius=2.0)
  big = dataclasses.replace(small, n_points=9)
  tp = tasks.task_params(small)
  key = jax.random.PRNGKey(0)
  a = tasks.sample_batch_traced(key, small, tp, 4)
  b = tasks.sample_batch_traced(key, big, tp, 4)
  np.testing.assert_array_equal(np.asarray(a.xs[:, :4]), np.asarray(b.xs[:, :4]))
  np.testing.assert_array_equal(np.asarray(a.xs[:, -1]), np.asarray(b.xs[:, -1]))
  np.testing.assert_array_equal(np.asarray(a.ys[:, -1]), np.asarray(b.ys[:, -1]))
  p = tasks.sample_batch_traced(jax.random.PRNGKey(1), small, tp, 20000)
  sigma = tasks.covariance(small)
  xq, ctx = np.asarray(p.xs[:, -1]), np.asarray(p.xs[:, 0])
  np.testing.assert_allclose(np.cov(xq.T), sigma, atol=0.06)
  np.testing.assert_allclose(np.cov((ctx - xq).T), 4.0 * sigma, atol=0.25)
  noise = np.asarray(p.ys - p.targets)
  assert abs(noise.var() - 0.5) < 0.03
  w = np.asarray(p.w)
  np.testing.assert_allclose(w.var(0), small.tau2, rtol=0.06)
  iid = tasks.task_params(tasks.TaskConfig(d=3, n_points=5))
  q = tasks.sample_batch_traced(jax.random.PRNGKey(2), small, iid, 20000)
  np.testing.assert_allclose(np.cov(np.asarray(q.xs[:, 0]).T), np.eye(3), atol=0.06)
