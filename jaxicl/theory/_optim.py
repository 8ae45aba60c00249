"""Multi-start L-BFGS minimisation in JAX (float64), jit'd once per objective and vmapped over starts."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxicl.theory.common import float64


@functools.lru_cache(maxsize=32)
def _runner(fn: Callable[[jax.Array, Any], jax.Array], steps: int) -> Callable:
  """jit(vmap(L-BFGS run)) for a module-level objective ``fn(u, aux)``; cached so repeated calls do not retrace."""
  opt = optax.lbfgs()

  def run(u0, aux):
    f = lambda u: fn(u, aux)
    value_and_grad = optax.value_and_grad_from_state(f)

    def step(carry, _):
      u, state = carry
      value, grad = value_and_grad(u, state=state)
      updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=f)
      return (optax.apply_updates(u, updates), state), None

    (u, _), _ = jax.lax.scan(step, (u0, opt.init(u0)), None, length=steps)
    return u, f(u)

  return jax.jit(jax.vmap(run))


def minimise(fn: Callable[[jax.Array, Any], jax.Array], starts: np.ndarray, aux: Any,
             steps: int = 150) -> tuple[np.ndarray, np.ndarray]:
  """Minimises ``fn(u, aux_k)`` from each row u0 = ``starts[k]`` ([K, n]); ``aux`` is a pytree of arrays with a
  leading K axis held fixed during the run (pass every constant through it, so ``fn`` compiles once).

  Returns the final points [K, n] and values [K] (non-finite values as +inf).
  """
  with float64():
    aux = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), aux)
    us, values = _runner(fn, steps)(jnp.asarray(starts, jnp.float64), aux)
    us, values = np.asarray(us), np.asarray(values)
  return us, np.where(np.isfinite(values), values, np.inf)
