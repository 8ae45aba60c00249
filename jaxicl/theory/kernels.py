"""Asymptotic loss of kernel predictors with general matrix kernels, in closed form (Gaussian integrals, JAX).

Predictor ŷ = Σ_k c_k Σ_i y_i softmax_i(x_iᵀW_k x) over D i.i.d. context examples x_i ~ N(0, Σ), θ with second
moment P = E[θθᵀ] = θ0θ0ᵀ + τ²I, noise σ² (``DataModel`` without locality). With v_k = W_k x, m_k = θᵀΣW_k x,
m_0 = θᵀx and e_k = exp(xᵀW_kᵀΣW_k x), the Gaussian tilt E[x' e^{x'ᵀv}] = Σv·e^{vᵀΣv/2} gives
(derived here; it generalises theory.md's isotropic G):

  * limit  ŷ → Σ_k c_k m_k, so       bias   = E(Σ_k c_k m_k − m_0)²  (zero iff Σ_k c_k ΣW_k = I when P ≻ 0);
  * fluctuation (delta method)       G_kl   = E_x[ e^{xᵀW_kᵀΣW_l x} (tr(PΣ) + σ² + xᵀW_kᵀΣPΣW_l x) ];
  * ratio-estimator bias −m_k e_k / D, which meets a non-zero limit bias in the cross term
                                     cross  = −2 Σ_k c_k E[(Σ_l c_l m_l − m_0) m_k e_k];

    L(D) = bias + (cᵀGc + cross)/D + o(1/D).

Every x-expectation is a Gaussian integral in closed form: for x ~ N(0, Σ), S = Σ^{1/2}, K = S·sym(M)·S ≺ I/2,
E[e^{xᵀMx}] = det(I − 2K)^(−1/2) and E[xᵀNx e^{xᵀMx}] = det(I − 2K)^(−1/2) tr(S·sym(N)·S (I − 2K)⁻¹).
For W_k = w_k I, Σ = I, θ0 = 0 this reduces to G_kl = g(w_k w_l) of ``jaxicl.theory.constants``.
The loss is quadratic in c, so for given kernels the best c of the leading-order loss bias + cᵀGc/D is a
linear solve (``best_output_weights``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.theory.common import DataModel, fail, float64


class KernelAsymptotics(NamedTuple):
  """L(D) ≈ bias + (variance + cross)/D; ``variance`` = cᵀGc is the D·L constant when bias = 0."""

  bias: float
  variance: float
  cross: float

  def loss(self, D: float) -> float:
    """The asymptotic loss at D."""
    return self.bias + (self.variance + self.cross) / D


def _sym(m):
  return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def gaussian_exp_moments(m, n, cov_sqrt):
  """(E[e^{xᵀMx}], E[xᵀNx e^{xᵀMx}]) for x ~ N(0, Σ), Σ^{1/2} = ``cov_sqrt`` (jnp; inf where 2K ⊀ I)."""
  k = cov_sqrt @ _sym(m) @ cov_sqrt
  evals, evecs = jnp.linalg.eigh(jnp.eye(k.shape[-1]) - 2.0 * k)
  ok = jnp.min(evals) > 0
  safe = jnp.where(ok, evals, 1.0)
  det_factor = jnp.exp(-0.5 * jnp.sum(jnp.log(safe)))
  inner = evecs.T @ (cov_sqrt @ _sym(n) @ cov_sqrt) @ evecs
  trace = jnp.sum(jnp.diag(inner) / safe)
  inf = jnp.asarray(jnp.inf, det_factor.dtype)
  return jnp.where(ok, det_factor, inf), jnp.where(ok, det_factor * trace, inf)


@jax.jit
def quadratic_pieces(kernels, consts: dict) -> dict:
  """The c-independent pieces of the asymptotic loss for kernels W [h, d, d] (jnp, differentiable).

  Returns M [h,h], mu [h], m00, G [h,h], H [h,h], nu [h] with bias = m00 − 2cᵀmu + cᵀMc, variance = cᵀGc,
  cross = −2cᵀHc + 2cᵀnu. ``consts`` holds ``cov``, ``cov_sqrt``, ``P`` (E θθᵀ) and ``noise`` as arrays.
  """
  cov, cov_sqrt, second, noise = consts["cov"], consts["cov_sqrt"], consts["P"], consts["noise"]
  a = jnp.einsum("kji,jm,lmn->klin", kernels, cov, kernels)  # W_kᵀ Σ W_l
  sps = cov @ second @ cov
  nvar = jnp.einsum("kji,jm,lmn->klin", kernels, sps, kernels)  # W_kᵀ ΣPΣ W_l
  m00 = jnp.trace(second @ cov)
  moments = jax.vmap(jax.vmap(gaussian_exp_moments, (0, 0, None)), (0, 0, None))
  e_pair, en_pair = moments(a, nvar, cov_sqrt)
  gram = e_pair * (m00 + noise) + en_pair
  m_mat = jnp.einsum("klij,ji->kl", nvar, cov)
  mu = jnp.einsum("kji,jm,mi->k", kernels, sps, jnp.eye(cov.shape[0]))  # tr(W_kᵀ ΣPΣ)
  diag_a = jnp.einsum("kkij->kij", a)
  per_k = jax.vmap(lambda mk, nk: gaussian_exp_moments(mk, nk, cov_sqrt)[1])
  h_raw = jax.vmap(lambda k: per_k(jnp.broadcast_to(diag_a[k], nvar[k].shape), nvar[k]))(jnp.arange(kernels.shape[0]))
  nu = per_k(diag_a, jnp.einsum("ij,jm,kmn->kin", second, cov, kernels))  # E[xᵀPΣW_k x e_k]
  return {"M": m_mat, "mu": mu, "m00": m00, "G": gram, "H": _sym(h_raw), "nu": nu}


def model_consts(model: DataModel) -> dict:
  """numpy constants of a (non-local) data model for ``quadratic_pieces``."""
  if model.local_radius is not None:
    fail("local_radius", model.local_radius, "the matrix-kernel closed form covers i.i.d. context only")
  return {"cov": model.cov_matrix(), "cov_sqrt": model.cov_sqrt(), "P": model.theta_second_moment(),
          "noise": np.float64(model.noise_var)}


def as_matrices(kernels, d: int) -> np.ndarray:
  """[h] scalars w_k -> w_k I_d; [h, d, d] passes through."""
  k = np.asarray(kernels, dtype=np.float64)
  if k.ndim == 1:
    return k[:, None, None] * np.eye(d)
  if k.ndim != 3 or k.shape[1:] != (d, d):
    fail("kernels", k.shape, f"must be [h] or [h, {d}, {d}]")
  return k


def kernel_asymptotics(c, kernels, model: DataModel) -> KernelAsymptotics:
  """Closed-form (bias, variance = cᵀGc, cross) of the heads (c, W) under ``model`` (see the module docstring)."""
  c = np.atleast_1d(np.asarray(c, dtype=np.float64))
  mats = as_matrices(kernels, model.d)
  if mats.shape[0] != c.shape[0]:
    fail("c", c.shape, f"must have one entry per kernel ({mats.shape[0]})")
  with float64():
    pieces = jax.tree.map(np.asarray, quadratic_pieces(jnp.asarray(mats), jax.tree.map(jnp.asarray,
                                                                                        model_consts(model))))
  bias = float(pieces["m00"] - 2 * c @ pieces["mu"] + c @ pieces["M"] @ c)
  return KernelAsymptotics(max(bias, 0.0), float(c @ pieces["G"] @ c),
                           float(-2 * c @ pieces["H"] @ c + 2 * c @ pieces["nu"]))


def best_output_weights(kernels, model: DataModel, D: float) -> tuple[np.ndarray, float]:
  """c minimising the leading-order loss bias(c) + cᵀGc/D for fixed kernels (a linear solve: M + G/D is PSD),
  and that loss. (The O(bias/D) cross term is left out: kept in, its sign-indefinite −2H/D part would reward
  large kernels where the expansion breaks down.)"""
  mats = as_matrices(kernels, model.d)
  with float64():
    p = jax.tree.map(np.asarray, quadratic_pieces(jnp.asarray(mats), jax.tree.map(jnp.asarray, model_consts(model))))
  q_mat = p["M"] + p["G"] / D
  c = np.linalg.lstsq(q_mat, p["mu"], rcond=1e-13)[0]
  return c, float(p["m00"] - 2 * c @ p["mu"] + c @ q_mat @ c)
