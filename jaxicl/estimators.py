"""Classical in-context regression estimators: pure, jit- and vmap-safe JAX functions of one prompt.

Shape legend: N points per prompt, d input dimension, n context points, B prompts, M tasks in a pool,
G hyper-parameter grid points.

Convention (prefix-wise, as in the standard GPT-2 ICL evaluation): an estimator is
``fn(xs_Nxd, ys_N, **hparams) -> preds_N`` where ``preds[i]`` predicts y_i from the context points
0..i-1 and the query x_i. ``preds[0]`` uses the empty context: 0, or θ0ᵀx_0 for ``bayes`` and the pool
mean's prediction for ``pool_bayes``. One call gives the whole curve vs n; ``batched(fn)`` (or ``predict``)
maps it over prompts.

Every estimator except ``knn`` is linear in the query: it fits weights ŵ on the context and predicts
ŵᵀx_q. Each has a one-prompt fit primitive ``*_weights(X_nxd, y_n, ..., mask=None) -> w_d``; the optional
0/1 ``mask`` [n] drops rows exactly as if they were absent. The prefix-wise functions vmap the primitive
over the N prefix masks (row i keeps points j < i), so there is no Python loop over n.

Numerical conventions:
  * least squares / ridge / Bayes use the thin SVD X = U diag(s) Vᵀ; singular values with
    s <= rcond·s_max, rcond = 10·max(rows, d)·eps(dtype), count as 0 (the ``jnp.linalg.pinv`` default), so
    λ = 0 gives the minimum-norm least-squares solution X⁺y.
  * ``bayes`` with σ² = 0 is the noiseless limit θ0 + X⁺(y − Xθ0) (exact posterior mean as σ² → 0);
    τ² = 0 gives θ0.
  * ``pool_bayes`` floors the likelihood variance at ``POOL_NOISE_FLOOR`` = 1e-6 (so σ² = 0 works).
  * ``lasso`` runs Gram-based cyclic coordinate descent, by default in float64 inside a local
    ``jax.enable_x64`` context (x64 is never switched on globally; the result is cast back), until the
    largest coordinate change of a sweep is <= tol·max|w| (tol = 1e-10) or ``max_sweeps`` sweeps.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import tasks

POOL_NOISE_FLOOR = 1e-6  # smallest likelihood variance used by pool_bayes (σ² = 0 prompts)
LASSO_TOL = 1e-10  # relative coordinate-change tolerance of the lasso coordinate descent
LASSO_MAX_SWEEPS = 20_000  # cap on lasso coordinate-descent sweeps (each sweep updates all d coordinates)
_LASSO_ROUND = 5  # coordinate-descent sweeps between two active-set Newton attempts
_LASSO_STAGES = 12  # continuation thresholds λ_k = max(nα, max|Xᵀy|·ratio^k), the last one nα itself
_LASSO_STAGE_RATIO = 0.3
_LASSO_STAGE_SWEEPS = 200  # sweep cap of each intermediate continuation stage

EstimatorFn = Callable[..., jax.Array]  # (xs_Nxd, ys_N, **hparams) -> preds_N


# ----------------------------------------------------------------------------------------------------
# Hyper-parameter validation


def _is_int(value) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, np.integer)):
    return True
  return isinstance(value, (np.ndarray, jax.Array)) and np.issubdtype(value.dtype, np.integer)


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lam": (lambda v: np.all(np.asarray(v) >= 0), "must be >= 0"),
    "alpha": (lambda v: np.all(np.asarray(v) >= 0), "must be >= 0"),
    "lr": (lambda v: np.all(np.asarray(v) > 0), "must be > 0"),
    "steps": (lambda v: _is_int(v) and np.all(np.asarray(v) >= 0), "must be an integer >= 0"),
    "k": (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
          "must be a Python integer >= 1"),
    "tau2": (lambda v: np.all(np.asarray(v) >= 0), "must be >= 0"),
    "noise_var": (lambda v: np.all(np.asarray(v) >= 0), "must be >= 0"),
    "tol": (lambda v: np.all(np.asarray(v) > 0), "must be > 0"),
    "max_sweeps": (lambda v: isinstance(v, (int, np.integer)) and v >= 1, "must be an integer >= 1"),
}


def check_hparams(estimator: str, **hparams) -> None:
  """Raises ``ValueError`` naming the first invalid hyper-parameter (traced values are not checked)."""
  for field, value in hparams.items():
    if field not in _RULES or isinstance(value, jax.core.Tracer):
      continue
    ok, why = _RULES[field]
    if not ok(value):
      raise ValueError(f"{estimator}: {field}={value!r} {why}")


# ----------------------------------------------------------------------------------------------------
# One-prompt fit primitives: (X [n, d], y [n], ..., mask [n] or None) -> w [d]


def _as_float(a) -> jax.Array:
  a = jnp.asarray(a)
  return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.result_type(float))


def _masked(X: jax.Array, y: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(X ⊙ m, y ⊙ m, n = Σ m): rows with m_i = 0 zeroed, which drops them from every fit below."""
  X, y = _as_float(X), _as_float(y)
  if mask is None:
    return X, y, jnp.asarray(X.shape[0], X.dtype)
  m = jnp.asarray(mask).astype(X.dtype)
  return X * m[:, None], y * m, jnp.sum(m)


def _svd_ridge(X: jax.Array, y: jax.Array, lam: jax.Array | float) -> jax.Array:
  """w = V diag(s/(s²+λ)) Uᵀy, singular values s <= rcond·s_max dropped: (XᵀX+λI)⁻¹Xᵀy, or X⁺y at λ = 0.

  λ = +inf gives w = 0. X [n, d], y [n] -> [d].
  """
  u, s, vt = jnp.linalg.svd(X, full_matrices=False)
  rcond = 10 * max(X.shape) * jnp.finfo(X.dtype).eps
  keep = s > rcond * s[0]
  filt = jnp.where(keep, s / jnp.where(keep, s**2 + lam, 1.0), 0.0)
  return vt.T @ (filt * (u.T @ y))


def ols_weights(X: jax.Array, y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Minimum-norm least squares ŵ = X⁺y (the min-norm interpolant when n < d). [n, d], [n] -> [d]."""
  X, y, _ = _masked(X, y, mask)
  return _svd_ridge(X, y, 0.0)


def ridge_weights(X: jax.Array, y: jax.Array, lam: float | jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """ŵ = argmin ||Xw − y||² + λ||w||² = (XᵀX + λI)⁻¹Xᵀy (λ = 0: X⁺y). [n, d], [n] -> [d]."""
  check_hparams("ridge", lam=lam)
  X, y, _ = _masked(X, y, mask)
  return _svd_ridge(X, y, lam)


def bayes_weights(
    X: jax.Array,
    y: jax.Array,
    prior_mean: jax.Array,
    tau2: float | jax.Array,
    noise_var: float | jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Posterior mean of w ~ N(θ0, τ²I) given y = Xw + N(0, σ²I): θ0 + (XᵀX + (σ²/τ²)I)⁻¹Xᵀ(y − Xθ0).

  σ² = 0: the noiseless limit θ0 + X⁺(y − Xθ0); τ² = 0: θ0. [n, d], [n], θ0 [d] -> [d].
  """
  check_hparams("bayes", tau2=tau2, noise_var=noise_var)
  X, y, _ = _masked(X, y, mask)
  theta0 = jnp.asarray(prior_mean, X.dtype)
  tau2 = jnp.asarray(tau2, X.dtype)
  lam = jnp.where(tau2 > 0, noise_var / jnp.where(tau2 > 0, tau2, 1.0), jnp.inf)
  return theta0 + _svd_ridge(X, y - X @ theta0, lam)


def averaging_weights(X: jax.Array, y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """ŵ = (1/n) Σ_i y_i x_i (0 when n = 0). [n, d], [n] -> [d]."""
  X, y, n = _masked(X, y, mask)
  return X.T @ y / jnp.maximum(n, 1.0)


def gd_weights(
    X: jax.Array, y: jax.Array, lr: float | jax.Array, steps: int | jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """``steps`` GD steps from w = 0 on L(w) = (1/(2n)) Σ_i (wᵀx_i − y_i)²: w ← w − η (1/n) Xᵀ(Xw − y).

  Uses the Gram form w ← w − η (Gw − b), G = XᵀX/n, b = Xᵀy/n. ``steps`` may be traced. [n, d], [n] -> [d].
  """
  check_hparams("gd", lr=lr, steps=steps)
  X, y, n = _masked(X, y, mask)
  scale = 1.0 / jnp.maximum(n, 1.0)
  gram = X.T @ X * scale
  b = X.T @ y * scale
  return jax.lax.fori_loop(0, steps, lambda _, w: w - lr * (gram @ w - b), jnp.zeros(X.shape[1], X.dtype))


def pto_weights(
    X: jax.Array, y: jax.Array, lr: float | jax.Array, steps: int | jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """Preprocess-then-optimize as an effective linear predictor r̂ ⊙ w̃ (prediction w̃ᵀ diag(r̂) x_q).

  r̂ = (1/n) Σ_i y_i x_i; x̃_i = diag(r̂) x_i; w̃ = ``steps`` GD steps (step η, from 0) on the ``gd`` loss
  over (x̃_i, y_i). [n, d], [n] -> [d].
  """
  check_hparams("pto", lr=lr, steps=steps)
  r_hat = averaging_weights(X, y, mask)
  w_tilde = gd_weights(_as_float(X) * r_hat, y, lr, steps, mask)
  return r_hat * w_tilde


def pool_log_posterior(
    X: jax.Array, y: jax.Array, pool: jax.Array, noise_var: float | jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """log p(m | data) for a uniform prior over the pool rows w_m and y_i ~ N(w_mᵀx_i, v), v = max(σ², floor).

  log p_m = −Σ_i (y_i − w_mᵀx_i)²/(2v) − logsumexp_m(·). [n, d], [n], pool [M, d] -> [M].
  """
  check_hparams("pool_bayes", noise_var=noise_var)
  X, y, _ = _masked(X, y, mask)
  m = jnp.ones(X.shape[0], X.dtype) if mask is None else jnp.asarray(mask).astype(X.dtype)
  pool = jnp.asarray(pool, X.dtype)
  var = jnp.maximum(noise_var, POOL_NOISE_FLOOR)
  resid = (X @ pool.T - y[:, None]) * m[:, None]  # [n, M]
  log_lik = -jnp.sum(resid**2, axis=0) / (2.0 * var)
  return log_lik - jax.nn.logsumexp(log_lik)


def pool_bayes_weights(
    X: jax.Array, y: jax.Array, pool: jax.Array, noise_var: float | jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """Posterior mean Σ_m p(m | data) w_m over a finite task pool (see ``pool_log_posterior``). -> [d]."""
  log_post = pool_log_posterior(X, y, pool, noise_var, mask)
  return jnp.exp(log_post) @ jnp.asarray(pool, log_post.dtype)


def _lasso_cd(X: jax.Array, y: jax.Array, alpha, mask, tol, max_sweeps: int) -> jax.Array:
  """Minimizes ½||Xw − y||² + nα||w||₁ (same minimizer as the 1/(2n)-scaled objective).

  Cyclic coordinate descent, w_j ← S(b_j − Σ_{k≠j} G_jk w_k, λ) / G_jj with G = XᵀX, b = Xᵀy, λ = nα and S
  the soft threshold (an all-zero column keeps w_j = 0), in rounds of ``_LASSO_ROUND`` sweeps. After each
  round an active-set Newton step solves G_AA w_A = b_A − λ·sign(w_A) on the current support A; it is
  accepted (and the solve ends) iff it satisfies the lasso KKT conditions: same signs on A and
  |(Gw − b)_j| <= λ off A (relative slack 1e-9). Otherwise coordinate descent goes on until a sweep's
  largest change is <= tol·max|w| or ``max_sweeps`` sweeps. The path is followed by warm-started
  continuation over ``_LASSO_STAGES`` thresholds λ_k = max(λ, max|b|·ratio^k) (at most
  ``_LASSO_STAGE_SWEEPS`` sweeps for each intermediate stage), which keeps supports small when n < d.
  """
  X, y, n = _masked(X, y, mask)
  d = X.shape[1]
  gram = X.T @ X
  b = X.T @ y
  diag = jnp.diag(gram)
  has_data = diag > 0
  safe_diag = jnp.where(has_data, diag, 1.0)
  target = n * alpha
  b_max = jnp.max(jnp.abs(b))

  def solve(w_init, threshold, sweep_cap):
    slack = 1e-9 * (threshold + b_max)

    def update(j, w):
      rho = b[j] - gram[j] @ w + diag[j] * w[j]
      new = jnp.sign(rho) * jnp.maximum(jnp.abs(rho) - threshold, 0.0) / safe_diag[j]
      return w.at[j].set(jnp.where(has_data[j], new, 0.0))

    def newton(w):
      active = w != 0
      a = active.astype(X.dtype)
      sign = jnp.sign(w)
      system = gram * jnp.outer(a, a) + jnp.diag(1.0 - a)
      candidate = jnp.linalg.solve(system, a * (b - threshold * sign))
      grad = gram @ candidate - b
      kkt = jnp.where(active, jnp.sign(candidate) == sign, jnp.abs(grad) <= threshold + slack)
      return candidate, jnp.all(kkt) & jnp.all(jnp.isfinite(candidate))

    def round_(state):
      w, _, sweeps, _ = state
      w_prev = jax.lax.fori_loop(0, _LASSO_ROUND - 1, lambda _, v: jax.lax.fori_loop(0, d, update, v), w)
      w_new = jax.lax.fori_loop(0, d, update, w_prev)
      candidate, solved = newton(w_new)
      return jnp.where(solved, candidate, w_new), jnp.max(jnp.abs(w_new - w_prev)), sweeps + _LASSO_ROUND, solved

    def not_done(state):
      w, change, sweeps, solved = state
      return ~solved & (change > tol * jnp.max(jnp.abs(w))) & (sweeps < sweep_cap)

    candidate, solved = newton(w_init)
    init = (jnp.where(solved, candidate, w_init), jnp.asarray(jnp.inf, X.dtype), jnp.asarray(0, jnp.int32), solved)
    return jax.lax.while_loop(not_done, round_, init)[0]

  def stage(k, w):
    threshold = jnp.maximum(target, b_max * _LASSO_STAGE_RATIO ** (k + 1))
    return solve(w, threshold, _LASSO_STAGE_SWEEPS)

  w = jax.lax.fori_loop(0, _LASSO_STAGES - 1, stage, jnp.zeros(d, X.dtype))
  return solve(w, target, max_sweeps)


def lasso_weights(
    X: jax.Array,
    y: jax.Array,
    alpha: float | jax.Array,
    mask: jax.Array | None = None,
    tol: float = LASSO_TOL,
    max_sweeps: int = LASSO_MAX_SWEEPS,
    x64: bool = True,
) -> jax.Array:
  """ŵ = argmin (1/(2n))||Xw − y||² + α||w||₁ (scikit-learn's ``Lasso`` objective, no intercept).

  Coordinate descent (see module docstring); with ``x64`` it runs in float64 inside a local
  ``jax.enable_x64`` context (needs a backend with float64; pass ``x64=False`` and e.g. tol=1e-6 on TPU).
  Returns X's float dtype. [n, d], [n] -> [d].
  """
  check_hparams("lasso", alpha=alpha, tol=tol, max_sweeps=max_sweeps)
  X, y = _as_float(X), _as_float(y)
  if not x64:
    return _lasso_cd(X, y, alpha, mask, tol, max_sweeps)
  with jax.enable_x64(True):
    f64 = jnp.float64
    mask64 = None if mask is None else jnp.asarray(mask).astype(f64)
    w = _lasso_cd(X.astype(f64), y.astype(f64), jnp.asarray(alpha).astype(f64), mask64, tol, max_sweeps)
    return w.astype(X.dtype)


def knn_predict(X: jax.Array, y: jax.Array, x_query: jax.Array, k: int, mask: jax.Array | None = None) -> jax.Array:
  """Mean label of the k context points nearest to x_query (Euclidean; k capped at n; n = 0 -> 0).

  Ties go to the earlier point. ``k`` must be a Python int. [n, d], [n], [d] -> [].
  """
  check_hparams("knn", k=k)
  X, y, _ = _masked(X, y, mask)
  valid = jnp.ones(X.shape[0], bool) if mask is None else jnp.asarray(mask) > 0
  dist2 = jnp.where(valid, jnp.sum((X - x_query) ** 2, axis=-1), jnp.inf)
  _, nearest = jax.lax.top_k(-dist2, min(k, X.shape[0]))
  chosen = valid[nearest].astype(X.dtype)
  return jnp.sum(y[nearest] * chosen) / jnp.maximum(jnp.sum(chosen), 1.0)


# ----------------------------------------------------------------------------------------------------
# Prefix-wise estimators: (xs [N, d], ys [N], **hparams) -> preds [N]


def prefix_masks(n_points: int, dtype=jnp.float32) -> jax.Array:
  """[N, N] 0/1 masks; row i keeps the context points j < i of query i."""
  idx = jnp.arange(n_points)
  return (idx[None, :] < idx[:, None]).astype(dtype)


def _query_mask(n_points: int, n_context: int | jax.Array) -> jax.Array:
  return (jnp.arange(n_points) < n_context).astype(jnp.float32)


def _prefixwise_linear(weights_fn: Callable[..., jax.Array], xs: jax.Array, ys: jax.Array, **hparams) -> jax.Array:
  """preds[i] = ŵ_iᵀx_i with ŵ_i = weights_fn fitted on points 0..i-1 (vmap over the N prefix masks)."""
  xs, ys = _as_float(xs), _as_float(ys)
  weights = jax.vmap(lambda m: weights_fn(xs, ys, mask=m, **hparams))(prefix_masks(xs.shape[0], xs.dtype))
  return jnp.sum(weights * xs, axis=-1)


def ols(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """Minimum-norm least squares per prefix (``ols_weights``). [N, d], [N] -> [N]."""
  return _prefixwise_linear(ols_weights, xs, ys)


def ridge(xs: jax.Array, ys: jax.Array, lam: float | jax.Array) -> jax.Array:
  """Ridge (XᵀX + λI)⁻¹Xᵀy per prefix (``ridge_weights``). [N, d], [N] -> [N]."""
  check_hparams("ridge", lam=lam)
  return _prefixwise_linear(ridge_weights, xs, ys, lam=lam)


def bayes(xs: jax.Array, ys: jax.Array, prior_mean: jax.Array, tau2: float, noise_var: float) -> jax.Array:
  """Gaussian-prior posterior mean per prefix (``bayes_weights``); preds[0] = θ0ᵀx_0. [N, d], [N] -> [N].

  Bayes-optimal for the ``linear`` family (any input covariance, since it conditions on xs).
  """
  check_hparams("bayes", tau2=tau2, noise_var=noise_var)
  return _prefixwise_linear(bayes_weights, xs, ys, prior_mean=prior_mean, tau2=tau2, noise_var=noise_var)


def gd(xs: jax.Array, ys: jax.Array, lr: float | jax.Array, steps: int | jax.Array) -> jax.Array:
  """``steps`` GD steps of step ``lr`` from 0 per prefix (``gd_weights``). [N, d], [N] -> [N]."""
  check_hparams("gd", lr=lr, steps=steps)
  return _prefixwise_linear(gd_weights, xs, ys, lr=lr, steps=steps)


def lasso(
    xs: jax.Array,
    ys: jax.Array,
    alpha: float | jax.Array,
    tol: float = LASSO_TOL,
    max_sweeps: int = LASSO_MAX_SWEEPS,
    x64: bool = True,
) -> jax.Array:
  """Lasso (scikit-learn objective, no intercept) per prefix (``lasso_weights``). [N, d], [N] -> [N]."""
  check_hparams("lasso", alpha=alpha, tol=tol, max_sweeps=max_sweeps)
  return _prefixwise_linear(lasso_weights, xs, ys, alpha=alpha, tol=tol, max_sweeps=max_sweeps, x64=x64)


def averaging(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """Garg et al.'s averaging baseline ((1/n) Σ y_j x_j)ᵀx_i per prefix. [N, d], [N] -> [N]."""
  return _prefixwise_linear(averaging_weights, xs, ys)


def pool_bayes(xs: jax.Array, ys: jax.Array, pool: jax.Array, noise_var: float) -> jax.Array:
  """Posterior-mean prediction for a uniform prior over a finite pool [M, d] (``pool_bayes_weights``).

  preds[0] is the pool mean's prediction. [N, d], [N] -> [N].
  """
  check_hparams("pool_bayes", noise_var=noise_var)
  return _prefixwise_linear(pool_bayes_weights, xs, ys, pool=pool, noise_var=noise_var)


def pto(xs: jax.Array, ys: jax.Array, lr: float | jax.Array, steps: int | jax.Array) -> jax.Array:
  """Preprocess-then-optimize per prefix (``pto_weights``). [N, d], [N] -> [N]."""
  check_hparams("pto", lr=lr, steps=steps)
  return _prefixwise_linear(pto_weights, xs, ys, lr=lr, steps=steps)


def knn(xs: jax.Array, ys: jax.Array, k: int = 3) -> jax.Array:
  """k-nearest-neighbour mean label per prefix (``knn_predict``; Garg et al. use k = 3). [N, d], [N] -> [N]."""
  check_hparams("knn", k=k)
  xs, ys = _as_float(xs), _as_float(ys)
  masks = prefix_masks(xs.shape[0], xs.dtype)
  return jax.vmap(lambda x_q, m: knn_predict(xs, ys, x_q, k, m))(xs, masks)


ESTIMATORS: dict[str, EstimatorFn] = {
    "ols": ols,
    "ridge": ridge,
    "bayes": bayes,
    "gd": gd,
    "lasso": lasso,
    "knn": knn,
    "averaging": averaging,
    "pool_bayes": pool_bayes,
    "pto": pto,
}

_WEIGHTS: dict[str, Callable[..., jax.Array]] = {
    "ols": ols_weights,
    "ridge": ridge_weights,
    "bayes": bayes_weights,
    "gd": gd_weights,
    "lasso": lasso_weights,
    "averaging": averaging_weights,
    "pool_bayes": pool_bayes_weights,
    "pto": pto_weights,
}

_STATIC_HPARAMS = ("k", "max_sweeps", "x64", "tol")  # Python values fixed at trace time (not vmapped in tune)


def _query_prediction(name: str, xs: jax.Array, ys: jax.Array, n_context: int | jax.Array, **hparams) -> jax.Array:
  """The prediction for point ``n_context`` from points 0..n_context-1 only (one fit, not N). -> []."""
  xs, ys = _as_float(xs), _as_float(ys)
  mask = _query_mask(xs.shape[0], n_context).astype(xs.dtype)
  if name == "knn":
    return knn_predict(xs, ys, xs[n_context], mask=mask, **hparams)
  return _WEIGHTS[name](xs, ys, mask=mask, **hparams) @ xs[n_context]


# ----------------------------------------------------------------------------------------------------
# Registry, batching and tuning


def _lookup(name: str) -> EstimatorFn:
  if name not in ESTIMATORS:
    raise ValueError(f"estimator={name!r}: unknown estimator; known: {sorted(ESTIMATORS)}")
  return ESTIMATORS[name]


def _hparam_names(name: str) -> dict[str, inspect.Parameter]:
  params = list(inspect.signature(_lookup(name)).parameters.values())[2:]  # drop xs, ys
  return {p.name: p for p in params}


def _prior_hparams(name: str, task_cfg: tasks.TaskConfig | None) -> dict[str, Any]:
  """The prior a Bayes estimator gets from ``task_cfg``: (θ0, τ², σ²) for bayes, (pool, σ²) for pool_bayes."""
  if task_cfg is None or name not in ("bayes", "pool_bayes"):
    return {}
  if name == "bayes":
    return {
        "prior_mean": jnp.asarray(tasks.prior_mean(task_cfg), jnp.float32),
        "tau2": task_cfg.tau2,
        "noise_var": task_cfg.noise_var,
    }
  return {"pool": jnp.asarray(tasks.task_pool(task_cfg), jnp.float32), "noise_var": task_cfg.noise_var}


def _bind(name: str, task_cfg: tasks.TaskConfig | None, hparams: dict[str, Any], free: Sequence[str] = ()) -> dict[str, Any]:
  """Checked keyword arguments for estimator ``name``: the task prior, overridden by ``hparams``.

  ``free`` names hyper-parameters supplied later (tuning grids); all others without a default must be bound.
  """
  params = _hparam_names(name)
  unknown = [h for h in hparams if h not in params]
  if unknown:
    raise ValueError(f"{name}: unknown hyper-parameter(s) {unknown}; accepted: {list(params)}")
  bound = {**_prior_hparams(name, task_cfg), **hparams}
  missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in bound and p not in free]
  if missing:
    hint = " (or pass task_cfg=TaskConfig(...))" if name in ("bayes", "pool_bayes") else ""
    raise ValueError(f"{name}: missing hyper-parameter(s) {missing}{hint}")
  check_hparams(name, **bound)
  return bound


def get_estimator(name: str, task_cfg: tasks.TaskConfig | None = None, **hparams) -> EstimatorFn:
  """Prompt-level ``fn(xs_Nxd, ys_N) -> preds_N`` of estimator ``name`` with its hyper-parameters bound.

  For ``bayes`` / ``pool_bayes``, ``task_cfg`` supplies the prior (θ0 = ``tasks.prior_mean``, τ², σ² / the
  pool ``tasks.task_pool`` and σ²); explicit ``hparams`` override it. Unknown names, unknown, missing or
  invalid hyper-parameters raise ``ValueError``.
  """
  fn = _lookup(name)
  return functools.partial(fn, **_bind(name, task_cfg, hparams))


def batched(fn: EstimatorFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """vmap of a prompt-level estimator over prompts: ([B, N, d], [B, N]) -> [B, N]."""
  return jax.vmap(fn)


def predict(name: str, xs: jax.Array, ys: jax.Array, task_cfg: tasks.TaskConfig | None = None, **hparams) -> jax.Array:
  """Prefix-wise predictions of estimator ``name`` for a batch: [B, N, d], [B, N] -> [B, N] (jitted)."""
  return jax.jit(batched(get_estimator(name, task_cfg, **hparams)))(xs, ys)


def excess_risk(preds: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over prompts of (pred − target)²: [B, N], [B, N] -> [N]."""
  return jnp.mean((jnp.asarray(preds) - jnp.asarray(targets)) ** 2, axis=0)


def tune(
    name: str,
    grid: dict[str, Sequence[Any]],
    xs: jax.Array,
    ys: jax.Array,
    targets: jax.Array,
    n_context: int,
    *,
    task_cfg: tasks.TaskConfig | None = None,
    **fixed,
) -> tuple[dict[str, Any], np.ndarray]:
  """Grid search: the hyper-parameters minimizing the excess risk at query index ``n_context``.

  risk(g) = mean_b (ŷ_b(g) − targets[b, n_context])², ŷ_b(g) the prediction for point n_context of prompt b
  from its points 0..n_context-1. Numeric hyper-parameters (``lam``, ``alpha``, ``lr``, ``steps``, …) are
  vmapped over the grid in one compile; static ones (``k``, ``tol``, ``max_sweeps``, ``x64``) are looped.
  xs [B, N, d], ys [B, N], targets [B, N]. Returns (best hyper-parameters as given in ``grid``, risks with
  shape ``[len(v) for v in grid.values()]``; NaN/inf risks, e.g. divergent GD, are never picked unless all are).
  """
  _lookup(name)
  if not grid:
    raise ValueError(f"{name}: grid is empty")
  params = _hparam_names(name)
  for key, values in grid.items():
    if key not in params:
      raise ValueError(f"{name}: unknown grid hyper-parameter {key!r}; accepted: {list(params)}")
    if key in fixed:
      raise ValueError(f"{name}: {key!r} is both in grid and fixed")
    if len(values) == 0:
      raise ValueError(f"{name}: grid[{key!r}] is empty")
    for value in values:
      if not np.isscalar(value) and np.ndim(value) != 0:
        raise ValueError(f"{name}: grid[{key!r}] values must be scalars, got {value!r}")
      check_hparams(name, **{key: value})
  bound = _bind(name, task_cfg, fixed, free=tuple(grid))
  xs, ys, targets = _as_float(xs), _as_float(ys), _as_float(targets)
  n_points = xs.shape[1]
  if not isinstance(n_context, (int, np.integer)) or not 0 <= n_context < n_points:
    raise ValueError(f"{name}: n_context={n_context!r} must be an integer in [0, {n_points - 1}]")
  target = targets[:, n_context]

  keys = list(grid)
  static_keys = [k for k in keys if k in _STATIC_HPARAMS]
  numeric_keys = [k for k in keys if k not in _STATIC_HPARAMS]
  numeric_points = list(itertools.product(*(range(len(grid[k])) for k in numeric_keys)))

  def numeric_array(key: str, index: Sequence[int]) -> jax.Array:
    values = [grid[key][i] for i in index]
    dtype = jnp.int32 if all(_is_int(v) for v in values) else xs.dtype
    return jnp.asarray(values, dtype)

  risks = np.empty([len(grid[k]) for k in keys], np.float64)
  for static_index in itertools.product(*(range(len(grid[k])) for k in static_keys)):
    static = {k: grid[k][i] for k, i in zip(static_keys, static_index)}

    def risk_of(numeric: dict[str, jax.Array], static=static) -> jax.Array:
      def one_prompt(x, y):
        return _query_prediction(name, x, y, n_context, **bound, **static, **numeric)

      return jnp.mean((jax.vmap(one_prompt)(xs, ys) - target) ** 2)

    numeric = {k: numeric_array(k, [p[j] for p in numeric_points]) for j, k in enumerate(numeric_keys)}
    flat = np.asarray(jax.jit(jax.vmap(risk_of))(numeric)) if numeric_keys else np.asarray(jax.jit(risk_of)({}))[None]
    for point, risk in zip(numeric_points, flat):
      index = dict(zip(static_keys, static_index)) | dict(zip(numeric_keys, point))
      risks[tuple(index[k] for k in keys)] = risk
  ranked = np.where(np.isnan(risks), np.inf, risks)
  best_index = np.unravel_index(np.argmin(ranked), risks.shape)
  best = {k: grid[k][i] for k, i in zip(keys, best_index)}
  return best, risks
