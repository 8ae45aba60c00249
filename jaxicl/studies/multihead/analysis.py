"""Theory lines of study 1, computed with ``jaxicl.theory`` (the team's derivation, shared/theory.md).

* ``variant_theory``: the D·L limits C_single and C_multi of a task variant (isotropic / noisy labels, correlated
  features, local examples, weak / strong prior), plus scenario extras (e.g. the constants without a prior path).
* ``finite_d_curves``: the finite-D optimum of two restricted kernel families by Monte Carlo: one head
  (A = wI, best c for each w) and the symmetric pair (w, −w) with c = t·(1, −1)/(2w) (best t), minimised over a
  grid of w. D·L of a trained model at finite D should be compared with these, not only with the D → ∞ limits.
* ``rank_limited``: the leading-order best loss of h heads of rank p/h (``theory.rank_limited_loss``).
* ``head_theory``: theory's verdict on the heads extracted from a trained model: predicted L(D) of the learned
  kernels (closed-form asymptotics for matrix kernels) and the optimal (c, w) to compare with.

The Monte Carlo fit. For fixed kernels the loss is quadratic in a scalar multiplier t of the output weights,
L(t) = L0 + a·t + q·t²; evaluating t ∈ {0, 1, 2} on common random numbers gives q = (L2 − 2L1 + L0)/2,
a = L1 − L0 − q and min_t L = L0 − a²/(4q) (t* = −a/(2q)).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from jaxicl.studies.multihead.heads import HeadParams
from jaxicl.studies.multihead.presets import Variant
from jaxicl import theory as T


def variant_theory(variant: Variant, d: int, D: int) -> dict[str, Any]:
  """D·L limit constants of ``variant`` at input dimension d (D matters only for the strong prior, τ² = κ/D).

  Returns {"C_single", "C_multi", "single": TheoryResult dict, "multi": ..., "extras": {name: value}}.
  """
  if variant.scenario in ("isotropic", "noise"):
    res = T.isotropic(d, variant.noise_var)
  elif variant.scenario == "correlated":
    res = T.correlated_features(d, variant.noise_var, cov=variant.cov, rho=variant.rho)
  elif variant.scenario == "local":
    res = T.local_examples(d, variant.noise_var, variant.local_radius)
  elif variant.scenario == "prior":
    regime = "weak" if variant.kappa is None else "strong"
    res = T.prior_knowledge(d, variant.noise_var, variant.prior_mean_norm**2, regime=regime,
                            kappa=1.0 if variant.kappa is None else variant.kappa)
  else:
    raise ValueError(f"Variant.scenario={variant.scenario!r}: unknown")
  out = res.to_dict()
  extras = {k: v.value for k, v in res.extras.items() if isinstance(v, T.TheoryResult)}
  return {"C_single": res.single.value, "C_multi": res.multi.value, "single": out["single"], "multi": out["multi"],
          "extras": extras}


def _quadratic_min(l0: np.ndarray, l1: np.ndarray, l2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(min_t L(t), t*) of the quadratic through L(0), L(1), L(2) (L0 where it is not convex)."""
  q = 0.5 * (l2 - 2.0 * l1 + l0)
  a = l1 - l0 - q
  convex = q > 0
  safe_q = np.where(convex, q, 1.0)
  t = np.where(convex, -a / (2.0 * safe_q), 0.0)
  return np.where(convex, l0 - a * a / (4.0 * safe_q), l0), t


def finite_d_curves(d: int, noise_var: float, Ds: Sequence[int], n_prompts: int, seed: int = 0,
                    n_grid: int = 20) -> dict[str, Any]:
  """Finite-D D·L optimum (Monte Carlo) of one head and of the symmetric pair, at each D in ``Ds``.

  Kernels are evaluated as two padded heads (the single head has a second head with c = 0), so one compiled
  Monte Carlo program serves both families. Returns {"D", "single", "single_w", "pair", "pair_w", "n_prompts"}
  with D·L values and the minimising kernel scale at each D.
  """
  ds = sorted(int(x) for x in Ds)
  w_single = np.linspace(0.1, 1.0, n_grid)
  w_pair = np.geomspace(0.005, 0.5, n_grid)
  kernels, coeffs = [], []
  for t in (0.0, 1.0, 2.0):
    for w in w_single:
      kernels.append([w, 0.0])
      coeffs.append([t / w, 0.0])
    for w in w_pair:
      kernels.append([w, -w])
      coeffs.append([t / (2 * w), -t / (2 * w)])
  model = T.DataModel(d=d, noise_var=noise_var)
  res = T.mc_loss(model, np.asarray(coeffs), np.asarray(kernels), ds, n_prompts=n_prompts, seed=seed)
  mean = np.asarray(res.mean).reshape(3, 2 * n_grid, len(ds))
  best, _ = _quadratic_min(mean[0], mean[1], mean[2])  # [2·n_grid, nD]
  scale = np.asarray(ds, np.float64)
  single, pair = best[:n_grid], best[n_grid:]
  return {"D": ds, "single": (single.min(0) * scale).tolist(), "single_w": w_single[single.argmin(0)].tolist(),
          "pair": (pair.min(0) * scale).tolist(), "pair_w": w_pair[pair.argmin(0)].tolist(),
          "n_prompts": int(res.n_prompts)}


def rank_limited(d: int, p: int, h: int, noise_var: float, D: int) -> dict[str, Any]:
  """Leading-order best D·L at D of h heads of rank r = p/h on coordinate blocks (``theory.rank_limited_loss``).

  Returns {"dl", "bias_floor_dl", "full_rank_dl", "single_dl", "r", "blocks"} (losses multiplied by D).
  """
  res = T.rank_limited_loss(d, p, h, noise_var, D)
  return {"dl": res.d_times_loss, "bias_floor_dl": D * res.bias_floor, "full_rank_dl": D * res.full_rank_loss,
          "single_dl": D * res.single_loss, "r": res.r, "blocks": [list(b) for b in res.blocks]}


def optimal_heads(h: int, d: int, noise_var: float) -> dict[str, Any]:
  """Theory's optimal (c, w) for h full-rank heads: the closed form for h = 1, ``theory.optimal_heads`` else
  (|w_k| ≥ 0.1/√d: the multi-head infimum is only approached as w → 0)."""
  if h == 1:
    opt = T.c_single(d, noise_var)
    return {"c": [1.0 / opt.w], "w": [opt.w], "constant": opt.constant}
  opt = T.optimal_heads(h, d, noise_var)
  return {"c": np.asarray(opt.c).tolist(), "w": np.asarray(opt.w).tolist(), "constant": float(opt.constant),
          "w_min": float(opt.w_min)}


def head_theory(heads: HeadParams, d: int, noise_var: float, D: int) -> dict[str, Any]:
  """Theory applied to extracted heads: the asymptotic loss of the learned kernel predictor Σ_k c_k softmax(A_k).

  Uses the closed-form matrix-kernel asymptotics (``theory.kernel_asymptotics``) for the kernels A_k and
  output weights c_k (the small b_k, u_k terms are ignored). Returns {"bias", "variance", "cross",
  "predicted_dl" = D·(bias + (variance + cross)/D), "isotropic_constant"} where "isotropic_constant" is
  cᵀG(w)c after rescaling c so that Σ c_k w_k = 1 (the D·L limit of A_k = w_k I heads); NaN where undefined.
  """
  model = T.DataModel(d=d, noise_var=noise_var)
  try:
    asym = T.kernel_asymptotics(heads.c, heads.A, model)
    bias, var, cross = asym.bias, asym.variance, asym.cross
  except (ValueError, FloatingPointError):
    bias = var = cross = math.nan
  w = heads.w
  total = float(heads.c @ w)
  try:
    iso = T.head_constant(heads.c / total, w, d, noise_var) if total != 0 else math.nan
  except ValueError:
    iso = math.nan
  predicted = D * bias + var + cross
  return {"bias": bias, "variance": var, "cross": cross,
          "predicted_dl": predicted if np.isfinite(predicted) else math.nan,
          "isotropic_constant": iso}
