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
  * ``sparse_bayes`` (exact posterior mean of the ``sparse`` family by enumerating the C(d, s) supports)
    floors the likelihood variance at ``SPARSE_BAYES_NOISE_FLOOR`` = 1e-6 and runs in float64 by default.
  * ``iterated_pto`` is this project's extension of PtO (re-weighted rounds), not a method of the paper.

Path tuning (``gd_path_risks``, ``iterated_pto_path_risks``): GD from 0 on G = X̃ᵀX̃/n, b = X̃ᵀy/n has the
closed form w_T = V diag(f_T(λ)) Vᵀb, f_T(λ) = (1 − (1 − ηλ)^T)/λ (ηT at λ = 0), for G = V diag(λ) Vᵀ, so one
eigendecomposition per prompt and prefix gives the risk at every step count T, up to T = ∞ (f = 1/λ on the
non-zero eigenvalues: the minimum-norm least-squares solution, GD's limit from 0 for any stable η). Per-n
choice on a tuning set with the stability rule and grid-edge flags: ``tune_per_n``.

Memory: the host entry points (``predict``, ``tune``, ``grid_risks``, ``lasso_grid_predictions`` and the path
tuners) run over fixed-size chunks of ``PROMPT_CHUNK`` prompts (``prompt_chunks``; one compiled program per
chunk size), so thousands of held-out prompts cost time, not memory.
  * ``lasso`` follows the exact homotopy (LARS-lasso) path, checks the result against the KKT conditions
    after an active-set Newton polish, and falls back to coordinate descent (tol = 1e-10 relative
    change, at most 1000 sweeps) if the check fails; see ``lasso_weights``. It computes in the inputs'
    dtype; ``predict`` and ``tune`` run it in float64 inside a local ``jax.enable_x64`` context
    (``in_float64``; x64 is never switched on globally). A grid of α shares one homotopy path
    (``lasso_path_weights``); ``grid_risks``, ``tune`` and ``predict`` go through the host driver
    ``lasso_grid_predictions``, which runs the coordinate-descent fallback only on the problems that need it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import tasks

POOL_NOISE_FLOOR = 1e-6  # smallest likelihood variance used by pool_bayes (σ² = 0 prompts)
LASSO_TOL = 1e-10  # relative coordinate-change tolerance of the lasso coordinate descent
LASSO_MAX_SWEEPS = 1000  # cap on the fallback coordinate-descent sweeps of lasso (each updates all d coordinates)
PROMPT_CHUNK = 64  # prompts per compiled call of every host entry point (predict, tune, grid_risks, the lasso and
# path drivers): memory O(chunk), not O(B) (at d = 20, N = 40: ~1.3 GB for sparse_bayes' 1140 supports)
_LASSO_ROUND = 5  # coordinate-descent sweeps between two active-set Newton attempts

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
    "rounds": (lambda v: _is_int(v) and np.all(np.asarray(v) >= 1), "must be an integer >= 1"),
    "sparsity": (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
                 "must be a Python integer >= 1"),
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

  λ = +inf gives w = 0; so does an empty X (n = 0). X [n, d], y [n] -> [d].
  """
  if X.shape[0] == 0:
    return jnp.zeros(X.shape[1], X.dtype)
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


def _spd_solve(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
  """matrix⁻¹ rhs by Cholesky for a symmetric positive definite matrix; NaN if it is not PD. [d, d], [d] -> [d]."""
  chol = jnp.linalg.cholesky(matrix)
  return jax.scipy.linalg.cho_solve((chol, True), rhs)


def _lasso_homotopy(gram: jax.Array, b: jax.Array, targets: jax.Array, max_steps: int) -> jax.Array:
  """The lasso path (LARS-lasso homotopy) of ½wᵀGw − bᵀw + λ||w||₁ from λ = max|b| (w = 0) down through
  ``targets`` (sorted descending), w recorded at each: one path serves a whole α grid.

  On the path c = b − Gw satisfies c_A = λ·s_A on the support A (signs s) and |c_j| <= λ off it; while λ
  falls by γ, w_A moves along u_A = G_AA⁻¹ s_A. Each step goes to the nearest kink (a variable whose |c_j|
  reaches λ joins A; an active w_j that reaches 0 leaves) or to the next target (recorded; the support is
  unchanged); at most ``max_steps`` steps. A variable that just left may not re-enter at the next kink.
  Targets above max|b| record w = 0. G [d, d], b [d], targets [K] -> w [K, d].
  """
  d = b.shape[0]
  dtype = b.dtype
  n_targets = targets.shape[0]
  index = jnp.arange(d)
  lam0 = jnp.max(jnp.abs(b))
  first = jnp.argmax(jnp.abs(b))
  floor = 100 * jnp.finfo(dtype).eps * lam0  # steps below this are kinks just passed, not ahead
  n_done = jnp.sum(targets >= lam0).astype(jnp.int32)  # targets reached before the path starts: w = 0

  def step(state):
    w, active, sign, lam, dropped, steps, k, out = state
    a = active.astype(dtype)
    u = _spd_solve(gram * jnp.outer(a, a) + jnp.diag(1.0 - a), a * sign)
    c = b - gram @ w
    gu = gram @ u

    def ahead(gamma, ok):
      return jnp.where(ok & jnp.isfinite(gamma) & (gamma > floor), gamma, jnp.inf)

    may_enter = ~active & (index != dropped)
    enter_at = jnp.minimum(ahead((lam - c) / (1.0 - gu), may_enter), ahead((lam + c) / (1.0 + gu), may_enter))
    leave_at = ahead(-w / jnp.where(u != 0, u, 1.0), active & (u != 0))
    j_in, j_out = jnp.argmin(enter_at), jnp.argmin(leave_at)
    gamma_in, gamma_out = enter_at[j_in], leave_at[j_out]
    gamma_end = lam - targets[jnp.minimum(k, n_targets - 1)]
    at_end = gamma_end <= jnp.minimum(gamma_in, gamma_out)
    enter = ~at_end & (gamma_in <= gamma_out)
    leave = ~at_end & ~enter
    gamma = jnp.minimum(jnp.minimum(gamma_in, gamma_out), gamma_end)
    w = w + gamma * u
    new_sign = jnp.sign(b[j_in] - gram[j_in] @ w)
    active = active.at[j_in].set(active[j_in] | enter)
    active = active.at[j_out].set(active[j_out] & ~leave)
    sign = sign.at[j_in].set(jnp.where(enter, new_sign, sign[j_in]))
    sign = sign.at[j_out].set(jnp.where(leave, 0.0, sign[j_out]))
    w = w.at[j_out].set(jnp.where(leave, 0.0, w[j_out]))
    out = jnp.where(at_end & (jnp.arange(n_targets) == k)[:, None], w[None], out)
    dropped = jnp.where(leave, j_out, jnp.where(at_end, dropped, -1))
    return w, active, sign, lam - gamma, dropped, steps + 1, k + at_end.astype(jnp.int32), out

  def not_done(state):
    return (state[-2] < n_targets) & (state[-3] < max_steps)

  init = (
      jnp.zeros(d, dtype),
      index == first,
      jnp.zeros(d, dtype).at[first].set(jnp.sign(b[first])),
      lam0,
      jnp.asarray(-1, index.dtype),
      jnp.asarray(0, jnp.int32),
      n_done,
      jnp.zeros((n_targets, d), dtype),
  )
  w, *_, k, out = jax.lax.while_loop(not_done, step, init)
  return jnp.where((jnp.arange(n_targets) >= k)[:, None], w[None], out)  # step cap: the last point reached


def lasso_weights(
    X: jax.Array,
    y: jax.Array,
    alpha: float | jax.Array,
    mask: jax.Array | None = None,
    tol: float = LASSO_TOL,
    max_sweeps: int = LASSO_MAX_SWEEPS,
) -> jax.Array:
  """ŵ = argmin (1/(2n))||Xw − y||² + α||w||₁ (scikit-learn's ``Lasso``, no intercept). [n, d], [n] -> [d].

  Solves the equivalent ½||Xw − y||² + λ||w||₁, λ = nα, with G = XᵀX, b = Xᵀy, in X's float dtype:
    1. the homotopy path (``_lasso_homotopy``, at most 4d + 20 kinks), exact in exact arithmetic;
    2. a check / polish: the active-set Newton step G_AA w_A = b_A − λ·sign(w_A) on the support A is
       accepted (and the solve ends) iff it meets the lasso KKT conditions: the same signs on A and
       |(Gw − b)_j| <= λ + slack off A, slack = 1000·eps(dtype)·(λ + max|b|);
    3. a fallback if not accepted: cyclic coordinate descent from there, w_j ← S(b_j − Σ_{k≠j} G_jk w_k, λ)/G_jj
       (S the soft threshold; an all-zero column keeps w_j = 0) in rounds of ``_LASSO_ROUND`` sweeps, each
       followed by the check of step 2, until a sweep's largest change is <= tol·max|w| or ``max_sweeps``.
  float32 matched scikit-learn to 1e-4 on random problems too, but its check is looser (slack ∝ eps) and
  fails, sending it to the slower fallback, more often at tiny λ (≈ eps·max|b|); ``predict`` and ``tune`` run
  lasso in float64 by default (``in_float64``). ``lasso_path_weights`` solves a whole α grid on one path.
  """
  check_hparams("lasso", alpha=alpha, tol=tol, max_sweeps=max_sweeps)
  return lasso_path_weights(X, y, jnp.reshape(jnp.asarray(alpha, _as_float(X).dtype), (1,)), mask, tol, max_sweeps)[0]


def lasso_path_weights(
    X: jax.Array,
    y: jax.Array,
    alphas: jax.Array,
    mask: jax.Array | None = None,
    tol: float = LASSO_TOL,
    max_sweeps: int = LASSO_MAX_SWEEPS,
) -> jax.Array:
  """``lasso_weights`` at every α of ``alphas`` [K] from one homotopy path (any order; the path visits them in
  decreasing order), each then checked / polished / refined as there. [n, d], [n], [K] -> [K, d].

  One path to the smallest α costs about what that α alone costs, so a K-point grid is ~K times cheaper than K
  separate solves."""
  X, y, n = _masked(X, y, mask)
  gram, b = X.T @ X, X.T @ y
  thresholds = n * jnp.asarray(alphas, X.dtype)
  w, solved = _lasso_start(gram, b, thresholds)
  return jax.vmap(lambda t, w0, ok: _lasso_refine(gram, b, t, w0, ok, tol, max_sweeps))(thresholds, w, solved)


def _lasso_newton(gram: jax.Array, b: jax.Array, threshold: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The active-set Newton step on w's support and whether it meets the lasso KKT conditions (see
  ``lasso_weights``, step 2): (candidate [d], accepted [])."""
  slack = 1000 * jnp.finfo(b.dtype).eps * (threshold + jnp.max(jnp.abs(b)))
  active = w != 0
  a = active.astype(b.dtype)
  sign = jnp.sign(w)
  candidate = _spd_solve(gram * jnp.outer(a, a) + jnp.diag(1.0 - a), a * (b - threshold * sign))
  grad = gram @ candidate - b
  kkt = jnp.where(active, jnp.sign(candidate) == sign, jnp.abs(grad) <= threshold + slack)
  return candidate, jnp.all(kkt) & jnp.all(jnp.isfinite(candidate))


def _lasso_start(gram: jax.Array, b: jax.Array, thresholds: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Steps 1-2 of ``lasso_weights`` for every λ of ``thresholds`` [K] on one path: (w [K, d], accepted [K]);
  where not accepted, w is the path's point, from which ``_lasso_refine`` goes on."""
  d = b.shape[0]
  order = jnp.argsort(-thresholds)
  w_path = _lasso_homotopy(gram, b, thresholds[order], 4 * d + 20 + thresholds.shape[0])
  w_path = jnp.zeros_like(w_path).at[order].set(w_path)
  w_path = jnp.where(jnp.all(jnp.isfinite(w_path), axis=1, keepdims=True), w_path, 0.0)  # singular: CD from 0
  candidate, solved = jax.vmap(lambda t, w: _lasso_newton(gram, b, t, w))(thresholds, w_path)
  return jnp.where(solved[:, None], candidate, w_path), solved


def _lasso_refine(gram: jax.Array, b: jax.Array, threshold: jax.Array, w: jax.Array, solved: jax.Array,
                  tol: float, max_sweeps: int) -> jax.Array:
  """Step 3 of ``lasso_weights`` from w (returned as is when ``solved``): coordinate-descent rounds, each
  followed by the Newton check, until accepted, converged or ``max_sweeps``. [d] -> [d]."""
  d = b.shape[0]
  diag = jnp.diag(gram)
  has_data = diag > 0
  safe_diag = jnp.where(has_data, diag, 1.0)

  def update(j, w):
    rho = b[j] - gram[j] @ w + diag[j] * w[j]
    new = jnp.sign(rho) * jnp.maximum(jnp.abs(rho) - threshold, 0.0) / safe_diag[j]
    return w.at[j].set(jnp.where(has_data[j], new, 0.0))

  def round_(state):
    w, _, sweeps, _ = state
    w_prev = jax.lax.fori_loop(0, _LASSO_ROUND - 1, lambda _, v: jax.lax.fori_loop(0, d, update, v), w)
    w_new = jax.lax.fori_loop(0, d, update, w_prev)
    candidate, accepted = _lasso_newton(gram, b, threshold, w_new)
    return jnp.where(accepted, candidate, w_new), jnp.max(jnp.abs(w_new - w_prev)), sweeps + _LASSO_ROUND, accepted

  def not_done(state):
    w, change, sweeps, accepted = state
    return ~accepted & (change > tol * jnp.max(jnp.abs(w))) & (sweeps < max_sweeps)

  init = (w, jnp.asarray(jnp.inf, b.dtype), jnp.asarray(0, jnp.int32), solved)
  return jax.lax.while_loop(not_done, round_, init)[0]


@functools.partial(jax.jit, static_argnames=("tol", "max_sweeps"))
def _lasso_refine_batch(xs, ys, masks, alphas, w, tol: float, max_sweeps: int):
  """``_lasso_refine`` of P gathered problems: [P, N, d], [P, N], masks [P, N], α [P], start w [P, d] -> [P, d]."""
  def one(x, y, m, alpha, w0):
    x, y, n = _masked(x, y, m)
    return _lasso_refine(x.T @ x, x.T @ y, n * alpha, w0, jnp.asarray(False), tol, max_sweeps)

  return jax.vmap(one)(xs, ys, masks, alphas, w)


@jax.jit
def _lasso_start_all(xs, ys, alphas, masks):
  """``_lasso_start`` of every prompt × context mask: [B, N, d], [B, N], α [K], masks [T, N] ->
  (w [B, T, K, d], accepted [B, T, K])."""
  def one(x, y, m):
    x, y, n = _masked(x, y, m)
    return _lasso_start(x.T @ x, x.T @ y, n * alphas)

  return jax.vmap(lambda x, y: jax.vmap(lambda m: one(x, y, m))(masks))(xs, ys)


def lasso_grid_predictions(xs: jax.Array, ys: jax.Array, alphas: Sequence[float], queries: Sequence[int],
                           tol: float = LASSO_TOL, max_sweeps: int = LASSO_MAX_SWEEPS, chunk: int = PROMPT_CHUNK
                           ) -> np.ndarray:
  """Lasso's prediction for point t of every prompt from its points j < t, at every α and every t of
  ``queries``: [B, N, d], [B, N] -> [B, T, K] (float64), equal to ``in_float64(lasso)`` at each α.

  Host-side driver, not jit/vmap-safe, over ``chunk`` prompts at a time (``prompt_chunks``): one homotopy path per
  prompt and query gives every α (``lasso_path_weights``); coordinate descent (step 3 of ``lasso_weights``) then
  runs only on the problems whose Newton check failed (at d = 20 about 3 % of them, near n ≈ d and the smallest
  α), gathered into a batch of their own, instead of holding every lane of a vmapped loop until the slowest
  converges."""
  if any(isinstance(a, jax.core.Tracer) for a in (xs, ys, *alphas)):
    raise ValueError("lasso_grid_predictions: arguments are traced; call it outside jit/vmap (it runs two "
                     "compiled stages with a host step between them)")
  check_hparams("lasso", tol=tol, max_sweeps=max_sweeps)
  for alpha in alphas:
    check_hparams("lasso", alpha=alpha)
  queries = np.asarray(queries, np.int64)
  with jax.enable_x64(True):
    masks = (jnp.arange(np.shape(xs)[1])[None, :] < jnp.asarray(queries)[:, None]).astype(jnp.float64)  # [T, N]
    alphas64 = jnp.asarray(alphas, jnp.float64)

    def one_chunk(xs64, ys64):  # [b, N, d], [b, N] -> [b, T, K]
      w, solved = _lasso_start_all(xs64, ys64, alphas64, masks)  # [b, T, K, d], [b, T, K]
      w = np.array(w)
      todo = np.argwhere(~np.asarray(solved))
      if len(todo):
        size = max(8, 1 << int(len(todo) - 1).bit_length())  # padded to a power of 2: few compiled sizes
        pick = np.concatenate([todo, np.repeat(todo[:1], size - len(todo), axis=0)])
        bi, ti, ki = pick.T
        refined = _lasso_refine_batch(xs64[bi], ys64[bi], masks[ti], alphas64[ki], jnp.asarray(w[bi, ti, ki]),
                                      tol=float(tol), max_sweeps=int(max_sweeps))
        w[bi[:len(todo)], ti[:len(todo)], ki[:len(todo)]] = np.asarray(refined)[:len(todo)]
      return np.einsum("btkd,btd->btk", w, xs64[:, queries])

    return map_prompt_chunks(one_chunk, (np.asarray(xs, np.float64), np.asarray(ys, np.float64)), chunk)


def iterated_pto_weights(
    X: jax.Array, y: jax.Array, lr: float | jax.Array, steps: int | jax.Array, rounds: int | jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Iterated PtO (this project's extension of PtO, not from the paper): ``rounds`` PtO fits, each
  re-weighting the features by the magnitudes of the previous estimate. [n, d], [n] -> [d].

  r⁽⁰⁾ = r̂ = (1/n) Σ_i y_i x_i;  w⁽ᵏ⁾ = r⁽ᵏ⁾ ⊙ w̃⁽ᵏ⁾, w̃⁽ᵏ⁾ = ``steps`` GD steps (η, from 0) on (diag(r⁽ᵏ⁾) x_i, y_i);
  r⁽ᵏ⁺¹⁾ = |w⁽ᵏ⁾| · ||r̂|| / ||w⁽ᵏ⁾||. ``rounds`` = 1 is ``pto_weights`` (the sign of r does not change r ⊙ w̃).
  The rescaling to ||r̂|| keeps the Gram matrix of every round on PtO's scale, so one step size η serves all
  rounds (scaling r by c scales the effective step by c²); only the relative magnitudes re-weight.
  Adaptive-ridge reading: early-stopped GD on diag(r)x is close to ridge on it, i.e. to
  argmin_w ||Xw − y||² + λ Σ_j w_j² / r_j², so with r = |w_prev| each round is one step of the adaptive ridge
  (Grandvalet 1998) that approximates the ℓ1 penalty Σ|w_j| (w²/|w| = |w|): coordinates the previous round
  found small are shrunk harder. ``rounds`` may be traced.
  """
  check_hparams("iterated_pto", lr=lr, steps=steps, rounds=rounds)
  r = averaging_weights(X, y, mask)
  Xf = _as_float(X)

  def one_round(_, state):
    r, _ = state
    w = r * gd_weights(Xf * r, y, lr, steps, mask)
    return _reweight(w, r_hat_norm), w

  r_hat_norm = jnp.linalg.norm(r)

  return jax.lax.fori_loop(0, rounds, one_round, (r, jnp.zeros_like(r)))[1]


def _reweight(w: jax.Array, norm: jax.Array) -> jax.Array:
  """|w| rescaled to the given norm (0 if w = 0): the next round's feature weights of iterated PtO.

  Magnitudes below eps·max are set to 0: round after round they square towards underflow (1e-11, 1e-23, …, 1e-139
  at σ = 0), and denormal columns made batched eigendecompositions return NaN; a zero weight stays zero in every
  later round, which those coordinates were reaching anyway."""
  size = jnp.linalg.norm(w)
  r = jnp.abs(w) * jnp.where(size > 0, norm / jnp.where(size > 0, size, 1.0), 0.0)
  return jnp.where(r > jnp.finfo(r.dtype).eps * jnp.max(r), r, 0.0)


SPARSE_BAYES_NOISE_FLOOR = 1e-6  # smallest likelihood variance used by sparse_bayes (σ² = 0 prompts)
SPARSE_BAYES_MAX_SUPPORTS = 200_000  # C(d, s) above this is refused (the enumeration is exact, not sampled)


@functools.lru_cache(maxsize=32)
def supports(d: int, sparsity: int) -> np.ndarray:
  """All C(d, s) supports of size s in lexicographic order: [C, s] int32 (a constant of (d, s))."""
  if not 1 <= sparsity <= d:
    raise ValueError(f"sparse_bayes: sparsity={sparsity!r} must be in [1, d={d}]")
  count = math.comb(d, sparsity)
  if count > SPARSE_BAYES_MAX_SUPPORTS:
    raise ValueError(f"sparse_bayes: sparsity={sparsity!r} at d={d} gives C(d, s)={count} supports "
                     f"(> {SPARSE_BAYES_MAX_SUPPORTS}); exact enumeration is not feasible")
  return np.asarray(list(itertools.combinations(range(d), sparsity)), np.int32).reshape(count, sparsity)


def sparse_bayes_weights(
    X: jax.Array,
    y: jax.Array,
    sparsity: int,
    tau2: float | jax.Array,
    noise_var: float | jax.Array,
    prior_mean: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Exact posterior mean of w under the ``sparse`` family's prior, by enumerating all C(d, s) supports.

  Prior: support S uniform over the size-s subsets, w_S ~ N(θ0_S, τ²I), w = 0 off S; y = Xw + N(0, vI),
  v = max(σ², ``SPARSE_BAYES_NOISE_FLOOR``) (the floor makes σ² = 0 a near-noiseless limit; it changes the
  posterior only where the data are exactly consistent with several supports). For each S, with
  r_S = y − X_Sθ0_S, A_S = X_SᵀX_S/v + I/τ², b_S = X_Sᵀr_S/v:
    E[w_S | S, data] = θ0_S + A_S⁻¹b_S,
    log p(S | data) = ½ b_Sᵀ A_S⁻¹ b_S − ½ r_Sᵀr_S/v − ½ log det A_S + const (const the same for all S),
  and ŵ = Σ_S p(S | data) E[w | S, data]. Vectorised over the supports ([C, s, s] Cholesky solves), so the cost
  is O(C(d, s)·s³) per fit (C(20, 3) = 1140). Needs τ² > 0; ``sparsity`` is a Python int.
  Bayes-optimal (least expected squared error) for prompts drawn from that prior. [n, d], [n] -> [d].
  """
  check_hparams("sparse_bayes", sparsity=sparsity, tau2=tau2, noise_var=noise_var)
  if not isinstance(tau2, jax.core.Tracer) and not np.all(np.asarray(tau2) > 0):
    raise ValueError(f"sparse_bayes: tau2={tau2!r} must be > 0")
  X, y, _ = _masked(X, y, mask)
  d = X.shape[1]
  S = jnp.asarray(supports(d, int(sparsity)))  # [C, s]
  theta0 = jnp.zeros(d, X.dtype) if prior_mean is None else jnp.asarray(prior_mean, X.dtype)
  v = jnp.maximum(jnp.asarray(noise_var, X.dtype), SPARSE_BAYES_NOISE_FLOOR)
  gram, c, yy = X.T @ X, X.T @ y, y @ y
  g_s = gram[S[:, :, None], S[:, None, :]]  # [C, s, s]
  t_s = theta0[S]  # [C, s]
  gt = jnp.einsum("cij,cj->ci", g_s, t_s)
  r_c = c[S] - gt  # X_Sᵀ r_S
  rr = yy - 2 * jnp.sum(t_s * c[S], -1) + jnp.sum(t_s * gt, -1)  # r_Sᵀ r_S
  A = g_s / v + jnp.eye(S.shape[1], dtype=X.dtype) / tau2
  chol = jnp.linalg.cholesky(A)
  b = r_c / v
  m = jax.vmap(lambda L, rhs: jax.scipy.linalg.cho_solve((L, True), rhs))(chol, b)  # A⁻¹b [C, s]
  log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
  log_post = 0.5 * jnp.sum(b * m, -1) - 0.5 * rr / v - 0.5 * log_det
  p = jax.nn.softmax(log_post)  # [C]
  return jnp.zeros(d, X.dtype).at[S.reshape(-1)].add((p[:, None] * (t_s + m)).reshape(-1))


def in_float64(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` traced, compiled and run in float64 inside a local ``jax.enable_x64`` context.

  Floating array arguments are cast to float64; floating outputs are cast back to the first floating
  argument's dtype as JAX stores it outside the context (float32 for float64 input unless x64 is on globally).
  x64 must be on while the whole computation is traced and compiled, so the wrapper
  cannot be used inside ``jit``/``vmap`` (``ValueError``); jit ``fn`` itself to compile it once per shape.
  Needs a backend with float64 (CPU, GPU).
  """

  def wrapped(*args):
    leaves = jax.tree.leaves(args)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
      raise ValueError("in_float64: arguments are traced; call it outside jit/vmap (or enable x64 yourself)")
    floats = [leaf for leaf in leaves if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]
    out_dtype = jax.dtypes.canonicalize_dtype(floats[0].dtype if floats else jnp.float32)

    def is_float(a) -> bool:
      return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)

    with jax.enable_x64(True):
      args64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if is_float(a) else a, args)
      out = fn(*args64)
      return jax.tree.map(lambda o: o.astype(out_dtype) if is_float(o) else o, out)

  return wrapped


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
) -> jax.Array:
  """Lasso (scikit-learn objective, no intercept) per prefix (``lasso_weights``), in xs's float dtype.

  [N, d], [N] -> [N]; ``in_float64(lasso)`` (or ``predict``) for sklearn-level accuracy at small α.
  """
  check_hparams("lasso", alpha=alpha, tol=tol, max_sweeps=max_sweeps)
  return _prefixwise_linear(lasso_weights, xs, ys, alpha=alpha, tol=tol, max_sweeps=max_sweeps)


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


def iterated_pto(xs: jax.Array, ys: jax.Array, lr: float | jax.Array, steps: int | jax.Array,
                 rounds: int | jax.Array) -> jax.Array:
  """Iterated PtO per prefix (``iterated_pto_weights``; this project's extension). [N, d], [N] -> [N]."""
  check_hparams("iterated_pto", lr=lr, steps=steps, rounds=rounds)
  return _prefixwise_linear(iterated_pto_weights, xs, ys, lr=lr, steps=steps, rounds=rounds)


def sparse_bayes(xs: jax.Array, ys: jax.Array, sparsity: int, tau2: float, noise_var: float,
                 prior_mean: jax.Array | None = None) -> jax.Array:
  """Bayes-optimal prediction for the ``sparse`` family per prefix (``sparse_bayes_weights``, exact support
  enumeration); preds[0] = (s/d)·θ0ᵀx_0, the prior mean's prediction. [N, d], [N] -> [N]."""
  check_hparams("sparse_bayes", sparsity=sparsity, tau2=tau2, noise_var=noise_var)
  return _prefixwise_linear(sparse_bayes_weights, xs, ys, sparsity=sparsity, tau2=tau2, noise_var=noise_var,
                            prior_mean=prior_mean)


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
    "iterated_pto": iterated_pto,
    "sparse_bayes": sparse_bayes,
}

_BUILTIN = dict(ESTIMATORS)  # users may add or replace entries of ESTIMATORS

_WEIGHTS: dict[str, Callable[..., jax.Array]] = {
    "ols": ols_weights,
    "ridge": ridge_weights,
    "bayes": bayes_weights,
    "gd": gd_weights,
    "lasso": lasso_weights,
    "averaging": averaging_weights,
    "pool_bayes": pool_bayes_weights,
    "pto": pto_weights,
    "iterated_pto": iterated_pto_weights,
    "sparse_bayes": sparse_bayes_weights,
}

_FLOAT64_BY_DEFAULT = ("lasso", "sparse_bayes")  # estimators predict / tune run in float64 unless told otherwise
_STATIC_HPARAMS = ("k", "max_sweeps", "tol", "sparsity")  # Python values fixed at trace time (not vmapped in tune)


def _query_prediction(name: str, xs: jax.Array, ys: jax.Array, n_context: int | jax.Array, **hparams) -> jax.Array:
  """The prediction for point ``n_context`` from points 0..n_context-1 only. -> [].

  One masked fit for the built-in estimators; an estimator registered by a user runs prefix-wise.
  """
  xs, ys = _as_float(xs), _as_float(ys)
  mask = _query_mask(xs.shape[0], n_context).astype(xs.dtype)
  if name in _WEIGHTS and ESTIMATORS[name] is _BUILTIN[name]:
    return _WEIGHTS[name](xs, ys, mask=mask, **hparams) @ xs[n_context]
  if name == "knn" and ESTIMATORS[name] is _BUILTIN[name]:
    return knn_predict(xs, ys, xs[n_context], mask=mask, **hparams)
  return ESTIMATORS[name](xs, ys, **hparams)[n_context]


# ----------------------------------------------------------------------------------------------------
# Registry, batching and tuning


def prompt_chunks(arrays: Sequence[Any], chunk: int) -> Iterator[tuple[list[np.ndarray], int]]:
  """Fixed-size chunks of min(``chunk``, B) prompts along axis 0 of every array (host numpy), the last padded
  with copies of its first prompt (finite inputs for any solver): yields (parts, valid), valid = its real
  prompts. One compiled program serves every chunk, and memory is bounded by the chunk, not by B."""
  if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
    raise ValueError(f"chunk={chunk!r}: must be an integer >= 1")
  n_prompts = np.shape(arrays[0])[0]
  chunk = min(int(chunk), n_prompts)
  for start in range(0, n_prompts, chunk):
    parts = [np.asarray(a[start:start + chunk]) for a in arrays]
    valid = parts[0].shape[0]
    yield [np.concatenate([a, np.repeat(a[:1], chunk - valid, axis=0)]) for a in parts], valid


def map_prompt_chunks(fn: Callable[..., Any], arrays: Sequence[Any], chunk: int) -> Any:
  """``fn(*arrays)`` for per-prompt outputs (axis 0 of each output leaf is the prompt), computed over
  ``prompt_chunks`` and concatenated on the host: equal to one call, in memory bounded by the chunk."""
  outs = [jax.tree.map(lambda a, v=valid: np.asarray(a)[:v], fn(*parts)) for parts, valid in prompt_chunks(arrays, chunk)]
  return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def _chunked_preds(run: Callable[..., Any], shared: Any, arrays: Sequence[Any], chunk: int, float64: bool
                   ) -> np.ndarray:
  """``run(shared, *prompt_arrays)`` (per-prompt outputs) over ``prompt_chunks``, as float64 numpy. ``float64``:
  traced and run with float64 inputs (floating leaves of ``shared`` and the prompt arrays) under a local
  ``jax.enable_x64``, as ``in_float64``, but the outputs stay float64."""
  if float64:
    def cast(a):
      return np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a

    with jax.enable_x64(True):
      return _chunked_preds(run, jax.tree.map(cast, shared), [cast(a) for a in arrays], chunk, False)
  return map_prompt_chunks(lambda *parts: np.asarray(run(shared, *parts), np.float64), arrays, chunk)


def _lookup(name: str) -> EstimatorFn:
  if name not in ESTIMATORS:
    raise ValueError(f"estimator={name!r}: unknown estimator; known: {sorted(ESTIMATORS)}")
  return ESTIMATORS[name]


def _hparam_names(name: str) -> dict[str, inspect.Parameter]:
  params = list(inspect.signature(_lookup(name)).parameters.values())[2:]  # drop xs, ys
  return {p.name: p for p in params}


def _prior_hparams(name: str, task_cfg: tasks.TaskConfig | None) -> dict[str, Any]:
  """The prior a Bayes estimator gets from ``task_cfg``: (θ0, τ², σ²) for bayes, (pool, σ²) for pool_bayes."""
  if task_cfg is None or name not in ("bayes", "pool_bayes", "sparse_bayes"):
    return {}
  if name == "sparse_bayes":
    if task_cfg.family != "sparse":
      raise ValueError(f"sparse_bayes: task family {task_cfg.family!r} is not 'sparse'")
    return {"sparsity": int(task_cfg.sparsity), "tau2": task_cfg.tau2, "noise_var": task_cfg.noise_var,
            "prior_mean": jnp.asarray(tasks.prior_mean(task_cfg), jnp.float32)}
  if name == "bayes":
    return {
        "prior_mean": jnp.asarray(tasks.prior_mean(task_cfg), jnp.float32),
        "tau2": task_cfg.tau2,
        "noise_var": task_cfg.noise_var,
    }
  return {"pool": jnp.asarray(tasks.task_pool(task_cfg), jnp.float32), "noise_var": task_cfg.noise_var}


def _bind(
    name: str, task_cfg: tasks.TaskConfig | None, hparams: dict[str, Any], free: Sequence[str] = ()
) -> dict[str, Any]:
  """Checked keyword arguments for estimator ``name``: the task prior, overridden by ``hparams``.

  ``free`` names hyper-parameters supplied later (tuning grids); all others without a default must be bound.
  """
  params = _hparam_names(name)
  unknown = [h for h in hparams if h not in params]
  if unknown:
    raise ValueError(f"{name}: unknown hyper-parameter(s) {unknown}; accepted: {list(params)}")
  bound = {**_prior_hparams(name, task_cfg), **hparams}
  required = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty]
  missing = [p for p in required if p not in bound and p not in free]
  if missing:
    hint = " (or pass task_cfg=TaskConfig(...))" if name in ("bayes", "pool_bayes", "sparse_bayes") else ""
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


def predict(
    name: str,
    xs: jax.Array,
    ys: jax.Array,
    task_cfg: tasks.TaskConfig | None = None,
    *,
    float64: bool | None = None,
    chunk: int = PROMPT_CHUNK,
    **hparams,
) -> jax.Array:
  """Prefix-wise predictions of estimator ``name`` for a batch: [B, N, d], [B, N] -> [B, N] (host function).

  Numeric hyper-parameters are passed to the compiled function as arguments, so calls that differ only
  in their values (and not in ``k``, ``tol``, ``max_sweeps`` or shapes) reuse one compile. ``float64`` runs
  it in float64 (as ``in_float64``, outside any trace); ``None`` means only for lasso and sparse_bayes. Runs
  over ``chunk`` prompts at a time (``prompt_chunks``; one compile, memory bounded by the chunk).
  """
  fn = _lookup(name)
  bound = _bind(name, task_cfg, hparams)
  static = tuple(sorted((k, v) for k, v in bound.items() if _is_static(k, v)))
  numeric = {k: v for k, v in bound.items() if not _is_static(k, v)}
  if _on_lasso_path(name, list(numeric)) and _use_float64(name, float64) and np.ndim(bound["alpha"]) == 0:
    preds = lasso_grid_predictions(xs, ys, [bound["alpha"]], range(np.shape(xs)[1]), chunk=chunk,
                                   **{k: v for k, v in bound.items() if k != "alpha"})[..., 0]
  else:
    run = _compiled_batched(fn, static)
    preds = _chunked_preds(lambda hp, x, y: run(x, y, hp), numeric, (xs, ys), chunk, _use_float64(name, float64))
  return jnp.asarray(preds, jax.dtypes.canonicalize_dtype(jnp.asarray(xs).dtype))


@functools.lru_cache(maxsize=128)
def _compiled_batched(fn: EstimatorFn, static: tuple[tuple[str, Any], ...]) -> Callable[..., jax.Array]:
  """jit(vmap over prompts) of ``fn`` with the static hyper-parameters bound: (xs, ys, numeric dict) -> preds."""

  def run(xs, ys, numeric):
    return jax.vmap(lambda x, y: fn(x, y, **dict(static), **numeric))(xs, ys)

  return jax.jit(run)


def _is_static(key: str, value: Any) -> bool:
  """Whether a hyper-parameter is fixed at trace time (``k``, ``tol``, ``max_sweeps``, non-numeric values)."""
  numeric = isinstance(value, (int, float, np.number, np.ndarray, jax.Array)) and not isinstance(value, bool)
  return key in _STATIC_HPARAMS or not numeric


def _use_float64(name: str, float64: bool | None) -> bool:
  return name in _FLOAT64_BY_DEFAULT if float64 is None else bool(float64)


def excess_risk(preds: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over prompts of (pred − target)²: [B, N], [B, N] -> [N]."""
  return jnp.mean((jnp.asarray(preds) - jnp.asarray(targets)) ** 2, axis=0)


def _grid_query_preds(
    name: str, n_context: int, fixed: dict[str, Any], numeric: dict[str, jax.Array], xs, ys
) -> jax.Array:
  """Prediction for point ``n_context`` of every prompt at each of the G grid points ``numeric`` ({name: [G]};
  {} for one point): [B, G] (vmapped over G and B)."""

  def preds_at(point: dict[str, jax.Array]) -> jax.Array:
    return jax.vmap(lambda x, y: _query_prediction(name, x, y, n_context, **fixed, **point))(xs, ys)

  return (jax.vmap(preds_at)(numeric) if numeric else preds_at({})[None]).T


def tune(
    name: str,
    grid: dict[str, Sequence[Any]],
    xs: jax.Array,
    ys: jax.Array,
    targets: jax.Array,
    n_context: int,
    *,
    task_cfg: tasks.TaskConfig | None = None,
    float64: bool | None = None,
    chunk: int = PROMPT_CHUNK,
    **fixed,
) -> tuple[dict[str, Any], np.ndarray]:
  """Grid search: the hyper-parameters minimizing the excess risk at query index ``n_context``.

  risk(g) = mean_b (ŷ_b(g) − targets[b, n_context])², ŷ_b(g) the prediction for point n_context of prompt b
  from its points 0..n_context-1 (one fit per prompt, not N). Numeric hyper-parameters (``lam``, ``alpha``,
  ``lr``, ``steps``, …) are vmapped over the grid in one compile; static ones (``k``, ``tol``, ``max_sweeps``)
  are looped. ``fixed`` binds the others; ``task_cfg`` gives the prior of bayes / pool_bayes; ``float64`` as
  in ``predict``; ``chunk`` prompts per call. xs [B, N, d], ys [B, N], targets [B, N].
  Returns (best hyper-parameters, values as given in ``grid``; risks [len(v) for v in grid.values()]).
  NaN risks (e.g. divergent GD) rank as +inf.
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
      if np.ndim(value) != 0:
        raise ValueError(f"{name}: grid[{key!r}] values must be scalars, got {value!r}")
      check_hparams(name, **{key: value})
  bound = {k: v for k, v in _bind(name, task_cfg, fixed, free=tuple(grid)).items() if k not in grid}
  xs, ys, targets = _as_float(xs), _as_float(ys), _as_float(targets)
  n_points = xs.shape[1]
  if not isinstance(n_context, (int, np.integer)) or not 0 <= n_context < n_points:
    raise ValueError(f"{name}: n_context={n_context!r} must be an integer in [0, {n_points - 1}]")
  target = np.asarray(targets[:, n_context], np.float64)

  keys = list(grid)
  static_keys = [k for k in keys if any(_is_static(k, v) for v in grid[k])]
  numeric_keys = [k for k in keys if k not in static_keys]
  numeric_points = list(itertools.product(*(range(len(grid[k])) for k in numeric_keys)))
  numeric = {}
  for j, key in enumerate(numeric_keys):
    values = [grid[key][point[j]] for point in numeric_points]
    numeric[key] = jnp.asarray(values, jnp.int32 if all(_is_int(v) for v in values) else xs.dtype)

  risks = np.empty([len(grid[k]) for k in keys], np.float64)
  for static_index in itertools.product(*(range(len(grid[k])) for k in static_keys)):
    static = {k: grid[k][i] for k, i in zip(static_keys, static_index)}
    if _on_lasso_path(name, list(numeric)) and _use_float64(name, float64):  # the α grid on one path per prompt
      preds = lasso_grid_predictions(xs, ys, np.asarray(numeric["alpha"]), [int(n_context)], chunk=chunk,
                                     **{**bound, **static})[:, 0]  # [B, G]
    else:
      fn = jax.jit(functools.partial(_grid_query_preds, name, int(n_context), {**bound, **static}))
      preds = _chunked_preds(fn, numeric, (xs, ys), chunk, _use_float64(name, float64))  # [B, G]
    flat = np.mean((preds - target[:, None]) ** 2, axis=0)
    for point, risk in zip(numeric_points, flat):
      where = dict(zip(static_keys, static_index)) | dict(zip(numeric_keys, point))
      risks[tuple(where[k] for k in keys)] = risk
  ranked = np.where(np.isnan(risks), np.inf, risks)
  best_index = np.unravel_index(np.argmin(ranked), risks.shape)
  return {k: grid[k][i] for k, i in zip(keys, best_index)}, risks


# ----------------------------------------------------------------------------------------------------
# Path tuning: GD / PtO / iterated PtO risks at many step counts from one eigendecomposition, per-n choice

STABILITY_MARGIN = 0.5  # default rule: a GD step size η is eligible at n iff η·λ_max(G) <= this on every tuning prompt


def gd_filter(eigvals: jax.Array, lr: jax.Array, steps: jax.Array) -> jax.Array:
  """f_T(λ) = (1 − (1 − ηλ)^T)/λ, so that T GD steps from 0 give w_T = V f_T(Λ) Vᵀb (see the module docstring).

  ``steps`` = inf gives the limit 1/λ on eigenvalues above rcond·λ_max and 0 below (the min-norm solution;
  b has no component there). λ = 0 with finite T gives ηT. Exact for any sign of 1 − ηλ (integer T).
  eigvals [..., d], lr and steps broadcastable -> [..., d].
  """
  lam = jnp.asarray(eigvals)
  lr, steps = jnp.asarray(lr, lam.dtype), jnp.asarray(steps, lam.dtype)
  base = 1.0 - lr * lam
  finite_steps = jnp.where(jnp.isfinite(steps), steps, 0.0)
  odd = jnp.mod(finite_steps, 2.0) == 1.0
  power = jnp.exp(finite_steps * jnp.log(jnp.where(base == 0, 1.0, jnp.abs(base))))
  power = jnp.where(base == 0, jnp.where(finite_steps == 0, 1.0, 0.0), power)
  power = jnp.where((base < 0) & odd, -power, power)
  tiny = 10 * lam.shape[-1] * jnp.finfo(lam.dtype).eps * jnp.max(jnp.abs(lam), axis=-1, keepdims=True)
  nonzero = jnp.abs(lam) > tiny
  safe = jnp.where(nonzero, lam, 1.0)
  finite = jnp.where(nonzero, (1.0 - power) / safe, lr * finite_steps)
  limit = jnp.where(nonzero, 1.0 / safe, 0.0)
  return jnp.where(jnp.isfinite(steps), finite, limit)


def _check_steps(steps) -> tuple[float, ...]:
  steps = tuple(float(t) for t in steps)
  if not steps or any(not (t >= 0 and (math.isinf(t) or t == int(t))) for t in steps):
    raise ValueError(f"steps={steps}: need non-negative integers (or inf for the T → ∞ limit)")
  return steps


def _check_lrs(lrs) -> np.ndarray:
  lrs = np.asarray(lrs, np.float64).reshape(-1)
  if lrs.size == 0 or not np.all(lrs > 0):
    raise ValueError(f"lrs={lrs.tolist()}: need at least one step size, all > 0")
  return lrs


def _gd_spectral_preds(X: jax.Array, y: jax.Array, x_q: jax.Array, mask: jax.Array, scale: jax.Array | None,
                       lrs: jax.Array, steps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """GD (from 0, on the masked rows of X diag(scale)) predictions for x_q at every (η, T), the weights in
  the original coordinates and λ_max: ([n_lr, C], [n_lr, C, d], [])."""
  X, y, n = _masked(X, y, mask)
  if scale is not None:
    X, x_q = X * scale, x_q * scale
  n = jnp.maximum(n, 1.0)
  lam, V = jnp.linalg.eigh(X.T @ X / n)
  proj = V.T @ (X.T @ y / n)  # [d]
  f = gd_filter(lam[None, None, :], lrs[:, None, None], steps[None, :, None])  # [n_lr, C, d]
  w_tilde = jnp.einsum("lcd,d,kd->lck", f, proj, V)
  w = w_tilde if scale is None else w_tilde * scale
  return w_tilde @ x_q, w, lam[-1]


def _path_setup(prompts: tasks.Prompt, lrs, steps):
  lrs, steps = _check_lrs(lrs), _check_steps(steps)
  return prompts.xs, prompts.ys, prompts.targets, lrs, np.asarray(steps, np.float64)


def _over_prompt_chunks(fn: Callable, xs, ys, targets, chunk: int, float64: bool) -> tuple[np.ndarray, np.ndarray]:
  """``fn(xs, ys, targets, weights) -> (Σ_b weights_b·sq_err_b [...], max over weighted prompts [...])`` over
  ``prompt_chunks`` (the padded copies at weight 0): (mean squared error [...], max) over all B prompts,
  accumulated in float64. ``float64``: traced and run with float64 inputs under a local ``jax.enable_x64`` (as
  ``in_float64``, but the partial sums stay float64)."""
  if float64:
    with jax.enable_x64(True):
      return _over_prompt_chunks(fn, *(np.asarray(a, np.float64) for a in (xs, ys, targets)), chunk, False)
  total, worst = None, None
  for parts, valid in prompt_chunks((xs, ys, targets), chunk):
    weights = (np.arange(parts[0].shape[0]) < valid).astype(parts[0].dtype)
    sq, mx = (np.asarray(a, np.float64) for a in fn(*parts, weights))
    with np.errstate(over="ignore"):  # a divergent (η, T) point's error may pass the float64 range: inf, as XLA's sum
      total = sq if total is None else total + sq
    worst = mx if worst is None else np.maximum(worst, mx)
  return total / xs.shape[0], worst


def gd_path_risks(prompts: tasks.Prompt, lrs: Sequence[float], steps: Sequence[float], preprocess: bool = False,
                  float64: bool = True, chunk: int = PROMPT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """Excess risk of GD (or PtO with ``preprocess``) at every step size, step count and n, and the step ratios.

  Returns (risks [n_lr, C, N], ratio [n_lr, N]): risks[i, j, n] = mean_b (ŷ_bn − target_bn)² for η = lrs[i],
  T = steps[j] (a non-negative integer, or inf for the limit), fitted on the n points before point n; ratio =
  max_b η·λ_max(G_bn), the stability statistic (divergence iff > 2). Equal to ``gd`` / ``pto`` at every (η, T)
  (closed form of the same iterates; one eigendecomposition per prompt and prefix, so T = 1e5 costs what T = 1
  does). Runs in float64 by default (``in_float64``), ``chunk`` prompts per call (memory bound). prompts.xs
  [B, N, d].
  """
  xs, ys, targets, lrs, steps = _path_setup(prompts, lrs, steps)
  fn = functools.partial(_gd_path_risks, preprocess=bool(preprocess))
  risks, lam_max = _over_prompt_chunks(lambda *a: fn(*a, lrs, steps), xs, ys, targets, chunk, float64)
  return risks, lrs[:, None] * lam_max[None, :]


@functools.partial(jax.jit, static_argnames="preprocess")
def _gd_path_risks(xs, ys, targets, weights, lrs, steps, preprocess: bool):
  """[B, N, d], [B, N], [B, N], [B], [n_lr], [C] -> (Σ_b weights_b·sq_err [n_lr, C, N], max_b λ_max [N] over the
  prompts of weight > 0)."""
  masks = prefix_masks(xs.shape[1], xs.dtype)

  def one(x, y, mask, x_q):
    scale = averaging_weights(x, y, mask) if preprocess else None
    preds, _, lam_max = _gd_spectral_preds(x, y, x_q, mask, scale, lrs, steps)
    return preds, lam_max

  preds, lam_max = jax.vmap(lambda x, y: jax.vmap(lambda m, q: one(x, y, m, q))(masks, x))(xs, ys)  # [B, N, l, C]
  sq = jnp.einsum("b,bnlc->lcn", weights, jnp.square(preds - targets[:, :, None, None]))
  return sq, jnp.max(jnp.where(weights[:, None] > 0, lam_max, 0.0), axis=0)


def gram_lambda_max(prompts: tasks.Prompt, preprocess: bool = False) -> np.ndarray:
  """λ_max of the GD Gram matrix G = X̃ᵀX̃/n of every prompt and prefix n: [B, N] (X̃ = X, or diag(r̂)X for PtO).

  GD with step η on that prefix diverges iff η·λ_max > 2.
  """
  fn = in_float64(functools.partial(_gram_lambda_max, preprocess=bool(preprocess)))
  return np.asarray(fn(prompts.xs, prompts.ys), np.float64)


@functools.partial(jax.jit, static_argnames="preprocess")
def _gram_lambda_max(xs, ys, preprocess: bool):
  masks = prefix_masks(xs.shape[1], xs.dtype)

  def one(x, y, mask):
    scale = averaging_weights(x, y, mask) if preprocess else None
    return _gd_spectral_preds(x, y, x[0], mask, scale, jnp.ones(1, xs.dtype), jnp.zeros(1, xs.dtype))[2]

  return jax.vmap(lambda x, y: jax.vmap(lambda m: one(x, y, m))(masks))(xs, ys)  # [B, N]


def iterated_pto_path_risks(prompts: tasks.Prompt, lrs: Sequence[float], steps: Sequence[float], rounds: int,
                            float64: bool = True, chunk: int = PROMPT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """Excess risk of ``iterated_pto`` after every round k = 1..``rounds`` at every (η, T) and n, and step ratios.

  Returns (risks [n_lr, C, K, N], ratio [n_lr, C, K, N]); ratio[..., k, n] = max over prompts and rounds <= k of
  η·λ_max of that round's Gram matrix (the step size must be stable in every round). Each round is one
  eigendecomposition per (η, T), prompt and prefix; round 1 is PtO (``gd_path_risks(preprocess=True)``).
  ``chunk`` prompts per call (memory bound).
  """
  xs, ys, targets, lrs, steps = _path_setup(prompts, lrs, steps)
  if not isinstance(rounds, (int, np.integer)) or rounds < 1:
    raise ValueError(f"rounds={rounds!r}: must be an integer >= 1")
  fn = functools.partial(_iterated_pto_path_risks, rounds=int(rounds))
  return _over_prompt_chunks(lambda *a: fn(*a, lrs, steps), xs, ys, targets, chunk, float64)


@functools.partial(jax.jit, static_argnames="rounds")
def _iterated_pto_path_risks(xs, ys, targets, weights, lrs, steps, rounds: int):
  masks = prefix_masks(xs.shape[1], xs.dtype)
  n_lr, n_t = lrs.shape[0], steps.shape[0]

  def one(x, y, mask, x_q):
    r = averaging_weights(x, y, mask)

    def fit(scale, lr, t):  # one round at one (η, T): (prediction, weights, λ_max)
      p, w, lam_max = _gd_spectral_preds(x, y, x_q, mask, scale, lr[None], t[None])
      return p[0, 0], w[0, 0], lam_max

    r_norm = jnp.linalg.norm(r)
    grid_lr = jnp.repeat(lrs, n_t)  # grid point g = (lrs[g // n_t], steps[g % n_t])
    grid_t = jnp.tile(steps, n_lr)
    # round 1 is PtO: every (η, T) shares the scale r, so one eigendecomposition serves the whole grid
    p, w, lam_max = _gd_spectral_preds(x, y, x_q, mask, r, lrs, steps)  # [n_lr, C], [n_lr, C, d], []
    p, w, worst = p.reshape(-1), w.reshape(n_lr * n_t, -1), grid_lr * lam_max
    preds, ratios = [p], [worst]
    for _ in range(rounds - 1):
      scales = jax.vmap(lambda v: _reweight(v, r_norm))(w)
      p, w, lam_max = jax.vmap(fit)(scales, grid_lr, grid_t)
      worst = jnp.maximum(worst, grid_lr * lam_max)
      preds.append(p)
      ratios.append(worst)
    return jnp.stack(preds, -1), jnp.stack(ratios, -1)  # [G, K]

  preds, ratios = jax.vmap(lambda x, y: jax.vmap(lambda m, q: one(x, y, m, q))(masks, x))(xs, ys)  # [B, N, G, K]
  sq = jnp.einsum("b,bngk->gkn", weights, jnp.square(preds - targets[:, :, None, None]))
  ratio = jnp.transpose(jnp.max(jnp.where(weights[:, None, None, None] > 0, ratios, 0.0), axis=0), (1, 2, 0))
  shape = (n_lr, n_t, rounds, xs.shape[1])
  return sq.reshape(shape), ratio.reshape(shape)


def _on_lasso_path(name: str, keys: Sequence[str]) -> bool:
  """Whether values of the hyper-parameters ``keys`` of ``name`` are the built-in lasso's α alone (solved on one
  homotopy path per problem by ``lasso_grid_predictions``)."""
  return name == "lasso" and ESTIMATORS["lasso"] is _BUILTIN["lasso"] and list(keys) == ["alpha"]


def grid_risks(name: str, grid: dict[str, Sequence[Any]], prompts: tasks.Prompt, *,
               float64: bool | None = None, chunk: int = PROMPT_CHUNK, **fixed
               ) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """Excess risk [G, N] of estimator ``name`` at every point of ``grid`` (their product), every n at once
  (prefix-wise, vmapped over the grid in one compile), and the G points as dicts. ``fixed`` binds the rest;
  ``float64`` as in ``predict``; ``chunk`` prompts per call (risks accumulated in float64)."""
  fn = _lookup(name)
  keys = list(grid)
  points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
  for point in points:
    check_hparams(name, **point)
  bound = {k: v for k, v in _bind(name, None, fixed, free=tuple(keys)).items() if k not in keys}
  if _on_lasso_path(name, keys) and _use_float64(name, float64):  # the whole α grid on one path per prefix
    preds = lasso_grid_predictions(prompts.xs, prompts.ys, [p["alpha"] for p in points],
                                   range(prompts.xs.shape[1]), chunk=chunk, **bound)  # [B, N, G]
  else:
    arrays = {k: jnp.asarray([p[k] for p in points], jnp.int32 if all(_is_int(p[k]) for p in points)
                             else jnp.float32) for k in keys}

    @jax.jit
    def run(arrays, xs, ys):  # -> [b, N, G]
      return jax.vmap(lambda hp: jax.vmap(lambda x, y: fn(x, y, **bound, **hp))(xs, ys), out_axes=-1)(arrays)

    preds = _chunked_preds(run, arrays, (prompts.xs, prompts.ys), chunk, _use_float64(name, float64))
  targets = np.asarray(prompts.targets, np.float64)
  return np.mean((preds - targets[..., None]) ** 2, axis=0).T, points


def grid_edges(choice: dict[str, Any], grid: dict[str, Sequence[Any]],
               natural: dict[str, Sequence[Any]] | None = None) -> list[str]:
  """The hyper-parameters of ``choice`` that sit at the smallest or largest value of their grid axis, except
  at a natural bound of that axis (``natural``, default: steps 0 and inf, rounds 1, lam / alpha 0, where
  no value lies beyond). A winner at an edge means the grid, not the method, may have decided the result."""
  natural = {"steps": (0, math.inf), "rounds": (1,), "lam": (0,), "alpha": (0,)} if natural is None else natural
  edges = []
  for key, values in grid.items():
    if key not in choice or choice[key] is None or len(values) < 2:
      continue
    v = choice[key]
    if v in natural.get(key, ()):
      continue
    if v == min(values) or v == max(values):
      edges.append(key)
  return edges


def tune_per_n(tune_risks: np.ndarray, eval_risks: np.ndarray, points: list[dict[str, Any]],
               grid: dict[str, Sequence[Any]] | None = None, eligible: np.ndarray | None = None) -> dict[str, Any]:
  """Per-n choice on a tuning set, read on an evaluation set.

  tune_risks, eval_risks [G, N] (the same G grid ``points``); ``eligible`` [G, N] bool (e.g. the stability
  rule: η·λ_max <= ``STABILITY_MARGIN`` on every tuning prompt); non-finite or ineligible points are never
  chosen unless nothing else is left. Returns {"risk": [N] eval risks of the winners, "hparams": [N] winners,
  "edges": [N] lists of the hyper-parameters at a grid edge (``grid_edges``; empty without ``grid``; a key is not
  flagged when a point off its edge ties with the winner)}.
  """
  tune_risks, eval_risks = np.asarray(tune_risks, np.float64), np.asarray(eval_risks, np.float64)
  if tune_risks.shape != eval_risks.shape or tune_risks.shape[0] != len(points):
    raise ValueError(f"tune_per_n: shapes {tune_risks.shape}, {eval_risks.shape} and {len(points)} points disagree")
  ok = np.isfinite(tune_risks) if eligible is None else np.isfinite(tune_risks) & np.asarray(eligible, bool)
  ranked = np.where(ok, tune_risks, np.inf)
  best = np.argmin(ranked, axis=0)  # [N]
  hparams = [points[g] for g in best]
  edges = []
  for n, h in enumerate(hparams):
    flagged = grid_edges(h, grid) if grid else []
    # an edge matters only if no point off that edge does as well (ties, e.g. n = 0 where every point predicts 0)
    tie = ranked[best[n], n] * (1 + 1e-9) + 1e-300
    edges.append([k for k in flagged if not any(ranked[g, n] <= tie and k not in grid_edges(points[g], {k: grid[k]})
                                                  for g in range(len(points)))])
  return {"risk": eval_risks[best, np.arange(eval_risks.shape[1])].tolist(), "hparams": hparams, "edges": edges}
