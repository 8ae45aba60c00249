"""Analysis module at large d: optimal_heads monotone in h and finite, overflow as inf, bounded time, --json output."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from jaxicl import theory as T
from jaxicl.theory import cli as theory_cli


@pytest.mark.parametrize("d", [5, 500])
def test_optimal_heads_is_monotone_in_h_and_bounded_by_the_closed_forms(d):
  sigma2 = 0.5
  values = [T.optimal_heads(h, d, sigma2).constant for h in (1, 2, 3, 4)]
  assert values[0] == pytest.approx(T.c_single(d, sigma2).constant, rel=1e-8)
  assert all(b <= a for a, b in zip(values, values[1:])), values  # more heads can always zero the extra ones
  assert all(T.c_multi(d, sigma2) <= v for v in values), values  # C_multi is a lower bound for every (c, w)


def test_optimal_heads_at_d_1000_is_finite_and_consistent():
  d, sigma2 = 1000, 0.5
  for h in (2, 4):
    opt = T.optimal_heads(h, d, sigma2)
    assert np.all(np.isfinite(T.head_gram(opt.w, d, sigma2)))
    assert T.c_multi(d, sigma2) <= opt.constant < T.c_single(d, sigma2).constant
    assert opt.constant == pytest.approx(T.head_constant(opt.c, opt.w, d, sigma2), rel=1e-9)
    assert opt.w_max < 0.7 and np.all(np.abs(opt.w) <= opt.w_max + 1e-12)


def test_overflow_is_inf_everywhere_not_an_exception():
  d, sigma2 = 1000, 0.5
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no RuntimeWarning either
    assert T.single_head_constant(0.4, d, sigma2) == math.inf
    assert T.g(0.4, d, sigma2) == math.inf
    assert T.pair_constant(0.45, d, sigma2) == math.inf
    assert np.isinf(T.head_gram([0.65, 0.1], d, sigma2)[0, 0])
  assert T.single_head_constant(0.1, 5, sigma2) == pytest.approx(float(T.g(0.1, 5, sigma2)) / 0.1, rel=1e-15)


def test_time_limit_is_a_clear_error():
  with pytest.raises(TimeoutError, match="time_limit=0 s reached after 1 heads"):
    T.optimal_heads(3, 5, 0.25, time_limit=0.0)


def test_theory_json_is_valid_json_on_stdout_at_large_d(capfd):
  assert theory_cli.main(["--d", "1000", "--noise-var", "0.5", "--json"]) == 0
  out, _ = capfd.readouterr()
  doc = json.loads(out)
  assert doc["d"] == 1000 and math.isfinite(doc["heads"]["constant"])
  assert doc["C_multi"] <= doc["heads"]["constant"] <= doc["C_single"]
