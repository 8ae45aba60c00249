"""Closed-form D·L constants of softmax-kernel in-context regression (isotropic inputs), after theory.md.

Conventions (all parameters; see ``jaxicl.theory.common`` for the general data model):
  * x, x_i ~ N(0, I_d); θ ~ N(0, τ² I_d) with τ² = 1/d by default (E||θ||² = E(θᵀx)² = 1, the
    convention of theory.md's table); y_i = θᵀx_i + ε_i, ε_i ~ N(0, σ²); L = E[(ŷ − θᵀx)²] (noise-free target).
  * Predictor over D context examples: ŷ = Σ_k c_k Σ_i y_i softmax_i(w_k x_iᵀx). ``w_k`` is the *effective*
    inverse temperature: a model with logits x_iᵀ(a_k I)x / T has w_k = a_k / T; the ``temperature``
    arguments report a_k = T·w_k instead (c and the constants do not depend on T).

Asymptotics (delta method on the ratio estimators, theory.md): ŷ → (Σ_k c_k w_k) θᵀx, and if Σ_k c_k w_k = 1

    D·L → C(c, w) = cᵀ G(w) c,   G_kl = g(w_k w_l),
    g(t) = (S + σ²)(1 − 2t)^(−d/2) + S·t(1 − 2t)^(−d/2−1)     (finite for t < 1/2),

with S = E(θᵀx)² = d·τ² the signal variance. theory.md writes S = 1. For another τ² only the signal part
scales (with d·τ²); the noise part (the σ² term) does not. In particular

    C_single = min_{0<s<1/2} g(s)/s,   s* = 2 / (d + 4 + sqrt(d² + 4(d+2)ρ)),  ρ = S/(S + σ²)   (exact root of
               the stationarity condition (d+2)(ρ−2)s² + (d+4)s − 1 = 0),
    C_multi  = g'(0) = d(S + σ²) + S        (infimum over any h ≥ 2 heads; not attained: approached by the
               zero-sum symmetric pair w_1 = −w_2 = w → 0, c_1 = −c_2 = 1/(2w)).

C_multi is a lower bound for every (c, w): g has non-negative Taylor coefficients a_n, so G ⪰ a_1 wwᵀ and
wᵀG⁻¹w ≤ 1/a_1 = 1/g'(0).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxicl.theory import _optim
from jaxicl.theory.common import check_d, check_nonneg, fail, resolve_tau2


def _check(d: int, sigma2: float, tau2: float | None) -> tuple[int, float, float]:
  """Validates (d, σ², τ²) and returns (d, σ², S = d·τ²)."""
  d = check_d(d)
  sigma2 = check_nonneg(sigma2, "noise_var")
  return d, sigma2, d * resolve_tau2(d, tau2)


def signal_variance(d: int, tau2: float | None = None) -> float:
  """S = E(θᵀx)² = d·τ² for x ~ N(0, I_d), θ ~ N(0, τ² I) (1 with the default τ² = 1/d)."""
  d = check_d(d)
  return d * resolve_tau2(d, tau2)


def g_function(t, d: int, noise_var: float, signal: float, xp=np):
  """g(t) = (S + σ²)(1 − 2t)^(−d/2) + S·t(1 − 2t)^(−d/2−1), elementwise; ``xp`` is numpy or jax.numpy.

  With numpy the result is float64 and +inf where it overflows (never ``OverflowError``), as with jax.numpy.
  """
  if xp is np:
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):
      base = 1.0 - 2.0 * t
      return (signal + noise_var) * base ** (-d / 2.0) + signal * t * base ** (-d / 2.0 - 1.0)
  base = 1.0 - 2.0 * t
  return (signal + noise_var) * base ** (-d / 2.0) + signal * t * base ** (-d / 2.0 - 1.0)


def g(t, d: int, noise_var: float, tau2: float | None = None) -> np.ndarray:
  """g(t) (float64, elementwise over ``t`` < 1/2). Entry G_kl = g(w_k w_l) of the head Gram matrix."""
  d, sigma2, signal = _check(d, noise_var, tau2)
  t = np.asarray(t, dtype=np.float64)
  if np.any(t >= 0.5):
    fail("t", t.tolist(), "g(t) is finite only for t < 1/2")
  return g_function(t, d, sigma2, signal)


class SingleHeadOptimum(NamedTuple):
  """Best single head: D·L → ``constant`` at kernel scale s* = w*² (c = 1/w*)."""

  constant: float
  s: float
  w: float


def single_head_constant(s: float, d: int, noise_var: float, tau2: float | None = None) -> float:
  """D·L limit of one head at s = w² (c = 1/w): g(s)/s = (1−2s)^(−d/2)[(S+σ²)/s + S/(1−2s)] (inf if it overflows)."""
  d, sigma2, signal = _check(d, noise_var, tau2)
  if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or not 0.0 < s < 0.5:
    fail("s", s, "must lie in (0, 1/2)")
  return float(g_function(s, d, sigma2, signal) / s)


def c_single(d: int, noise_var: float, tau2: float | None = None, temperature: float = 1.0) -> SingleHeadOptimum:
  """C_single = min_{0<s<1/2} g(s)/s, in closed form (see the module docstring for s*).

  ``temperature`` T only rescales the reported w (w_model = T·w*). For S = 0 (no signal) the minimiser is
  s* = 1/(d+2).
  """
  d, sigma2, signal = _check(d, noise_var, tau2)
  if signal + sigma2 == 0.0:
    return SingleHeadOptimum(0.0, math.nan, math.nan)
  rho = signal / (signal + sigma2)
  s = 2.0 / (d + 4.0 + math.sqrt(d * d + 4.0 * (d + 2.0) * rho))
  value = float(g_function(s, d, sigma2, signal) / s)
  return SingleHeadOptimum(value, s, temperature * math.sqrt(s))


def c_multi(d: int, noise_var: float, tau2: float | None = None) -> float:
  """C_multi = g'(0) = d(S + σ²) + S: infimum of cᵀGc over any number h ≥ 2 of full-rank heads."""
  d, sigma2, signal = _check(d, noise_var, tau2)
  return d * (signal + sigma2) + signal


def _pow_difference(s, a):
  """(1 − 2s)^(−a) − (1 + 2s)^(−a) without cancellation: (1+2s)^(−a)·expm1(2a·atanh(2s)) (inf on overflow)."""
  with np.errstate(over="ignore", invalid="ignore"):
    out = (1.0 + 2.0 * s) ** (-a) * np.expm1(2.0 * a * np.arctanh(2.0 * s))
  return np.where(np.isnan(out), np.inf, out)


def pair_constant(s, d: int, noise_var: float, tau2: float | None = None):
  """C_2(s): symmetric pair w_1 = −w_2 = √s, c_1 = −c_2 = 1/(2√s) (the optimal c for this w).

  C_2(s) = (g(s) − g(−s))/(2s) = (S+σ²)[(1−2s)^(−d/2) − (1+2s)^(−d/2)]/(2s) + S[(1−2s)^(−d/2−1) + (1+2s)^(−d/2−1)]/2,
  equal to theory.md's form for S = 1; C_2(0) = C_multi, increasing in s (odd Taylor coefficients of g are >= 0).
  Elementwise over s in [0, 1/2).
  """
  d, sigma2, signal = _check(d, noise_var, tau2)
  s = np.asarray(s, dtype=np.float64)
  if np.any((s < 0) | (s >= 0.5)):
    fail("s", s.tolist(), "must lie in [0, 1/2)")
  safe = np.where(s > 0, s, 0.25)
  ratio = np.where(s > 0, _pow_difference(safe, d / 2.0) / (2.0 * safe), float(d))  # limit s -> 0: d
  with np.errstate(over="ignore", invalid="ignore"):
    out = (signal + sigma2) * ratio + 0.5 * signal * ((1 - 2 * s) ** (-d / 2 - 1) + (1 + 2 * s) ** (-d / 2 - 1))
  return float(out) if out.ndim == 0 else out


def head_gram(w, d: int, noise_var: float, tau2: float | None = None) -> np.ndarray:
  """G(w) [h, h], G_kl = g(w_k w_l); needs w_k² < 1/2 for every head (then every w_k w_l < 1/2)."""
  d, sigma2, signal = _check(d, noise_var, tau2)
  w = np.atleast_1d(np.asarray(w, dtype=np.float64))
  if np.any(w**2 >= 0.5):
    fail("w", w.tolist(), "every head needs w_k² < 1/2 (else E[a_k²] diverges)")
  return g_function(np.outer(w, w), d, sigma2, signal)


def head_constant(c, w, d: int, noise_var: float, tau2: float | None = None, atol: float = 1e-8) -> float:
  """D·L limit cᵀG(w)c of the heads (c, w); raises if Σ_k c_k w_k ≠ 1 (then L → a constant bias)."""
  c = np.atleast_1d(np.asarray(c, dtype=np.float64))
  w = np.atleast_1d(np.asarray(w, dtype=np.float64))
  if c.shape != w.shape:
    fail("c", c.tolist(), f"must have the shape of w {w.shape}")
  total = float(c @ w)
  if abs(total - 1.0) > atol:
    fail("c", c.tolist(), f"sum_k c_k w_k = {total:.6g} != 1: the loss keeps an O(1) bias, no O(1/D) constant")
  return float(c @ head_gram(w, d, noise_var, tau2) @ c)


def optimal_output_weights(w, d: int, noise_var: float, tau2: float | None = None) -> tuple[np.ndarray, float]:
  """Best c for given w: c = G⁻¹w / (wᵀG⁻¹w), constant 1/(wᵀG⁻¹w) (pseudo-inverse if G is singular)."""
  w = np.atleast_1d(np.asarray(w, dtype=np.float64))
  gram = head_gram(w, d, noise_var, tau2)
  z = np.linalg.lstsq(gram, w, rcond=1e-13)[0]
  c = z / (w @ z)
  return c, float(c @ gram @ c)


class HeadsOptimum(NamedTuple):
  """Numerical optimum of cᵀG(w)c over h heads with |w_k| in [w_min, w_max] (c eliminated exactly)."""

  constant: float
  c: np.ndarray
  w: np.ndarray
  w_min: float
  w_max: float


def default_w_min(d: int) -> float:
  """Default lower bound on |w_k| for the head optimisation: 0.1/√d (w* of one head is ≈ 1/√(d+3))."""
  return 0.1 / math.sqrt(d)


_GROWTH = 20.0  # default w_max: the Gram entries grow by at most e^_GROWTH over g(0)


def default_w_max(d: int) -> float:
  """Default upper bound on |w_k|: min(0.7, w) with (1 − 2w²)^(−d/2) = e^20, so G stays finite and well scaled.

  Larger heads cannot help: the one-head optimum s* ≈ 1/d has (1 − 2s*)^(−d/2) ≈ e, and for h ≥ 2 the optimum
  sits at small |w|. The bound shrinks like √(20/d) for large d (0.7 for d <= 80).
  """
  return min(0.7, math.sqrt(-math.expm1(-2.0 * _GROWTH / d) / 2.0))


def optimal_heads(h: int, d: int, noise_var: float, tau2: float | None = None, *, w_min: float | None = None,
                  w_max: float | None = None, n_starts: int = 24, steps: int = 60, seed: int = 0,
                  time_limit: float = 600.0) -> HeadsOptimum:
  """min over (c, w) of cᵀG(w)c s.t. Σ c_k w_k = 1, |w_k| ∈ [w_min, w_max], by numerical optimisation in JAX.

  For given w the optimal c is G⁻¹w/(wᵀG⁻¹w) with value 1/(wᵀG⁻¹w); w_k = ±(w_min + (w_max − w_min)·sigmoid(u_k))
  is optimised by a multi-start damped Newton method in JAX (float64, ``steps`` iterations: bounded time),
  ``n_starts`` starts cycling over the sign patterns (the number of positive heads). The optimum for h heads is
  built from the one for h − 1 (warm starts: its heads plus one new head), and is never worse than it padded
  with a zero head (c_h = 0), so the constant is non-increasing in h by construction. h = 1 reproduces
  C_single. For h >= 2 the infimum C_multi is approached only as w → 0, so the optimum sits on |w_k| = w_min
  for some heads; it decreases to C_multi as w_min → 0 (and with more heads at fixed w_min, which cancel more
  Taylor terms of g). ``w_max`` must be < 1/√2 (G is finite iff every w_k² < 1/2); its default
  ``default_w_max(d)`` keeps G finite at any d. Raises ``TimeoutError`` after ``time_limit`` seconds.
  """
  if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
    fail("heads", h, "must be an integer >= 1")
  d, sigma2, signal = _check(d, noise_var, tau2)
  w_min = default_w_min(d) if w_min is None else float(w_min)
  if w_max is None:
    w_max = default_w_max(d) if default_w_max(d) > w_min else 0.5 * (w_min + math.sqrt(0.5))
  w_max = float(w_max)
  if not 0.0 < w_min < w_max < math.sqrt(0.5):
    fail("w_min, w_max", (w_min, w_max), "need 0 < w_min < w_max < 1/sqrt(2)")
  if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
    fail("n_starts", n_starts, "must be an integer >= 1")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    fail("steps", steps, "must be an integer >= 1")
  deadline = time.monotonic() + time_limit
  best = None
  for k in range(1, int(h) + 1):
    best = _optimal_heads_step(k, best, d, sigma2, signal, w_min, w_max, int(n_starts), int(steps), seed)
    if time.monotonic() > deadline and k < h:
      raise TimeoutError(f"optimal_heads(h={h}, d={d}): time_limit={time_limit:g} s reached after {k} heads; "
                         "lower n_starts or steps, or raise time_limit")
  value, c, w = best
  return HeadsOptimum(value, c, w, w_min, w_max)


def _exact_value(w: np.ndarray, d: int, sigma2: float, signal: float) -> tuple[np.ndarray, float] | None:
  """(c, cᵀGc) for heads w (sorted descending), or None if G is not finite or the solve fails."""
  gram = head_gram(w, d, sigma2, signal / d)
  if not np.all(np.isfinite(gram)):
    return None
  try:
    c, value = optimal_output_weights(w, d, sigma2, signal / d)
  except np.linalg.LinAlgError:
    return None
  return (c, value) if np.isfinite(value) and value > 0 else None


def _optimal_heads_step(h: int, previous: tuple | None, d: int, sigma2: float, signal: float, w_min: float,
                        w_max: float, n_starts: int, steps: int, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
  """(value, c, w) for h heads: multi-start Newton with warm starts from ``previous`` = the h − 1 optimum."""
  width = max(h, _PAD_HEADS)  # padded (inactive heads masked out): one compilation serves every h <= 8
  patterns = [np.array([1.0] * n_plus + [-1.0] * (h - n_plus) + [0.0] * (width - h))
              for n_plus in range((h + 1) // 2, h + 1)]
  signs = np.stack([patterns[i % len(patterns)] for i in range(n_starts)])  # a fixed count: one compilation
  starts = np.random.default_rng(seed).normal(0.0, 1.5, size=signs.shape)
  if previous is not None:  # warm starts: the h - 1 heads, plus a new head of either sign near either bound
    fraction = np.clip((np.abs(previous[2]) - w_min) / (w_max - w_min), 1e-9, 1.0 - 1e-9)
    u_prev = np.log(fraction) - np.log1p(-fraction)
    for j, (sign, u_new) in enumerate(((1.0, -3.0), (-1.0, -3.0), (1.0, 0.0), (-1.0, 0.0))[:n_starts]):
      signs[j] = 0.0
      signs[j, :h] = np.append(np.sign(previous[2]), sign)
      starts[j] = 0.0
      starts[j, :h] = np.append(u_prev, u_new)
  n = len(signs)
  aux = {"sign": signs, "d": np.full(n, d), "noise": np.full(n, sigma2), "signal": np.full(n, signal),
         "lo": np.full(n, w_min), "hi": np.full(n, w_max)}
  us, _ = _optim.minimise(_heads_objective, starts, aux, steps=steps)
  best = None
  for k in range(n):  # re-evaluate every start exactly (pseudo-inverse), keep the best
    w = np.sort(_bounded_w(us[k], signs[k], w_min, w_max, xp=np)[:h])[::-1]
    exact = _exact_value(w, d, sigma2, signal)
    if exact is not None and (best is None or exact[1] < best[0]):
      best = (exact[1], exact[0], w)
  if previous is not None and (best is None or best[0] > previous[0]):
    # never worse than the h - 1 optimum plus a zero head (c = 0 at |w| = w_min): the same predictor
    w = np.append(previous[2], w_min)
    c = np.append(previous[1], 0.0)
    order = np.argsort(-w, kind="stable")
    best = (previous[0], c[order], w[order])
  if best is None:
    raise ValueError(f"optimal_heads(h={h}, d={d}): no start gave a finite constant (w_max={w_max:g}); "
                     "lower w_max")
  return best


_PAD_HEADS = 8


def _bounded_w(u, sign, lo, hi, xp=jnp):
  """w_k = sign_k·(lo + (hi − lo)·sigmoid(u_k)); ``xp`` is numpy or jax.numpy."""
  return sign * (lo + (hi - lo) * 0.5 * (1.0 + xp.tanh(0.5 * u)))  # overflow-free sigmoid


def _heads_objective(u: jnp.ndarray, aux: dict) -> jnp.ndarray:
  """1/(wᵀG⁻¹w) at w = _bounded_w(u) over the active heads (a tiny ridge keeps G invertible when heads coincide)."""
  w = _bounded_w(u, aux["sign"], aux["lo"], aux["hi"])
  active = jnp.abs(aux["sign"])
  gram = g_function(jnp.outer(w, w), aux["d"], aux["noise"], aux["signal"], xp=jnp)
  gram = jnp.outer(active, active) * gram + jnp.diag(1.0 - active)  # masked heads: identity block, w_k = 0
  gram = gram + 1e-10 * jnp.trace(gram) * jnp.eye(w.shape[0])
  return 1.0 / (w @ jnp.linalg.solve(gram, w))
