"""Multi-start minimisation of small smooth objectives in JAX (float64), jit'd once per objective.

The method is a damped Newton iteration: the step −|H|⁻¹∇f uses the Hessian with its eigenvalues replaced
by their absolute values (so saddles are escaped), followed by an exact search over the step lengths
2^-j (j = 0..11) and 0, so that f never increases. It is vmapped over the starts.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.theory.common import float64

_STEP_LENGTHS = tuple([2.0**-j for j in range(12)] + [0.0])


@functools.lru_cache(maxsize=32)
def _runner(fn: Callable[[jax.Array, Any], jax.Array], steps: int) -> Callable:
  """jit(vmap(Newton run)) for a module-level objective ``fn(u, aux)``; cached so later calls do not retrace."""

  def run(u0, aux):
    f = lambda u: fn(u, aux)
    grad, hess = jax.grad(f), jax.hessian(f)
    lengths = jnp.asarray(_STEP_LENGTHS)

    def step(u, _):
      gr = grad(u)
      evals, evecs = jnp.linalg.eigh(hess(u))
      scale = jnp.maximum(jnp.abs(evals), 1e-10 * (1.0 + jnp.max(jnp.abs(evals))))
      direction = -evecs @ ((evecs.T @ gr) / scale)
      direction = jnp.where(jnp.all(jnp.isfinite(direction)), direction, 0.0)
      values = jax.vmap(lambda a: f(u + a * direction))(lengths)
      values = jnp.where(jnp.isfinite(values), values, jnp.inf)
      return u + lengths[jnp.argmin(values)] * direction, None

    u, _ = jax.lax.scan(step, u0, None, length=steps)
    return u, f(u)

  return jax.jit(jax.vmap(run))


def minimise(fn: Callable[[jax.Array, Any], jax.Array], starts: np.ndarray, aux: Any,
             steps: int = 60) -> tuple[np.ndarray, np.ndarray]:
  """Minimises ``fn(u, aux_k)`` from each row u0 = ``starts[k]`` ([K, n]); ``aux`` is a pytree of arrays with a
  leading K axis held fixed during the run (pass every constant through it, so ``fn`` compiles once per shape).

  Returns the final points [K, n] and values [K] (non-finite values as +inf).
  """
  with float64():
    aux = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), aux)
    us, values = _runner(fn, steps)(jnp.asarray(starts, jnp.float64), aux)
    us, values = np.asarray(us), np.asarray(values)
  return us, np.where(np.isfinite(values), values, np.inf)
