"""Tests of jaxicl.theory: theory.md's reference values, the closed forms, and Monte Carlo checks of every
closed form against the same predictor (tolerance: 4 standard errors, plus the known finite-D bias of a single
head at its optimum, which decays slowly because its higher moments diverge)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl import tasks
from jaxicl import theory as T
from jaxicl.theory import cli, kernels, scenarios

# theory.md, "Reference values": (σ², d, C_single, s*, C_multi, ratio)
REFERENCE = [
    (0, 1, 8.436, 0.2324, 2, 4.22), (0, 2, 11.090, 0.1910, 3, 3.70), (0, 3, 13.768, 0.1615, 4, 3.44),
    (0, 5, 19.156, 0.1228, 6, 3.19), (0, 10, 32.695, 0.0764, 11, 2.97), (0, 20, 59.843, 0.0434, 21, 2.85),
    (0.25, 5, 23.264, 0.1259, 7.25, 3.21), (1, 5, 35.526, 0.1312, 11, 3.23), (1, 10, 62.624, 0.0796, 21, 2.98),
]


def within(mc, expected, n_se=4.0, rel=0.0):
  """|MC − expected| <= n_se·se + rel·|expected| (elementwise)."""
  mean, se = np.asarray(mc.mean), np.asarray(mc.se)
  return np.all(np.abs(mean - expected) <= n_se * se + rel * np.abs(expected))


# --------------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("sigma2, d, c1, s_star, cm, ratio", REFERENCE)
def test_reference_table(sigma2, d, c1, s_star, cm, ratio):
  single = T.c_single(d, sigma2)
  assert abs(single.constant - c1) < 5e-4
  assert abs(single.s - s_star) < 5e-5
  assert abs(T.c_multi(d, sigma2) - cm) < 1e-12
  assert abs(single.constant / T.c_multi(d, sigma2) - ratio) < 5e-3


@pytest.mark.parametrize("d, sigma2, tau2", [(1, 0.0, None), (5, 0.25, None), (5, 1.0, 0.5), (10, 0.0, 0.02)])
def test_single_head_root_is_the_grid_minimum(d, sigma2, tau2):
  single = T.c_single(d, sigma2, tau2)
  grid = np.linspace(1e-3, 0.499, 4000)
  values = [T.single_head_constant(s, d, sigma2, tau2) for s in grid]
  assert single.constant <= min(values) + 1e-9
  assert abs(grid[int(np.argmin(values))] - single.s) < 2e-3
  assert abs(single.w - np.sqrt(single.s)) < 1e-12


def test_g_and_pair_constant_match_theory_md_formulas():
  d, sigma2 = 5, 0.25
  t = np.array([-0.3, 0.0, 0.1, 0.4])
  g_md = (1 + sigma2) * (1 - 2 * t) ** (-d / 2) + t * (1 - 2 * t) ** (-d / 2 - 1)
  assert np.allclose(T.g(t, d, sigma2), g_md, rtol=1e-13)
  s = np.array([1e-3, 0.05, 0.2, 0.45])
  c2_md = (((1 - s) * (1 - 2 * s) ** (-d / 2 - 1) - (1 + s) * (1 + 2 * s) ** (-d / 2 - 1)) / (2 * s)
           + sigma2 * ((1 - 2 * s) ** (-d / 2) - (1 + 2 * s) ** (-d / 2)) / (2 * s))
  assert np.allclose(T.pair_constant(s, d, sigma2), c2_md, rtol=1e-9)


@pytest.mark.parametrize("d, sigma2", [(1, 0.0), (5, 0.0), (5, 1.0), (20, 0.25)])
def test_pair_constant_limit_and_monotone(d, sigma2):
  limit = d + 1 + d * sigma2
  assert T.pair_constant(0.0, d, sigma2) == pytest.approx(limit, rel=1e-14)
  assert T.pair_constant(1e-8, d, sigma2) == pytest.approx(limit, rel=1e-12)
  s = np.linspace(1e-6, 0.49, 500)
  values = T.pair_constant(s, d, sigma2)
  assert np.all(np.diff(values) > 0) and values[0] > limit
  assert T.c_multi(d, sigma2) == pytest.approx(limit)


def test_general_heads_at_the_pair_equal_c2():
  d, sigma2, w = 5, 0.25, 0.3
  pair_c = np.array([1, -1]) / (2 * w)
  assert T.head_constant(pair_c, [w, -w], d, sigma2) == pytest.approx(T.pair_constant(w * w, d, sigma2), rel=1e-12)
  c, value = T.optimal_output_weights([w, -w], d, sigma2)
  assert np.allclose(c, pair_c) and value == pytest.approx(T.pair_constant(w * w, d, sigma2), rel=1e-12)


def test_c_multi_is_a_lower_bound_of_random_heads():
  rng = np.random.default_rng(0)
  for _ in range(200):
    h = rng.integers(1, 6)
    w = rng.uniform(-0.7, 0.7, size=h)
    _, value = T.optimal_output_weights(w, 4, 0.5)
    assert value >= T.c_multi(4, 0.5) * (1 - 1e-9)


def test_head_constant_needs_unbiased_weights_and_finite_gram():
  with pytest.raises(ValueError, match="sum_k c_k w_k"):
    T.head_constant([1.0, 1.0], [0.2, 0.3], 5, 0.0)
  with pytest.raises(ValueError, match="w="):
    T.head_gram([0.8], 5, 0.0)


def test_optimal_heads_h1_is_c_single_and_h2_approaches_c_multi():
  d, sigma2 = 5, 0.25
  one = T.optimal_heads(1, d, sigma2)
  single = T.c_single(d, sigma2)
  assert one.constant == pytest.approx(single.constant, rel=1e-8)
  assert abs(abs(one.w[0]) - single.w) < 1e-5
  two = T.optimal_heads(2, d, sigma2)
  assert T.c_multi(d, sigma2) <= two.constant <= T.c_multi(d, sigma2) + 1e-3
  assert two.constant == pytest.approx(T.pair_constant(two.w_min**2, d, sigma2), rel=1e-9)  # pair at the bound
  assert np.isclose(two.c @ two.w, 1.0) and np.allclose(np.abs(two.w), two.w_min, rtol=1e-6)
  four = T.optimal_heads(4, d, sigma2)
  assert T.c_multi(d, sigma2) <= four.constant < two.constant
  closer = T.optimal_heads(2, d, sigma2, w_min=0.01)
  assert closer.constant - T.c_multi(d, sigma2) < 1e-5


def test_tau2_scaling_closed_forms():
  # signal part scales with S = d·τ², noise part does not: C(S, σ²) = S·C(1, σ²/S)
  d, sigma2, tau2 = 5, 0.25, 0.5
  S = d * tau2
  assert T.c_multi(d, sigma2, tau2) == pytest.approx(d * (S + sigma2) + S)
  assert T.c_single(d, sigma2, tau2).constant == pytest.approx(S * T.c_single(d, sigma2 / S).constant, rel=1e-12)
  assert T.c_single(d, sigma2, tau2).s == pytest.approx(T.c_single(d, sigma2 / S).s, rel=1e-12)
  assert T.pair_constant(0.01, d, sigma2, tau2) == pytest.approx(S * T.pair_constant(0.01, d, sigma2 / S), rel=1e-12)


def test_invalid_input_names_the_field():
  with pytest.raises(ValueError, match="d=0"):
    T.c_single(0, 0.0)
  with pytest.raises(ValueError, match="noise_var=-1"):
    T.c_multi(3, -1.0)
  with pytest.raises(ValueError, match="tau2=-0.1"):
    T.c_multi(3, 0.0, -0.1)
  with pytest.raises(ValueError, match="p=10"):
    T.rank_limited_loss(5, 10, 3, 0.0, 100)
  with pytest.raises(ValueError, match="prior_mean"):
    T.DataModel(d=3, prior_mean=(1.0, 2.0))


def test_x64_stays_local():
  before, dtype = jax.config.jax_enable_x64, jnp.ones(1).dtype
  T.optimal_output_weights([0.1, -0.1], 3, 0.0)
  T.mc_loss(T.DataModel(d=2), [1.0], [0.3], 10, n_prompts=16)
  with T.float64():
    assert jnp.ones(1).dtype == jnp.float64
  assert jax.config.jax_enable_x64 == before and jnp.ones(1).dtype == dtype


def test_data_model_from_task_config():
  cfg = tasks.TaskConfig(d=4, noise_var=0.5, cov="toeplitz", rho=0.3, prior_mean=(1.0, 0.0, 0.0, 0.0),
                         local_radius=0.2)
  model = T.DataModel.from_task_config(cfg)
  assert np.allclose(model.cov_matrix(), tasks.covariance(cfg))
  assert model.tau2_value == cfg.tau2 and model.local_radius == 0.2 and model.theta0()[0] == 1.0
  assert model.signal() == pytest.approx(1.0 + cfg.tau2 * 4)
  with pytest.raises(ValueError, match="family"):
    T.DataModel.from_task_config(tasks.TaskConfig(family="sparse", sparsity=2, d=4))


# -------------------------------------------------------------------------- general kernels, closed form


def test_matrix_kernel_closed_form_reduces_to_isotropic_and_block_forms():
  d, sigma2, tau2 = 4, 0.3, 0.4
  model = T.DataModel(d=d, noise_var=sigma2, tau2=tau2)
  w = np.array([0.3, -0.1, 0.2])
  c, value = T.optimal_output_weights(w, d, sigma2, tau2)
  asym = T.kernel_asymptotics(c, w, model)
  assert asym.bias < 1e-12 and abs(asym.cross) < 1e-10
  assert asym.variance == pytest.approx(value, rel=1e-10)
  # correlated inputs with W = w·Σ⁻¹ reduce to the isotropic formula at S = τ² tr Σ
  rng = np.random.default_rng(3)
  a = rng.normal(size=(d, d))
  cov = a @ a.T / d + 0.5 * np.eye(d)
  corr = T.DataModel(d=d, noise_var=sigma2, tau2=tau2, cov=cov)
  asym = T.kernel_asymptotics(c, w[:, None, None] * np.linalg.inv(cov), corr)
  assert asym.variance == pytest.approx(T.head_constant(c, w, d, sigma2, corr.signal() / d), rel=1e-9)
  # block kernels: the block closed forms, and the complementary-block pair constant
  blocks, wb = ((0, 1), (2, 3)), np.array([0.2, -0.3, 0.1])
  mats = scenarios._block_kernels(d, blocks, wb)
  with T.float64():
    full = kernels.quadratic_pieces(jnp.asarray(mats), jax.tree.map(jnp.asarray, kernels.model_consts(model)))
  block_of = np.array([0, 1, 0])
  overlap = (block_of[:, None] == block_of[None, :]) * 2.0
  m_mat, mu, m00, gram = scenarios.block_pieces(wb, overlap, np.full(3, 2.0), d, sigma2, tau2)
  for mine, ref in ((m_mat, full["M"]), (mu, full["mu"]), (m00, full["m00"]), (gram, full["G"])):
    assert np.allclose(mine, np.asarray(ref), rtol=1e-10)
  pair = T.kernel_asymptotics([5.0, -5.0], scenarios._block_kernels(d, blocks, np.array([0.2, -0.2])), model)
  assert pair.bias < 1e-12
  assert pair.variance == pytest.approx(T.block_pair_constant(0.04, (2, 2), sigma2, tau2), rel=1e-10)
  assert T.block_pair_constant(1e-7, (2, 2), sigma2, tau2) == pytest.approx(T.c_multi(d, sigma2, tau2), rel=1e-5)


# ------------------------------------------------------------------------------------------- Monte Carlo
# The Monte Carlo checks share a few compiled configurations (compilation dominates the run time):
#   radial path, d = 5, 2 parameter sets of 2 heads, D = 2000 (isotropic, τ², prior knowledge);
#   d = 4, 2 sets of 1 head, D = (200, 1600): radial / full / plain estimators (biased heads);
#   full path (matrix kernels), d = 4, 2 sets of 2 heads, D = 1000 (correlated features, rank-limited heads);
#   local examples, d = 2.
N_ISO, D_ISO = 12000, 2000


def one(res, k):
  """Parameter set k of a batched MCResult."""
  return T.MCResult(res.mean[k], res.se[k], res.D, res.n_prompts, None if res.cov is None else res.cov[k])


def pair(w):
  """(c, w) of the symmetric pair ±w."""
  return [1 / (2 * w), -1 / (2 * w)], [w, -w]


def single_and_pair(d, sigma2, tau2=None, w=0.1):
  """c [2, 2], w [2, 2]: the best single head (second head off) and the pair ±w."""
  single = T.c_single(d, sigma2, tau2)
  pc, pw = pair(w)
  return np.array([[1 / single.w, 0.0], pc]), np.array([[single.w, 0.0], pw]), single


def test_mc_isotropic_single_head_and_pair():
  """d = 5, σ² = 0 (theory.md's check): one head at s* and the pair w = ±0.1 on the same prompts."""
  c, w, single = single_and_pair(5, 0.0)
  res = T.mc_d_times_loss(T.DataModel(d=5), c, w, D_ISO, n_prompts=N_ISO, seed=1)
  assert within(one(res, 1), T.pair_constant(0.01, 5, 0.0))
  assert within(one(res, 0), single.constant, rel=0.03)
  assert res.mean[0] > 2.5 * res.mean[1]  # multi-head beats single-head by ≈ 3.2x


def test_mc_tau2_scaling():
  """τ² = 0.5 (S = 2.5) with noise: single head at its s* and a pair at w = ±0.1."""
  d, sigma2, tau2 = 5, 0.25, 0.5
  c, w, single = single_and_pair(d, sigma2, tau2)
  res = T.mc_d_times_loss(T.DataModel(d=d, noise_var=sigma2, tau2=tau2), c, w, D_ISO, n_prompts=N_ISO, seed=2)
  assert within(one(res, 1), T.pair_constant(0.01, d, sigma2, tau2))
  assert within(one(res, 0), single.constant, rel=0.03)
  # the τ² = 1/d constants would be far off: the scaling matters
  assert abs(res.mean[1] - T.pair_constant(0.01, d, sigma2)) > 20 * res.se[1]


def test_prior_knowledge_constants_and_mc():
  d, sigma2, kappa, w = 5, 0.5, 2.0, 0.1
  theta0 = np.array([0.6, 0.0, 0.8, 0.0, 0.0])
  strong = T.prior_knowledge(d, sigma2, 1.0, regime="strong", kappa=kappa)
  assert strong.multi.value == pytest.approx(d * kappa * d * sigma2 / (d * kappa + d * sigma2))
  s0 = strong.single.params
  assert s0["C0"] == pytest.approx(sigma2 * (d + 2) * ((d + 2) / d) ** (d / 2))
  # strong prior τ² = κ/D: shrunk pair and shrunk single head, with the prior path (offset = value shift = θ0)
  lam_m, lam_s = strong.multi.params["lambda"], strong.single.params["lambda"]
  pc, pw = pair(w)
  c = np.array([lam_s * np.array([1 / s0["w"], 0.0]), lam_m * np.array(pc)])
  ws = np.array([[s0["w"], 0.0], pw])
  model = T.DataModel(d=d, noise_var=sigma2, tau2=kappa / D_ISO, prior_mean=theta0)
  mc = T.mc_d_times_loss(model, c, ws, D_ISO, n_prompts=N_ISO, seed=5, offset=theta0, value_shift=theta0)
  tau2 = kappa / D_ISO
  finite_m = (1 - lam_m) ** 2 * d * kappa + lam_m**2 * T.pair_constant(w * w, d, sigma2, tau2)
  finite_s = (1 - lam_s) ** 2 * d * kappa + lam_s**2 * T.single_head_constant(s0["s"], d, sigma2, tau2)
  assert within(one(mc, 1), finite_m) and finite_m == pytest.approx(strong.multi.value, rel=0.02)  # O(1/D) apart
  assert within(one(mc, 0), finite_s, rel=0.03) and finite_s == pytest.approx(strong.single.value, rel=0.02)
  # weak prior: the same pair with and without the prior path
  weak = T.prior_knowledge(d, sigma2, 1.0)
  assert weak.multi.value == pytest.approx(T.c_multi(d, sigma2))
  assert weak.extras["multi_without_prior_path"].value == pytest.approx(T.c_multi(d, sigma2, 2.0 / d))
  model = T.DataModel(d=d, noise_var=sigma2, prior_mean=theta0)
  mc = T.mc_d_times_loss(model, [pc, pc], [pw, pw], D_ISO, n_prompts=N_ISO, seed=6,
                         offset=[theta0, 0 * theta0], value_shift=[theta0, 0 * theta0])
  assert within(mc, np.array([T.pair_constant(w * w, d, sigma2), T.pair_constant(w * w, d, sigma2, 2.0 / d)]))


D_BIAS = (200, 1600)


def test_mc_biased_heads_and_estimators():
  """Σ c_k w_k ≠ 1 leaves bias + (variance + cross)/D (checks the O(1) bias and the cross term); the radial,
  full conditional and plain-sampling estimators agree (prior mean, offset and value shift switched on)."""
  model = T.DataModel(d=4, noise_var=0.25, tau2=0.3)
  c, w = [[1.0], [1 / 0.35]], [[0.35], [0.35]]  # biased and unbiased single head
  res = T.mc_loss(model, c, w, D_BIAS, n_prompts=30000, seed=1)
  biased, unbiased = (T.kernel_asymptotics(ck, wk, model) for ck, wk in zip(c, w))
  assert biased.bias == pytest.approx(0.3 * 4 * 0.65**2) and unbiased.bias < 1e-12
  assert within(one(res, 0), np.array([biased.loss(n) for n in D_BIAS]), rel=0.005)
  # L(200) − L(1600) cancels the bias (and most of its noise): it measures (variance + cross)·(1/200 − 1/1600)
  diff, se = one(res, 0).contrast([1, -1])
  scale = 1 / D_BIAS[0] - 1 / D_BIAS[1]
  assert abs(diff - (biased.variance + biased.cross) * scale) < 4 * se + 0.05 * diff
  assert abs(diff - biased.variance * scale) > 4 * se + 0.05 * diff  # without the cross term: rejected
  # the unbiased head: C/D up to its finite-D bias
  assert within(T.MCResult(res.mean[1, 1], res.se[1, 1], D_BIAS[1], 0), unbiased.loss(D_BIAS[1]), rel=0.02)
  model = T.DataModel(d=4, noise_var=0.5, tau2=0.6, prior_mean=(0.3, -0.2, 0.1, 0.0))
  kw = dict(n_prompts=2000, offset=[0.1, 0.0, 0.0, 0.0], value_shift=[0.0, 0.2, 0.0, 0.0])
  radial = T.mc_loss(model, c, w, D_BIAS, seed=3, **kw)
  full = T.mc_loss(model, c, w, D_BIAS, seed=4, radial=False, **kw)
  plain = T.mc_loss(model, c, w, D_BIAS, seed=5, conditional=False, **kw)
  for a, b in ((radial, full), (radial, plain), (full, plain)):
    assert np.all(np.abs(a.mean - b.mean) <= 4 * np.hypot(a.se, b.se))
  assert np.all(radial.se <= plain.se)


N_FULL, D_FULL = 4000, 1000


def test_correlated_features_constants_and_mc():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 4))
  cov = a @ a.T / 4 + 0.3 * np.eye(4)  # tr Σ ≠ d, so S ≠ 1
  sigma2 = 0.25
  res = T.correlated_features(4, sigma2, cov_matrix=cov)
  model = T.DataModel(d=4, noise_var=sigma2, cov=cov)
  S = model.signal()
  assert abs(S - 1.0) > 0.2
  assert res.single.value == pytest.approx(T.c_single(4, sigma2, S / 4).constant)
  assert res.multi.value == pytest.approx(T.c_multi(4, sigma2, S / 4))
  inv = np.linalg.inv(cov)
  ws, w = res.single.params["w"], 0.1
  mats = np.stack([np.stack([ws * inv, 0 * inv]), np.stack([w * inv, -w * inv])])
  mc = T.mc_d_times_loss(model, [[1 / ws, 0.0], pair(w)[0]], mats, D_FULL, n_prompts=N_FULL, seed=3)
  assert within(one(mc, 1), T.pair_constant(w * w, 4, sigma2, S / 4))
  assert within(one(mc, 0), res.single.value, rel=0.04)
  # isotropic kernels W ∝ I keep an O(1) floor: the closed form equals the kernel bias at the optimal scale
  lam = res.extras["isotropic_kernel_floor"].params["lambda"]
  floor = T.kernel_asymptotics([lam / 0.2], [0.2], model).bias
  assert floor == pytest.approx(res.extras["isotropic_kernel_floor"].value, rel=1e-9) and floor > 0.01
  equi = T.correlated_features(4, 0.0, cov="equicorrelated", rho=0.5)  # tr Σ = d: the isotropic numbers
  assert equi.single.value == pytest.approx(T.c_single(4, 0.0).constant)


def test_rank_limited_heads():
  # p < d: the bias (1 − p/d)·S stays
  low = T.rank_limited_loss(4, 2, 2, 0.0, D_FULL)
  assert low.bias_floor == pytest.approx(0.5) and low.loss >= low.bias_floor
  one_head = T.rank_limited_loss(4, 2, 1, 0.0, D_FULL)
  assert one_head.bias_floor == pytest.approx(0.5) and one_head.blocks == ((0, 1),)
  # p = d, h = 2, r = d/2: complementary blocks with opposite signs come close to C_multi, above full-rank heads
  res = T.rank_limited_loss(4, 4, 2, 0.0, D_FULL)
  assert res.blocks == ((0, 1), (2, 3)) and res.bias_floor == 0.0
  assert res.w[0] * res.w[1] < 0 and abs(res.c.sum()) < 1e-6 * np.abs(res.c).max()
  assert res.full_rank_loss <= res.loss and res.d_times_loss < 1.01 * T.c_multi(4, 0.0)
  assert res.single_loss > 3 * res.loss
  c_general, loss_general = T.best_output_weights(res.kernels(), T.DataModel(d=4), D_FULL)  # matrix-kernel pieces
  assert np.allclose(c_general, res.c, rtol=1e-6) and loss_general == pytest.approx(res.loss, rel=1e-9)
  # a single head is the same optimum whatever p >= d
  assert T.rank_limited_loss(4, 8, 1, 0.0, D_FULL).loss == pytest.approx(res.single_loss, rel=1e-9)
  # Monte Carlo of the block optimiser and of a biased rank-2 head (bias (1 − 2/4)·S, matrix kernels)
  biased = np.zeros((2, 4, 4))
  biased[0] = 0.3 * np.diag([1.0, 1.0, 0.0, 0.0])
  model = T.DataModel(d=4)
  mc = T.mc_loss(model, [res.c, [1 / 0.3, 0.0]], [res.kernels(), biased], D_FULL, n_prompts=N_FULL, seed=7)
  assert within(one(mc, 0), res.loss)
  asym = T.kernel_asymptotics([1 / 0.3, 0.0], biased, model)
  assert asym.bias == pytest.approx(0.5) and within(one(mc, 1), asym.loss(D_FULL))


def test_local_examples_constants_and_mc():
  d, sigma2, radius = 2, 0.0, 1.0
  res = T.local_examples(d, sigma2, radius)
  # the polynomial root is the minimum of g(ω²)/(1 + rω)² over a grid; multi-head infimum below it
  omegas = np.linspace(-0.7, 0.7, 20001)
  values = [T.local_gram([om / radius], d, sigma2, radius)[0, 0] / (1 + radius * om) ** 2 for om in omegas]
  assert res.single.value <= min(values) + 1e-9
  assert res.multi.value < res.single.value < res.extras["plain_average"].value
  _, tiny = T.local_optimal_output_weights([0.0, 1e-3], d, sigma2, radius)
  assert tiny == pytest.approx(res.multi.value, rel=1e-5)
  fw, fc = res.multi.params["finite_w"], res.multi.params["finite_c"]
  mc = T.mc_d_times_loss(T.DataModel(d=d, noise_var=sigma2, local_radius=radius),
                         [[res.single.params["c"], 0.0], list(fc)], [[res.single.params["w"], 0.0], list(fw)], 1000,
                         n_prompts=12000, seed=4)
  assert within(one(mc, 0), res.single.value)
  assert within(one(mc, 1), res.multi.params["finite_constant"])
  assert mc.mean[0] > mc.mean[1]  # (the two checks above already tell the two values apart)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_json(capsys):
  assert cli.main(["--d", "5", "--noise-var", "0.25", "--heads", "2", "--p", "8", "--D", "500", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["C_single"] == pytest.approx(23.264, abs=5e-4) and out["s_star"] == pytest.approx(0.1259, abs=5e-5)
  assert out["C_multi"] == pytest.approx(7.25) and out["ratio"] == pytest.approx(3.21, abs=5e-3)
  assert out["heads"]["h"] == 2 and 7.25 <= out["heads"]["constant"] < 7.251
  assert out["rank_limited"]["r"] == 4 and out["rank_limited"]["bias_floor"] == 0.0
  assert cli.main(["--d", "5", "--heads", "1"]) == 0
  text = capsys.readouterr().out
  assert "C_single" in text and "19.155" in text and out["rank_limited"] is not None


@pytest.mark.parametrize("argv, field", [(["--d", "0"], "d=0"), (["--d", "3", "--noise-var", "-1"], "noise_var=-1.0"),
                                         (["--d", "5", "--p", "10", "--heads", "3"], "p=10")])
def test_cli_bad_input(argv, field, capsys):
  assert cli.main(argv) == 2
  assert field in capsys.readouterr().err
