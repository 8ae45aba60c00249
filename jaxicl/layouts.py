"""Prompt layouts: turn a prompt into model tokens plus the positions whose outputs are predictions.

Shape legend: N points per prompt, d input dimension, T tokens.

* ``theory``: one token per point, z_i = [x_i; y_i] ∈ R^{d+1}, the query (last point) as [x_q; 0].
  T = N; one prediction, at position N-1, for y_{N-1}.
* ``interleaved`` (GPT-2 ICL layout): tokens x_1, y_1, x_2, y_2, … with y_i written into coordinate 0
  of a width-d token; T = 2N; the prediction for y_i is read at the x_i token (position 2i), so every
  point is a query given the points before it. ``y_flag=True`` appends an indicator channel (1 on
  y tokens), making the token width d+1.

Both work on one prompt or any leading batch axes.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Layout(NamedTuple):
  """A prompt layout: ``tokens(xs, ys) -> [..., T, width]`` and the prediction positions."""

  tokens: Callable[[jax.Array, jax.Array], jax.Array]
  pred_positions: Callable[[int], np.ndarray]  # n_points -> int array [P]
  target_index: Callable[[int], np.ndarray]  # n_points -> which points the predictions are for, [P]
  width: Callable[[int], int]  # d -> token width


def theory_tokens(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """[..., N, d], [..., N] -> [..., N, d+1] with the query's label zeroed."""
  ys = ys.at[..., -1].set(0.0)
  return jnp.concatenate([xs, ys[..., None]], axis=-1)


def interleaved_tokens(xs: jax.Array, ys: jax.Array, y_flag: bool = False) -> jax.Array:
  """[..., N, d], [..., N] -> [..., 2N, d (+1 with y_flag)]: x_1, y_1, x_2, y_2, …"""
  y_tokens = jnp.zeros_like(xs).at[..., 0].set(ys)
  if y_flag:
    zero = jnp.zeros(xs.shape[:-1] + (1,), xs.dtype)
    xs = jnp.concatenate([xs, zero], axis=-1)
    y_tokens = jnp.concatenate([y_tokens, zero + 1.0], axis=-1)
  tokens = jnp.stack([xs, y_tokens], axis=-2)  # [..., N, 2, width]
  return tokens.reshape(tokens.shape[:-3] + (2 * xs.shape[-2], xs.shape[-1]))


LAYOUTS: dict[str, Layout] = {
    "theory": Layout(
        tokens=theory_tokens,
        pred_positions=lambda n: np.array([n - 1]),
        target_index=lambda n: np.array([n - 1]),
        width=lambda d: d + 1,
    ),
    "interleaved": Layout(
        tokens=interleaved_tokens,
        pred_positions=lambda n: 2 * np.arange(n),
        target_index=lambda n: np.arange(n),
        width=lambda d: d,
    ),
    "interleaved_flag": Layout(
        tokens=lambda xs, ys: interleaved_tokens(xs, ys, y_flag=True),
        pred_positions=lambda n: 2 * np.arange(n),
        target_index=lambda n: np.arange(n),
        width=lambda d: d + 1,
    ),
}


def get_layout(name: str) -> Layout:
  """Looks a layout up by name; ``ValueError`` naming the unknown one."""
  if name not in LAYOUTS:
    raise ValueError(f"layout={name!r}: unknown layout; known: {sorted(LAYOUTS)}")
  return LAYOUTS[name]
