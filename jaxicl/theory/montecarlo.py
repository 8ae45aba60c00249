"""Monte Carlo evaluation of kernel (softmax-attention) predictors at finite D, in JAX (jit + vmap).

Predictor (h heads; the family every constant of ``jaxicl.theory`` refers to):

    ŷ = γᵀx + Σ_k c_k Σ_i (y_i − βᵀx_i) softmax_i(x_iᵀ A_k x / T),     i = 1..D,

with A_k = w_k I (``kernels`` of shape [..., h]) or general d×d matrices (``kernels`` [..., h, d, d]); the
residual path γ (``offset``) and the value shift β (``value_shift``) default to 0 (the plain predictor of
theory.md); T is the temperature. Data follow a ``DataModel`` (inputs N(0, Σ) or local to the query, θ ~ N(θ0, τ²I),
label noise σ²) and the loss is L = E[(ŷ − θᵀx)²] against the noise-free label.

Estimator. With ``conditional=True`` (default) θ and ε are integrated out exactly given the inputs: the kernel
weights α_i = Σ_k c_k softmax_i(·) depend on inputs only, and with u = Σ_i α_i x_i − x

    E[(ŷ − θᵀx)² | x, x_1..x_D] = ((θ0 − β)ᵀu + (γ − β)ᵀx)² + τ²||u||² + σ²||α||²,

so only the inputs are sampled (same predictor, same expectation, smaller variance). ``conditional=False``
samples θ and ε too. For Σ = I and scalar kernels (A_k = w_k I) the conditional estimator also integrates out,
exactly, every input component orthogonal to the query direction x̂ (the weights depend on x_i only through
z_i = x_iᵀx̂, and given the z_i the orthogonal parts of u are N(0, q||α||²) with q = 1, or r² for local examples):

    E[loss | x, z] = (a_∥u_∥ + b_∥|x|)² + q||a_⊥||²||α||² + τ²(u_∥² + q(d−1)||α||²) + σ²||α||²,

with u_∥ = Σ_i α_i z_i − |x|, a = θ0 − β, b = γ − β (the "radial" path: D normals per prompt instead of D·d).
Inputs are drawn in float32 and cast to float64; all arithmetic after that is float64 (local ``jax.enable_x64``).

Batching. Every D in a list is evaluated on the same prompts (the first D of D_max sampled context points:
common random numbers, so ``MCResult.contrast`` gives tight differences; the D values are static, one
compilation per list), and every parameter set of a leading batch axis too. Prompts run in jit'd, vmapped
chunks in a Python loop; results are float64 means with standard errors.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.theory.common import DataModel, fail, float64


class MCResult(NamedTuple):
  """Monte Carlo estimate: ``mean`` and standard error ``se`` of the loss, shape ``batch + (len(D),)`` (the D axis
  is dropped when D was an int); ``D`` the context sizes; ``n_prompts`` prompts per estimate; ``cov`` the
  covariance of the estimates across the D values, ``batch + (len(D), len(D))`` (they share prompts), or None."""

  mean: np.ndarray
  se: np.ndarray
  D: np.ndarray
  n_prompts: int
  cov: np.ndarray | None = None

  def scaled(self) -> "MCResult":
    """D·L (mean and se multiplied by D)."""
    cov = None if self.cov is None else self.cov * np.multiply.outer(self.D, self.D)
    return MCResult(self.mean * self.D, self.se * self.D, self.D, self.n_prompts, cov)

  def contrast(self, weights) -> tuple[np.ndarray, np.ndarray]:
    """Σ_j a_j·mean_j over the D axis and its standard error (uses ``cov``; e.g. a = (1, −1) for L(D_1) − L(D_2))."""
    a = np.asarray(weights, dtype=np.float64)
    value = self.mean @ a
    var = np.einsum("...ij,i,j->...", self.cov, a, a)
    return value, np.sqrt(np.maximum(var, 0.0))


_CHUNK_ELEMENTS = 1 << 23  # ~ floats per jit'd chunk (bounds memory; 64 MiB in float64)


def _prompt_losses(key, params, d_values, consts, *, d: int, d_max: int, matrix: bool, local: bool,
                   conditional: bool):
  """Losses of one prompt for every parameter set [P] and every D in the static tuple ``d_values`` -> [P, nD]."""
  k_x, k_theta, k_eps = jax.random.split(key, 3)
  g = _normal(k_x, (d_max + 1, d)) @ consts["cov_sqrt"]
  x, xs = g[0], g[1:]
  if local:
    xs = x + consts["radius"] * xs
  tau = jnp.sqrt(consts["tau2"])
  if not conditional:
    theta = consts["theta0"] + tau * _normal(k_theta, (d,))
    ys = xs @ theta + jnp.sqrt(consts["noise"]) * _normal(k_eps, (d_max,))

  def per_param(p):
    if matrix:
      logits = xs @ (p["kernels"] @ x).T  # [D_max, h]
    else:
      logits = (xs @ x)[:, None] * p["kernels"][None, :]
    logits = logits / consts["temperature"]

    def per_d(n):
      alpha = jax.nn.softmax(logits[:n], axis=0) @ p["c"]  # [n]: the first n context points
      if conditional:
        u = alpha @ xs[:n] - x
        mean_err = (consts["theta0"] - p["shift"]) @ u + (p["offset"] - p["shift"]) @ x
        return mean_err**2 + consts["tau2"] * (u @ u) + consts["noise"] * (alpha @ alpha)
      y_hat = p["offset"] @ x + alpha @ (ys[:n] - xs[:n] @ p["shift"])
      return (y_hat - theta @ x) ** 2

    return jnp.stack([per_d(n) for n in d_values])

  return jax.vmap(per_param)(params)


def _prompt_losses_radial(key, params, d_values, consts, *, d: int, d_max: int, local: bool, **_):
  """Conditional losses of one prompt with the orthogonal input components integrated out (Σ = I, A_k = w_k I)."""
  k_q, k_z = jax.random.split(key)
  g = _normal(k_q, (d,))
  rho = jnp.sqrt(g @ g)
  direction = g / rho
  z = _normal(k_z, (d_max,))
  q = consts["radius"] ** 2 if local else 1.0
  if local:
    z = rho + consts["radius"] * z  # components of x_i = x + r·g_i along x̂

  def per_param(p):
    logits = (rho * z)[:, None] * p["kernels"][None, :] / consts["temperature"]
    a = consts["theta0"] - p["shift"]
    a_par, b_par = a @ direction, (p["offset"] - p["shift"]) @ direction
    a_perp2 = a @ a - a_par**2

    def per_d(n):
      alpha = jax.nn.softmax(logits[:n], axis=0) @ p["c"]
      u_par = alpha @ z[:n] - rho
      alpha2 = alpha @ alpha
      return ((a_par * u_par + b_par * rho) ** 2 + q * a_perp2 * alpha2
              + consts["tau2"] * (u_par**2 + q * (d - 1) * alpha2) + consts["noise"] * alpha2)

    return jnp.stack([per_d(n) for n in d_values])

  return jax.vmap(per_param)(params)


def _normal(key, shape):
  """Standard normals drawn in float32 (4x cheaper than float64 on CPU), returned as float64."""
  return jax.random.normal(key, shape, dtype=jnp.float32).astype(jnp.float64)


@functools.partial(jax.jit, static_argnames=("d_values", "batch", "d", "d_max", "matrix", "local", "conditional",
                                             "radial"))
def _chunk_sums(key, params, d_values: tuple[int, ...], consts, *, batch: int, d: int, d_max: int, matrix: bool,
                local: bool, conditional: bool, radial: bool):
  """Sum and sum of products of the per-prompt losses over ``batch`` prompts -> ([P, nD], [P, nD, nD])."""
  fn = functools.partial(_prompt_losses_radial if radial else _prompt_losses, d=d, d_max=d_max, matrix=matrix,
                         local=local, conditional=conditional)
  losses = jax.vmap(lambda k: fn(k, params, d_values, consts))(jax.random.split(key, batch))
  return losses.sum(0), jnp.einsum("bpi,bpj->pij", losses, losses)


def _as_params(model: DataModel, c, kernels, offset, value_shift) -> tuple[dict, tuple[int, ...], bool]:
  """Flattens the parameter batch to [P, ...] arrays; returns (params, batch_shape, matrix_kernels)."""
  d = model.d
  c = np.asarray(c, dtype=np.float64)
  if c.ndim == 0:
    c = c[None]
  kernels = np.asarray(kernels, dtype=np.float64)
  if kernels.ndim == 0:
    kernels = kernels[None]
  if kernels.shape == c.shape:
    matrix = False
  elif kernels.shape == c.shape + (d, d):
    matrix = True
  else:
    fail("kernels", kernels.shape, f"must have the shape of c {c.shape} (A_k = w_k I) or {c.shape + (d, d)}")
  batch = c.shape[:-1]
  p = int(np.prod(batch, dtype=np.int64))
  vectors = {}
  for name, v in (("offset", offset), ("shift", value_shift)):
    v = np.zeros(d) if v is None else np.asarray(v, dtype=np.float64)
    if v.shape[-1:] != (d,):
      fail(name if name == "offset" else "value_shift", v.shape, f"must end with d={d}")
    vectors[name] = np.broadcast_to(v, batch + (d,)).reshape(p, d)
  params = {"c": c.reshape(p, -1), "kernels": kernels.reshape((p,) + kernels.shape[len(batch):]), **vectors}
  return params, batch, matrix


def mc_loss(model: DataModel, c, kernels, D: int | Sequence[int], *, n_prompts: int = 20000, seed: int = 0,
            offset=None, value_shift=None, temperature: float = 1.0, conditional: bool = True,
            chunk: int | None = None, radial: bool | None = None) -> MCResult:
  """Monte Carlo estimate of L(D) = E[(ŷ − θᵀx)²] of the kernel predictor (see the module docstring).

  Args:
    model: the data model.
    c: output weights [..., h] (leading axes: a batch of parameter sets, evaluated on the same prompts).
    kernels: w_k [..., h] (A_k = w_k I) or matrices A_k [..., h, d, d].
    D: a context size or a list of them.
    n_prompts: prompts per estimate (rounded up to whole chunks; the count used is returned).
    seed: PRNG seed.
    offset, value_shift: γ and β [d] or [..., d] (default 0).
    temperature: T in softmax(x_iᵀA_k x / T).
    conditional: integrate θ and ε out exactly (default) or sample them.
    chunk: prompts per jit'd chunk (default: from a memory budget).
    radial: use the radial path (default: whenever it applies: conditional, Σ = I, scalar kernels).

  Returns:
    ``MCResult`` with float64 mean and standard error over prompts.
  """
  d_list = np.atleast_1d(np.asarray(D))
  if d_list.ndim != 1 or d_list.size == 0 or np.any(d_list < 1) or not np.all(d_list == np.round(d_list)):
    fail("D", D, "must be an integer >= 1 or a list of them")
  d_list = d_list.astype(np.int64)
  if not isinstance(n_prompts, (int, np.integer)) or n_prompts < 2:
    fail("n_prompts", n_prompts, "must be an integer >= 2")
  if not temperature > 0:
    fail("temperature", temperature, "must be > 0")
  params, batch, matrix = _as_params(model, c, kernels, offset, value_shift)
  radial_ok = conditional and not matrix and model.cov is None
  if radial is None:
    radial = radial_ok
  elif radial and not radial_ok:
    fail("radial", radial, "needs conditional=True, cov=None (Σ = I) and scalar kernels")
  d, d_max, n_par, h = model.d, int(d_list.max()), params["c"].shape[0], params["c"].shape[1]
  if chunk is None:
    per_prompt = d_max * (1 if radial else d) + 2 * n_par * h * int(d_list.sum()) + 4 * d_max
    chunk = int(max(8, min(n_prompts, _CHUNK_ELEMENTS // per_prompt)))
  n_chunks = math.ceil(n_prompts / chunk)
  consts = {"cov_sqrt": model.cov_sqrt(), "theta0": model.theta0(), "tau2": model.tau2_value,
            "noise": float(model.noise_var), "radius": float(model.local_radius or 0.0),
            "temperature": float(temperature)}
  static = dict(batch=chunk, d=d, d_max=d_max, matrix=matrix, local=model.local_radius is not None,
                conditional=conditional, radial=bool(radial))
  total = np.zeros((n_par, len(d_list)))
  total_sq = np.zeros((n_par, len(d_list), len(d_list)))
  with float64():
    base = jax.random.PRNGKey(seed)
    args = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, consts))
    d_values = tuple(int(n) for n in d_list)
    for i in range(n_chunks):
      s, s2 = _chunk_sums(jax.random.fold_in(base, i), args[0], d_values, args[1], **static)
      total += np.asarray(s)
      total_sq += np.asarray(s2)
  n = n_chunks * chunk
  mean = total / n
  cov = (total_sq / n - np.einsum("pi,pj->pij", mean, mean)) * n / (n - 1) / n  # covariance of the means
  se = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
  if np.ndim(D):
    return MCResult(mean.reshape(batch + mean.shape[1:]), se.reshape(batch + se.shape[1:]), d_list, n,
                    cov.reshape(batch + cov.shape[1:]))
  return MCResult(mean.reshape(batch), se.reshape(batch), d_list[0], n)


def mc_d_times_loss(model: DataModel, c, kernels, D: int | Sequence[int], **kwargs: Any) -> MCResult:
  """D·L(D) by Monte Carlo: ``mc_loss(...).scaled()`` (same arguments)."""
  return mc_loss(model, c, kernels, D, **kwargs).scaled()
