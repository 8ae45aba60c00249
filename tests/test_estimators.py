"""Classical ICL estimators: closed forms, prefix-wise = separate fits, sklearn's Lasso, Bayes optimality,
jit/vmap, tuning and bad input."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.linear_model import Lasso

from jaxicl import estimators as E, evaluate
from jaxicl import tasks

KEY = jax.random.PRNGKey(0)


def _problem(n_points: int = 9, d: int = 4, seed: int = 0, noise: float = 0.1):
  """Random float32 prompt: xs [N, d] ~ N(0, I), ys = xs w + noise."""
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((n_points, d))
  ys = xs @ rng.standard_normal(d) + noise * rng.standard_normal(n_points)
  return xs.astype(np.float32), ys.astype(np.float32)


def _batch(cfg, n, key=KEY):
  return jax.tree.map(np.asarray, jax.jit(tasks.sample_batch, static_argnums=(1, 2))(key, cfg, n))


def test_ols_and_ridge_equal_numpy_closed_forms_for_every_prefix():
  xs, ys = _problem(n_points=9, d=4)
  X, y = xs.astype(np.float64), ys.astype(np.float64)
  ols, ridge = np.asarray(E.ols(xs, ys)), np.asarray(E.ridge(xs, ys, lam=0.5))
  for i in range(9):
    w_ols = np.linalg.pinv(X[:i]) @ y[:i] if i else np.zeros(4)
    w_ridge = np.linalg.solve(X[:i].T @ X[:i] + 0.5 * np.eye(4), X[:i].T @ y[:i])
    np.testing.assert_allclose(ols[i], X[i] @ w_ols, rtol=1e-3, atol=1e-4, err_msg=f"ols prefix {i}")
    np.testing.assert_allclose(ridge[i], X[i] @ w_ridge, rtol=1e-4, atol=1e-5, err_msg=f"ridge prefix {i}")
  # n < d: the minimum-norm interpolant (lstsq's answer), and λ = 0 ridge is the same thing.
  w = np.asarray(E.ols_weights(xs[:2], ys[:2]))
  np.testing.assert_allclose(w, np.linalg.lstsq(X[:2], y[:2], rcond=None)[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(xs[:2] @ w, ys[:2], atol=1e-5)
  np.testing.assert_allclose(E.ridge(xs, ys, lam=0.0), ols, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name,hparams,fit",
    [
        ("ridge", {"lam": 0.3}, lambda X, y, xq: E.ridge_weights(X, y, 0.3) @ xq),
        ("gd", {"lr": 0.1, "steps": 7}, lambda X, y, xq: E.gd_weights(X, y, 0.1, 7) @ xq),
        ("pto", {"lr": 0.2, "steps": 5}, lambda X, y, xq: E.pto_weights(X, y, 0.2, 5) @ xq),
        ("knn", {"k": 2}, lambda X, y, xq: E.knn_predict(X, y, xq, 2)),
        ("averaging", {}, lambda X, y, xq: E.averaging_weights(X, y) @ xq),
    ],
)
def test_prefixwise_equals_separate_fits(name, hparams, fit):
  xs, ys = _problem(n_points=7, d=3, seed=1)
  preds = np.asarray(E.get_estimator(name, **hparams)(xs, ys))
  assert preds.shape == (7,) and preds[0] == 0.0
  separate = [float(jax.jit(fit)(xs[:i], ys[:i], xs[i])) for i in range(1, 7)]
  np.testing.assert_allclose(preds[1:], separate, rtol=1e-5, atol=1e-6)


def _sklearn_lasso(X, y, alpha):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a ConvergenceWarning would make the reference meaningless
    return Lasso(alpha=alpha, fit_intercept=False, tol=1e-10, max_iter=100000).fit(X, y).coef_


def test_prefixwise_lasso_equals_separate_sklearn_fits():
  xs, ys = _problem(n_points=10, d=4, seed=2)
  preds = np.asarray(jax.jit(lambda x, y: E.lasso(x, y, alpha=0.05))(xs, ys))  # float32 path
  X, y = xs.astype(np.float64), ys.astype(np.float64)
  assert preds[0] == 0.0
  for i in range(1, 10):
    np.testing.assert_allclose(preds[i], X[i] @ _sklearn_lasso(X[:i], y[:i], 0.05), atol=1e-4, err_msg=f"prefix {i}")


_LASSO64 = E.in_float64(jax.jit(E.lasso_weights))


def test_lasso_matches_sklearn():
  rng = np.random.default_rng(0)
  rows, cols = 32, 20  # every problem is embedded in one padded shape: masked rows, all-zero columns
  for n, d, alpha in [(30, 8, 0.1), (30, 8, 0.005), (6, 15, 0.05), (12, 20, 0.01), (18, 20, 0.001)]:
    X = rng.standard_normal((n, d))
    y = X @ (rng.standard_normal(d) * (rng.random(d) < 0.3)) + 0.1 * rng.standard_normal(n)
    reference = _sklearn_lasso(X, y, alpha)
    X_pad = np.zeros((rows, cols))
    X_pad[:n, :d], X_pad[n:] = X, rng.standard_normal((rows - n, cols))
    y_pad = np.r_[y, rng.standard_normal(rows - n)]
    mask = (np.arange(rows) < n).astype(np.float64)
    w = np.asarray(_LASSO64(X_pad, y_pad, alpha, mask))
    np.testing.assert_allclose(w[:d], reference, atol=1e-4, err_msg=f"n={n} d={d} alpha={alpha}")
    assert np.all(w[d:] == 0.0)
    alpha_max = np.abs(X.T @ y).max() / n  # above it everything is thresholded away
    assert np.all(np.asarray(_LASSO64(X_pad, y_pad, 1.01 * alpha_max, mask)) == 0.0)
    assert np.any(np.asarray(_LASSO64(X_pad, y_pad, 0.9 * alpha_max, mask)) != 0.0)
  # float32 and no mask: fine for a moderate α.
  w32 = jax.jit(E.lasso_weights)(X.astype(np.float32), y.astype(np.float32), 0.05)
  np.testing.assert_allclose(w32, _sklearn_lasso(X, y, 0.05), atol=1e-4)


def test_lasso_path_equals_sklearn_at_every_alpha():
  """One homotopy path through an unsorted α grid (a duplicate, one above α_max) gives sklearn's fit at each α,
  also with masked rows (a prefix)."""
  rng = np.random.default_rng(5)
  n, d, rows = 25, 12, 30
  X = rng.standard_normal((rows, d))
  y = X @ (rng.standard_normal(d) * (rng.random(d) < 0.3)) + 0.1 * rng.standard_normal(rows)
  mask = (np.arange(rows) < n).astype(np.float64)
  alpha_max = np.abs(X[:n].T @ y[:n]).max() / n
  alphas = np.array([0.01, 2 * alpha_max, 0.3, 1e-4, 0.03, 0.01, 0.1])
  w = np.asarray(E.in_float64(jax.jit(E.lasso_path_weights))(X, y, alphas, mask))
  assert w.shape == (len(alphas), d)
  for k, alpha in enumerate(alphas):
    np.testing.assert_allclose(w[k], _sklearn_lasso(X[:n], y[:n], alpha), atol=1e-6, err_msg=f"alpha={alpha}")
  assert np.all(w[1] == 0.0) and np.array_equal(w[0], w[5])


def test_lasso_grid_on_one_path_equals_separate_fits():
  """grid_risks and tune solve the lasso α grid on one path; the risks equal separate per-α fits."""
  prompts = tasks.sample_batch(jax.random.PRNGKey(4), tasks.TaskConfig(family="sparse", d=6, sparsity=2,
                                                                      n_points=9, noise_var=0.01), 12)
  grid = {"alpha": (0.3, 0.001, 0.03)}
  risks, points = E.grid_risks("lasso", grid, prompts)
  lasso64 = E.in_float64(jax.jit(jax.vmap(E.lasso, in_axes=(0, 0, None))))  # the pure path, one α at a time
  for g, point in enumerate(points):
    preds = np.asarray(lasso64(prompts.xs, prompts.ys, np.float64(point["alpha"])), np.float64)
    separate = np.mean((preds - np.asarray(prompts.targets, np.float64)) ** 2, axis=0)
    np.testing.assert_allclose(risks[g], separate, rtol=1e-6, atol=1e-9)
  best, tune_risks = E.tune("lasso", grid, prompts.xs, prompts.ys, prompts.targets, n_context=5)
  np.testing.assert_allclose(tune_risks, risks[:, 5], rtol=1e-6, atol=1e-9)
  assert best == {"alpha": grid["alpha"][int(np.argmin(risks[:, 5]))]}


def test_lasso_grid_predictions_equal_the_prefixwise_lasso_at_every_alpha():
  """The host driver (one path per prompt and prefix, coordinate descent only where the Newton check failed)
  equals the pure prefix-wise lasso (every problem through the whole vmapped solve) at each α; the case has
  problems that need the coordinate-descent refinement, so both stages are compared."""
  prompts = tasks.sample_batch(jax.random.PRNGKey(3), tasks.TaskConfig(family="sparse", d=6, sparsity=2,
                                                                      n_points=10, noise_var=0.01), 16)
  alphas = (1e-4, 0.1, 1e-5, 1e-3)
  with jax.enable_x64(True):
    masks = E.prefix_masks(10, np.float64)
    _, solved = E._lasso_start_all(np.asarray(prompts.xs, np.float64), np.asarray(prompts.ys, np.float64),
                                   np.asarray(alphas), masks)
  assert not np.all(solved)  # some problems go to the second stage
  preds = E.lasso_grid_predictions(prompts.xs, prompts.ys, alphas, range(10))  # [B, N, K]
  assert preds.shape == (16, 10, 4) and preds.dtype == np.float64
  lasso64 = E.in_float64(jax.jit(jax.vmap(E.lasso, in_axes=(0, 0, None))))
  for k, alpha in enumerate(alphas):
    reference = np.asarray(lasso64(prompts.xs, prompts.ys, np.float64(alpha)), np.float64)
    np.testing.assert_allclose(preds[..., k], reference, rtol=1e-6, atol=1e-7, err_msg=f"alpha={alpha}")
  only_7 = E.lasso_grid_predictions(prompts.xs, prompts.ys, alphas, [7])
  np.testing.assert_allclose(only_7[:, 0], preds[:, 7], rtol=1e-9, atol=1e-12)


def test_gd_matches_a_numpy_loop_and_approaches_ols():
  xs, ys = _problem(n_points=20, d=4, seed=3)
  X, y = xs.astype(np.float64), ys.astype(np.float64)
  w = np.zeros(4)
  for _ in range(6):  # the hand loop: w ← w − η (1/n) Xᵀ(Xw − y)
    w = w - 0.15 * X.T @ (X @ w - y) / len(y)
  np.testing.assert_allclose(E.gd_weights(xs, ys, 0.15, 6), w, rtol=1e-5, atol=1e-6)
  last = np.asarray(E.gd(xs, ys, lr=0.15, steps=6))[-1]
  np.testing.assert_allclose(last, X[-1] @ _gd_np(X[:-1], y[:-1], 0.15, 6), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(E.gd_weights(xs, ys, 0.2, 2000), np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-4)
  assert np.all(np.asarray(E.gd_weights(xs, ys, 0.2, 0)) == 0.0)


def _gd_np(X, y, lr, steps):
  w = np.zeros(X.shape[1])
  for _ in range(steps):
    w = w - lr * X.T @ (X @ w - y) / len(y)
  return w


def test_averaging_pto_and_knn_closed_forms():
  xs, ys = _problem(n_points=6, d=3, seed=4)
  X, y = xs.astype(np.float64), ys.astype(np.float64)
  avg = np.asarray(E.averaging(xs, ys))
  for i in range(1, 6):
    np.testing.assert_allclose(avg[i], X[i] @ (X[:i].T @ y[:i] / i), rtol=1e-5, atol=1e-6)
  r_hat = X.T @ y / 6
  w_tilde = _gd_np(X * r_hat, y, 0.3, 4)
  np.testing.assert_allclose(E.pto_weights(xs, ys, 0.3, 4), r_hat * w_tilde, rtol=1e-4, atol=1e-6)
  # knn by hand: 1-d points 0, 1, 10, 0.4, 9 with labels 1, 2, 3, 4, 5 and k = 2.
  kx = np.array([[0.0], [1.0], [10.0], [0.4], [9.0]], np.float32)
  ky = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
  # query 0: empty -> 0; query 1: only x=0 -> 1; query 2 (x=10): {1, 0} -> 1.5;
  # query 3 (x=0.4): {0, 1} -> 1.5; query 4 (x=9): {10, 1} -> 2.5.
  np.testing.assert_allclose(E.knn(kx, ky, k=2), [0.0, 1.0, 1.5, 1.5, 2.5])
  np.testing.assert_allclose(E.knn(kx, ky, k=1), [0.0, 1.0, 2.0, 1.0, 3.0])


def _sq_errors(name, b, cfg, index, **hparams):
  preds = E.predict(name, b.xs, b.ys, task_cfg=cfg, **hparams)
  return (np.asarray(preds)[:, index] - b.targets[:, index]) ** 2


def test_bayes_has_the_lowest_risk_on_its_own_prior():
  cfg = tasks.TaskConfig(d=5, n_points=7, noise_var=0.25, prior_mean=(0.6, -0.5, 0.4, 0.3, -0.4))
  b = _batch(cfg, 4000)
  index = 5  # n = d context points
  bayes = _sq_errors("bayes", b, cfg, index)
  others = {
      "ols": _sq_errors("ols", b, cfg, index),
      "ridge": _sq_errors("ridge", b, cfg, index, lam=1.0),
      "averaging": _sq_errors("averaging", b, cfg, index),
      "gd": _sq_errors("gd", b, cfg, index, lr=0.1, steps=10),
  }
  risks = {name: err.mean() for name, err in others.items()}
  assert min(risks.values()) > bayes.mean(), (bayes.mean(), risks)
  runner_up = others[min(risks, key=risks.get)]  # ridge(λ=1): close to σ²/τ² = 1.25 but shrinks to 0, not θ0
  diff = runner_up - bayes
  assert diff.mean() > 3 * diff.std() / np.sqrt(len(diff)), (bayes.mean(), risks)


def test_pool_bayes_beats_bayes_on_a_small_pool_and_both_are_exact_when_noiseless():
  cfg = tasks.TaskConfig(d=5, n_points=8, noise_var=0.25, pool_size=4)
  b = _batch(cfg, 3000)
  diff = _sq_errors("bayes", b, cfg, 3) - _sq_errors("pool_bayes", b, cfg, 3)
  assert diff.mean() > 3 * diff.std() / np.sqrt(len(diff))
  # Noise-free labels (the targets) with σ² = 0: the pool posterior concentrates on the true task after a
  # few points (floor variance 1e-6), the Gaussian posterior mean is exact from n = d on.
  clean = dict(task_cfg=cfg, noise_var=0.0)
  pool_risk = np.asarray(E.excess_risk(E.predict("pool_bayes", b.xs, b.targets, **clean), b.targets))
  bayes_risk = np.asarray(E.excess_risk(E.predict("bayes", b.xs, b.targets, **clean), b.targets))
  assert pool_risk[0] > 0.05 and np.all(pool_risk[3:] < 1e-6), pool_risk
  assert bayes_risk[4] > 1e-3 and np.all(bayes_risk[5:] < 1e-6), bayes_risk


def test_bayes_edge_cases_of_the_prior():
  xs, ys = _problem(n_points=6, d=3, seed=5)
  theta0 = np.array([0.3, -0.2, 0.5], np.float32)
  point_prior = np.asarray(E.bayes(xs, ys, theta0, tau2=0.0, noise_var=0.5))
  np.testing.assert_allclose(point_prior, xs @ theta0, rtol=1e-6)  # τ² = 0: the prior mean, whatever the data
  X, y = xs.astype(np.float64), ys.astype(np.float64)
  tau2, noise = 0.7, 0.2
  i = 4
  w = theta0 + np.linalg.solve(X[:i].T @ X[:i] + noise / tau2 * np.eye(3), X[:i].T @ (y[:i] - X[:i] @ theta0))
  np.testing.assert_allclose(E.bayes(xs, ys, theta0, tau2, noise)[i], X[i] @ w, rtol=1e-4)
  assert np.isclose(E.bayes(xs, ys, theta0, tau2, noise)[0], xs[0] @ theta0)


def _batched_and_loop(xs, ys, dtype):
  prior = {"prior_mean": np.array([0.3, 0.0, -0.2], dtype), "tau2": 0.5, "noise_var": 0.1}
  for name, hparams in [
      ("ols", {}), ("ridge", {"lam": 0.2}), ("bayes", prior), ("pool_bayes", {"pool": xs[0, :4], "noise_var": 0.1}),
      ("gd", {"lr": 0.1, "steps": 3}), ("pto", {"lr": 0.1, "steps": 3}), ("knn", {"k": 2}), ("lasso", {"alpha": 0.05}),
  ]:
    fn = E.get_estimator(name, **hparams)
    batched = np.asarray(jax.jit(E.batched(fn))(xs, ys))
    one = jax.jit(fn)
    loop = np.stack([np.asarray(one(x, y)) for x, y in zip(xs, ys)])
    assert batched.shape == (3, 6) and batched.dtype == dtype, (name, batched.dtype)
    yield name, fn, batched, loop


def test_jit_and_vmap_match_the_per_prompt_loop():
  rng = np.random.default_rng(6)
  xs = rng.standard_normal((3, 6, 3))
  ys = rng.standard_normal((3, 6))
  # Batching must not change the computation: in float64 the two paths agree to round-off (eps64 = 2e-16 times
  # the solves' condition numbers, < 1e3 here, times a few terms), far below any change of method.
  with jax.enable_x64(True):
    for name, fn, batched, loop in _batched_and_loop(xs, ys, np.float64):
      np.testing.assert_allclose(batched, loop, rtol=0, atol=1e-11 * np.max(np.abs(loop)), err_msg=name)
  # float32 (the default): vmapped solves may reduce in another order; rounding (eps32 = 1.2e-7) amplified by the
  # condition number (< 1e3) bounds the difference by ~1e-4 of the largest prediction.
  xs, ys = xs.astype(np.float32), ys.astype(np.float32)
  for name, fn, batched, loop in _batched_and_loop(xs, ys, np.float32):
    np.testing.assert_allclose(batched, loop, rtol=0, atol=1e3 * 1.2e-7 * np.max(np.abs(loop)), err_msg=name)
    if name in ("ridge", "knn"):  # eager (no jit) too
      np.testing.assert_allclose(fn(xs[0], ys[0]), loop[0], rtol=0, atol=1e3 * 1.2e-7 * np.max(np.abs(loop)),
                                 err_msg=name)
  # predict passes numeric hyper-parameters as traced arguments
  reference = E.batched(E.get_estimator("gd", lr=0.1, steps=3))(xs, ys)
  np.testing.assert_allclose(E.predict("gd", xs, ys, lr=0.1, steps=3), reference, rtol=1e-5, atol=1e-6)


def test_tune_picks_the_grid_point_with_the_lowest_held_out_risk():
  rng = np.random.default_rng(7)  # w ~ N(0, τ²I), τ² = 1/4, σ² = 1/2: the Bayes ridge is λ = σ²/τ² = 2
  xs = rng.standard_normal((2000, 8, 4)).astype(np.float32)
  targets = np.einsum("bnd,bd->bn", xs, 0.5 * rng.standard_normal((2000, 4))).astype(np.float32)
  ys = (targets + np.sqrt(0.5) * rng.standard_normal((2000, 8))).astype(np.float32)
  b = tasks.Prompt(xs=xs, ys=ys, targets=targets, w=None)
  lams = [0.01, 0.3, 2.0, 50.0]
  best, risks = E.tune("ridge", {"lam": lams}, b.xs, b.ys, b.targets, n_context=4)
  assert risks.shape == (4,) and best["lam"] == lams[int(np.argmin(risks))]
  assert best["lam"] == 2.0  # the Bayes choice σ²/τ² = 2
  for lam, risk in zip(lams, risks):
    preds = E.predict("ridge", b.xs, b.ys, lam=lam)
    np.testing.assert_allclose(risk, E.excess_risk(preds, b.targets)[4], rtol=1e-4)
  best, risks = E.tune("gd", {"lr": [0.05, 0.3, 50.0], "steps": [1, 10]}, b.xs, b.ys, b.targets, n_context=6)
  assert risks.shape == (3, 2) and not risks[2, 1] < 1e6  # lr = 50 diverges (huge, inf or NaN), never picked
  assert best == {"lr": 0.3, "steps": 10}
  best, risks = E.tune("knn", {"k": [1, 4]}, b.xs, b.ys, b.targets, n_context=6)
  assert risks[1] < risks[0] and best == {"k": 4}


_EMPTY = (np.zeros((2, 3, 2)), np.zeros((2, 3)), np.zeros((2, 3)))  # xs, ys, targets of 2 prompts


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: E.get_estimator("nope"), "nope"),
        (lambda: E.get_estimator("ridge", lam=-1.0), "lam"),
        (lambda: E.get_estimator("ridge"), "lam"),
        (lambda: E.get_estimator("ridge", lamb=1.0), "lamb"),
        (lambda: E.get_estimator("lasso", alpha=-0.1), "alpha"),
        (lambda: E.get_estimator("knn", k=0), "k"),
        (lambda: E.get_estimator("gd", lr=0.0, steps=3), "lr"),
        (lambda: E.get_estimator("gd", lr=0.1, steps=-1), "steps"),
        (lambda: E.get_estimator("pto", lr=0.1, steps=2.5), "steps"),
        (lambda: E.get_estimator("bayes"), "task_cfg"),
        (lambda: E.get_estimator("pool_bayes", tasks.TaskConfig()), "pool_size"),
        (lambda: E.ridge(np.zeros((3, 2)), np.zeros(3), lam=-1.0), "lam"),
        (lambda: E.tune("ridge", {"lamda": [1.0]}, *_EMPTY, 1), "lamda"),
        (lambda: E.tune("ridge", {"lam": [1.0]}, *_EMPTY, 3), "n_context"),
        (lambda: E.tune("gd", {"lr": [0.1, -1.0]}, *_EMPTY, 1, steps=2), "lr"),
        (lambda: jax.jit(E.in_float64(E.ols_weights))(np.zeros((3, 2)), np.zeros(3)), "in_float64"),
        (lambda: jax.jit(lambda x, y: E.lasso_grid_predictions(x, y, [0.1], [1]))(np.zeros((1, 3, 2)), np.zeros((1, 3))),
         "lasso_grid_predictions"),
        (lambda: E.lasso_grid_predictions(np.zeros((1, 3, 2)), np.zeros((1, 3)), [0.1, -1.0], [1]), "alpha"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(call, field):
  with pytest.raises(ValueError, match=field):
    call()


# ---------------------------------------------------------------------------- path tuning, iterated PtO, sparse Bayes

SPARSE = tasks.TaskConfig(family="sparse", d=4, sparsity=2, w_var=1.0, n_points=7, noise_var=0.01)


def test_gd_path_risks_equal_the_iterative_estimators_and_the_min_norm_limit():
  """The spectral path reads exactly gd / pto at every (η, T) (including T where 1 − ηλ < 0) and, at T = inf,
  the minimum-norm least squares on X (GD) or on diag(r̂)X (PtO)."""
  prompts = tasks.sample_batch(jax.random.PRNGKey(0), SPARSE, 16)
  lrs, steps = (0.05, 0.6), (0, 1, 2, 7, 40, float("inf"))
  ref = jax.jit(lambda name, lr, t: E.excess_risk(jax.vmap(lambda x, y: E.ESTIMATORS[name](x, y, lr=lr, steps=t))(
      prompts.xs, prompts.ys), prompts.targets), static_argnums=0)
  for preprocess, name in ((False, "gd"), (True, "pto")):
    risks, ratio = E.gd_path_risks(prompts, lrs, steps, preprocess)
    assert risks.shape == (2, 6, 7) and ratio.shape == (2, 7)
    lam_max = E.gram_lambda_max(prompts, preprocess).max(0)
    np.testing.assert_allclose(ratio, np.outer(lrs, lam_max), rtol=1e-6)
    for i, lr in enumerate(lrs):
      for j, t in enumerate(steps[:-1]):
        want = np.asarray(ref(name, lr, t))
        finite = np.isfinite(want) & (want < 1e6)  # a divergent GD (η·λ_max > 2) is non-finite or huge on both paths
        assert np.all(~np.isfinite(risks[i, j]) | (risks[i, j] >= 1e5) | finite)
        np.testing.assert_allclose(risks[i, j][finite], want[finite], rtol=2e-4, atol=1e-6, err_msg=f"{name} {lr} {t}")
    X, y = np.asarray(prompts.xs, np.float64), np.asarray(prompts.ys, np.float64)
    limit = np.zeros(7)
    for n in range(1, 7):
      preds = []
      for b in range(16):
        Xn, x_q = X[b, :n], X[b, n]
        if preprocess:
          r = Xn.T @ y[b, :n] / n
          Xn, x_q = Xn * r, x_q * r
        preds.append(x_q @ np.linalg.pinv(Xn) @ y[b, :n])
      limit[n] = np.mean((np.asarray(preds) - prompts.targets[:, n]) ** 2)
    limit[0] = np.mean(np.asarray(prompts.targets[:, 0]) ** 2)
    for i in range(2):
      np.testing.assert_allclose(risks[i, -1], limit, rtol=1e-5, atol=1e-8)


def test_path_risks_over_prompt_chunks_equal_one_call():
  """Chunked (5 + 5 + 2 prompts, the last chunk padded at weight 0) = all 12 prompts in one call, for both path
  tuners: the same risks (a sum in another order) and the same worst step ratios."""
  prompts = tasks.sample_batch(jax.random.PRNGKey(3), SPARSE, 12)
  for fn in (lambda c: E.gd_path_risks(prompts, (0.05, 0.6), (0, 3, float("inf")), True, chunk=c),
             lambda c: E.iterated_pto_path_risks(prompts, (0.01, 0.05), (3, float("inf")), rounds=2, chunk=c)):
    (r_one, q_one), (r_chunked, q_chunked) = fn(12), fn(5)
    np.testing.assert_allclose(r_chunked, r_one, rtol=1e-12)
    np.testing.assert_array_equal(q_chunked, q_one)
  with pytest.raises(ValueError, match="chunk=0"):
    E.gd_path_risks(prompts, (0.05,), (3,), chunk=0)


def test_predict_grid_risks_and_tune_over_prompt_chunks_equal_one_call():
  """Every host entry point over chunks of 5 + 5 + 2 prompts (the last padded with copies, dropped) = one call over
  all 12: predictions of a float32 and two float64 estimators (the lasso through its path driver), grid risks
  (generic and lasso path) and tune's risks."""
  prompts = tasks.sample_batch(jax.random.PRNGKey(4), SPARSE, 12)
  xs, ys = prompts.xs, prompts.ys
  for name, hp in (("ridge", {"lam": 0.3}), ("sparse_bayes", {}), ("lasso", {"alpha": 0.05})):
    one = np.asarray(E.predict(name, xs, ys, SPARSE, chunk=12, **hp))
    np.testing.assert_allclose(np.asarray(E.predict(name, xs, ys, SPARSE, chunk=5, **hp)), one, rtol=1e-6)
  for name, grid in (("ridge", {"lam": [0.01, 1.0]}), ("lasso", {"alpha": [0.01, 0.1]})):
    np.testing.assert_allclose(E.grid_risks(name, grid, prompts, chunk=5)[0], E.grid_risks(name, grid, prompts,
                                                                                            chunk=12)[0], rtol=1e-6)
  for name, grid in (("gd", {"lr": [0.05, 0.2], "steps": [3, 9]}), ("lasso", {"alpha": [0.01, 0.1]})):
    tuned = [E.tune(name, grid, xs, ys, prompts.targets, n_context=5, chunk=c) for c in (5, 12)]
    assert tuned[0][0] == tuned[1][0]
    np.testing.assert_allclose(tuned[0][1], tuned[1][1], rtol=1e-6)
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match="chunk="):
      E.predict("ridge", xs, ys, lam=0.3, chunk=bad)


def test_iterated_pto_stays_finite_over_many_noiseless_rounds():
  """At σ = 0 the magnitudes of the coordinates off the support square towards underflow round after round
  (1e-11, 1e-23, …); batched eigendecompositions of such denormal columns returned NaN (study 2's full preset, d = 20,
  T = ∞, rounds 7-8). Held-out prompts of that task, in chunks of 8: every round's risk is finite and, past n = d,
  the noiseless task is solved."""
  task = tasks.TaskConfig(family="sparse", d=20, sparsity=3, w_var=1.0, n_points=40)
  prompts = evaluate.eval_prompts(task, 32, evaluate.EVAL_SEED)
  risks, _ = E.iterated_pto_path_risks(prompts, [1e-3], [float("inf")], 8, chunk=8)
  assert np.all(np.isfinite(risks))
  assert np.all(risks[0, 0, :, 21:] < 1e-6)


def test_iterated_pto_round_one_is_pto_and_the_path_equals_the_loop():
  xs, ys = _problem(n_points=7, d=3, seed=2)
  np.testing.assert_allclose(E.iterated_pto(xs, ys, 0.2, 5, 1), E.pto(xs, ys, 0.2, 5), rtol=1e-6)
  # two rounds by hand: r = |w_pto|·||r̂||/||w_pto||, w = r ⊙ GD(diag(r)X)
  X, y = xs[:5].astype(np.float64), ys[:5].astype(np.float64)
  w = np.asarray(E.pto_weights(X, y, 0.2, 5), np.float64)
  r = np.abs(w) * np.linalg.norm(X.T @ y / 5) / np.linalg.norm(w)
  w2 = r * np.asarray(E.gd_weights(X * r, y, 0.2, 5))
  np.testing.assert_allclose(E.iterated_pto_weights(X, y, 0.2, 5, 2), w2, rtol=1e-5, atol=1e-7)
  prompts = tasks.sample_batch(jax.random.PRNGKey(1), SPARSE, 12)
  risks, ratio = E.iterated_pto_path_risks(prompts, (0.01, 0.05), (3, 25), rounds=3)
  assert risks.shape == ratio.shape == (2, 2, 3, 7)
  assert np.all(np.diff(ratio, axis=2) >= 0)  # the worst step ratio over rounds only grows
  stable = ratio < 2  # (η, T, round, n) whose step size is stable on every prompt in every round so far
  assert np.all(np.isfinite(risks[stable])) and stable[0, :, 1:].sum() >= 4
  np.testing.assert_allclose(risks[:, :, 0], E.gd_path_risks(prompts, (0.01, 0.05), (3, 25), True)[0], rtol=1e-6)
  for k in (2, 3):
    for i, lr in enumerate((0.01, 0.05)):
      for j, t in enumerate((3, 25)):
        direct = np.asarray(E.excess_risk(jax.vmap(lambda x, y: E.iterated_pto(x, y, lr, t, k))(prompts.xs, prompts.ys),
                                          prompts.targets))
        ok = stable[i, j, k - 1]
        np.testing.assert_allclose(risks[i, j, k - 1][ok], direct[ok], rtol=2e-4, atol=1e-6, err_msg=f"{lr} {t} {k}")


def test_tune_per_n_honours_eligibility_and_flags_grid_edges():
  points = [{"lam": 0.1}, {"lam": 1.0}, {"lam": 10.0}]
  tune = np.array([[1.0, 5.0, 3.0], [2.0, 1.0, 1.0], [3.0, 2.0, 0.5]])
  test = np.arange(9.0).reshape(3, 3)
  eligible = np.array([[True, True, True], [True, True, True], [True, True, False]])
  out = E.tune_per_n(tune, test, points, {"lam": (0.1, 1.0, 10.0)}, eligible)
  assert [h["lam"] for h in out["hparams"]] == [0.1, 1.0, 1.0]  # n=2: 10.0 is better but ineligible
  assert out["risk"] == [0.0, 4.0, 5.0]
  assert out["edges"] == [["lam"], [], []]
  tied = E.tune_per_n(np.ones((3, 2)), test[:, :2], points, {"lam": (0.1, 1.0, 10.0)})  # all equal: no edge matters
  assert tied["edges"] == [[], []] and [h["lam"] for h in tied["hparams"]] == [0.1, 0.1]
  assert E.grid_edges({"steps": float("inf"), "lr": 0.1}, {"steps": (1, 10, float("inf")), "lr": (0.1, 1.0)}) == ["lr"]
  assert E.grid_edges({"steps": 10, "rounds": 1}, {"steps": (1, 10, float("inf")), "rounds": (1, 3)}) == []


def _brute_sparse_posterior_mean(X, y, s, tau2, v):
  """Σ_S p(S|data) E[w|S, data] with the marginal likelihood N(y; 0, vI + τ² X_S X_Sᵀ) written out in numpy."""
  import itertools
  n, d = X.shape
  logs, means = [], []
  for S in itertools.combinations(range(d), s):
    XS = X[:, S]
    cov = v * np.eye(n) + tau2 * XS @ XS.T
    _, logdet = np.linalg.slogdet(cov)
    logs.append(-0.5 * y @ np.linalg.solve(cov, y) - 0.5 * logdet)
    m = np.zeros(d)
    m[list(S)] = tau2 * XS.T @ np.linalg.solve(cov, y)  # E[w_S | y] = τ² X_Sᵀ Σ⁻¹ y
    means.append(m)
  logs = np.asarray(logs)
  p = np.exp(logs - logs.max())
  return (p / p.sum()) @ np.asarray(means)


def test_sparse_bayes_equals_the_brute_force_posterior_mean():
  rng = np.random.default_rng(3)
  X, y = rng.standard_normal((3, 5)), rng.standard_normal(3)
  for s, tau2, v in ((2, 1.0, 0.1), (1, 0.5, 0.01), (3, 2.0, 1.0)):
    got = E.in_float64(lambda X, y: E.sparse_bayes_weights(X, y, s, tau2, v))(X, y)
    np.testing.assert_allclose(got, _brute_sparse_posterior_mean(X, y, s, tau2, v), rtol=1e-5, atol=1e-6)
  mask = np.array([1.0, 0.0, 1.0])  # a masked row is as if absent
  got = E.in_float64(lambda X, y, m: E.sparse_bayes_weights(X, y, 2, 1.0, 0.1, mask=m))(X, y, mask)
  np.testing.assert_allclose(got, _brute_sparse_posterior_mean(X[[0, 2]], y[[0, 2]], 2, 1.0, 0.1), rtol=1e-5)
  assert E.supports(5, 2).shape == (10, 2)


def test_sparse_bayes_has_the_lowest_risk_on_its_prior():
  """Monte Carlo: the exact posterior mean beats OLS, ridge and Lasso (each at its best grid value on these very
  prompts, which favours them) at every n from 1 to d, and on average by a margin much larger than the MC error."""
  cfg = tasks.TaskConfig(family="sparse", d=6, sparsity=2, w_var=1.0, n_points=8, noise_var=0.04)
  prompts = tasks.sample_batch(jax.random.PRNGKey(5), cfg, 1500)
  bayes = np.asarray(E.excess_risk(E.predict("sparse_bayes", prompts.xs, prompts.ys, cfg), prompts.targets))
  ridge = E.grid_risks("ridge", {"lam": (0.03, 0.1, 0.3, 1.0, 3.0)}, prompts)[0].min(0)
  lasso = E.grid_risks("lasso", {"alpha": (0.003, 0.01, 0.03, 0.1, 0.3)}, prompts)[0].min(0)
  ols = np.asarray(E.excess_risk(E.predict("ols", prompts.xs, prompts.ys), prompts.targets))
  for name, risk in (("ridge", ridge), ("lasso", lasso), ("ols", ols)):
    assert np.all(bayes[1:7] < risk[1:7]), (name, bayes, risk)
  assert bayes[1:7].mean() < 0.9 * min(ridge[1:7].mean(), lasso[1:7].mean())
  np.testing.assert_allclose(bayes[0], np.mean(np.asarray(prompts.targets[:, 0]) ** 2), rtol=1e-6)
  with pytest.raises(ValueError, match="tau2"):
    E.sparse_bayes_weights(prompts.xs[0], prompts.ys[0], 2, 0.0, 0.1)
  with pytest.raises(ValueError, match="sparsity"):
    E.supports(3, 4)
