"""Prompt layouts: token contents and prediction positions."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxicl import layouts


def _prompt(b=2, n=4, d=3):
  xs = jnp.arange(b * n * d, dtype=jnp.float32).reshape(b, n, d) + 1.0
  ys = -jnp.arange(b * n, dtype=jnp.float32).reshape(b, n) - 1.0
  return xs, ys


def test_theory_layout_stacks_x_and_y_and_hides_the_query_label():
  xs, ys = _prompt()
  t = np.asarray(layouts.theory_tokens(xs, ys))
  assert t.shape == (2, 4, 4)
  np.testing.assert_array_equal(t[:, :, :3], xs)
  np.testing.assert_array_equal(t[:, :-1, 3], ys[:, :-1])
  assert np.all(t[:, -1, 3] == 0)
  lay = layouts.get_layout("theory")
  assert list(lay.pred_positions(4)) == [3] and lay.width(3) == 4


@pytest.mark.parametrize("flag", [False, True])
def test_interleaved_layout_alternates_x_and_padded_y(flag):
  xs, ys = _prompt()
  t = np.asarray(layouts.interleaved_tokens(xs, ys, y_flag=flag))
  width = 4 if flag else 3
  assert t.shape == (2, 8, width)
  np.testing.assert_array_equal(t[:, 0::2, :3], xs)
  np.testing.assert_array_equal(t[:, 1::2, 0], ys)
  assert np.all(t[:, 1::2, 1:3] == 0)
  if flag:
    assert np.all(t[:, 0::2, 3] == 0) and np.all(t[:, 1::2, 3] == 1)
  lay = layouts.get_layout("interleaved_flag" if flag else "interleaved")
  np.testing.assert_array_equal(lay.pred_positions(4), [0, 2, 4, 6])
  assert lay.width(3) == width


def test_unknown_layout_is_named():
  with pytest.raises(ValueError, match="layout='zigzag'"):
    layouts.get_layout("zigzag")
