"""``jaxicl theory``: print the D·L constants of theory.md for one configuration.

    jaxicl theory --d 5 --noise-var 0.25 [--heads 2] [--p 64] [--tau2 0.2] [--D 1000] [--temperature 1] [--json]

Prints C_single (with s* and w*), C_multi, their ratio, the numerically optimal (c, w) of ``--heads`` full-rank
heads, and, when ``--p`` is given with p/h < d, the rank-limited analysis at context size ``--D``.
Invalid input exits with status 2 and a one-line message naming the field (stderr). With ``--json`` stdout
holds exactly one JSON document, also on errors (``{"error": ...}``); diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Iterator

import numpy as np

from jaxicl.theory import constants as K
from jaxicl.theory.common import check_d, check_nonneg, fail, resolve_tau2
from jaxicl.theory.scenarios import rank_limited_loss

CONVENTIONS = ("x, x_i ~ N(0, I_d); theta ~ N(0, tau2 I_d) (default tau2 = 1/d, E||theta||^2 = 1); "
               "y_i = theta'x_i + eps_i, eps_i ~ N(0, noise_var); L = E(y_hat - theta'x)^2 (noise-free target); "
               "y_hat = sum_k c_k sum_i y_i softmax_i(w_k x_i'x / T); constants are lim D*L; "
               "w is reported in model units (T * effective w).")


DEFAULT_D = 1000
MAX_HEADS = 16  # the numerical optimum's cost grows fast with h: 16 heads take ~15 s on a 2-core CPU


class _UsageError(ValueError):
  pass


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="jaxicl theory", description="O(1/D) constants of softmax attention ICL.")
  p.add_argument("--d", type=int, required=True, help="input dimension d >= 1")
  p.add_argument("--noise-var", type=float, default=0.0, help="label noise variance sigma^2 >= 0")
  p.add_argument("--heads", type=int, default=2, help="number of heads h for the numerical optimum")
  p.add_argument("--p", type=int, default=None, help="embedding dimension (rank of each head = p/h)")
  p.add_argument("--tau2", type=float, default=None, help="variance of each entry of theta (default 1/d)")
  p.add_argument("--D", type=int, default=None, help="context size for the rank-limited analysis (needs --p with "
                 f"p/h < d; default {DEFAULT_D})")
  p.add_argument("--temperature", type=float, default=1.0, help="T in softmax(x_i'A x / T) (rescales w)")
  p.add_argument("--w-min", type=float, default=None,
                 help="lower bound on |w_k| in model units (default 0.1*T/sqrt(d))")
  p.add_argument("--json", action="store_true", help="print JSON")
  return p


def compute(d: int, noise_var: float, heads: int = 2, p: int | None = None, tau2: float | None = None,
            D: int | None = None, temperature: float = 1.0, w_min: float | None = None) -> dict:
  """All the numbers the CLI prints, as a JSON-friendly dict (raises ValueError on invalid input, also for ``D``
  given where no rank-limited analysis uses it)."""
  d = check_d(d)
  sigma2 = check_nonneg(noise_var, "noise_var")
  t2 = resolve_tau2(d, tau2)
  if t2 <= 0:
    fail("tau2", tau2, "must be > 0 (with tau2 = 0 every theta is 0 and the constants are undefined)")
  h = check_d(heads, "heads")
  if h > MAX_HEADS:
    fail("heads", heads, f"at most {MAX_HEADS} here (the numerical optimum's cost grows fast with h)")
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
      math.isfinite(temperature) and temperature > 0):
    fail("temperature", temperature, "must be a finite number > 0")
  if w_min is not None and not (math.isfinite(w_min) and w_min > 0):
    fail("w_min", w_min, "must be a finite number > 0")
  if p is not None:
    check_d(p, "p")
    if p % h:
      fail("p", p, f"must be divisible by heads h={h}")
  if D is not None:
    check_d(D, "D")
    if p is None or p // h >= d:
      fail("D", D, "applies only to the rank-limited analysis (--p with p/h < d)")
  D = DEFAULT_D if D is None else D
  single = K.c_single(d, sigma2, t2)
  multi = K.c_multi(d, sigma2, t2)
  opt = K.optimal_heads(h, d, sigma2, t2, w_min=None if w_min is None else w_min / temperature)
  out = {
      "conventions": CONVENTIONS,
      "d": d, "noise_var": sigma2, "tau2": t2, "signal": d * t2, "temperature": temperature,
      "C_single": single.constant, "s_star": single.s, "w_star": temperature * single.w,
      "C_multi": multi, "ratio": single.constant / multi if multi > 0 else None,
      "heads": {"h": h, "constant": opt.constant, "c": opt.c.tolist(),
                "w": (temperature * opt.w).tolist(), "w_min": temperature * opt.w_min,
                "w_max": temperature * opt.w_max, "method": "numerical (JAX multi-start Newton), c exact given w"},
      "pair_constant_at_w_min": K.pair_constant(opt.w_min**2, d, sigma2, t2),
      "rank_limited": None,
  }
  if p is not None and p // h < d:
    r = rank_limited_loss(d, p, h, sigma2, D, t2, w_min=opt.w_min)
    out["rank_limited"] = {"p": p, "h": h, "r": r.r, "D": D, "blocks": [list(b) for b in r.blocks],
                           "bias_floor": r.bias_floor, "d_times_loss": r.d_times_loss,
                           "full_rank_d_times_loss": D * r.full_rank_loss, "single_d_times_loss": D * r.single_loss,
                           "c": r.c.tolist(), "w": (temperature * r.w).tolist(), "method": r.method}
  return out


def _table(out: dict) -> str:
  h = out["heads"]
  fmt = lambda v: np.array2string(np.asarray(v), precision=4, separator=", ")
  lines = [
      f"jaxicl theory: d={out['d']} noise_var={out['noise_var']:g} tau2={out['tau2']:g} "
      f"(signal S = d*tau2 = {out['signal']:g}) temperature={out['temperature']:g}",
      f"  C_single   {out['C_single']:10.4f}   s* = {out['s_star']:.4f}, w* = {out['w_star']:.4f}",
      f"  C_multi    {out['C_multi']:10.4f}   infimum over h >= 2 full-rank heads (w -> 0)",
      f"  ratio      {out['ratio']:10.4f}" if out["ratio"] is not None else "  ratio             n/a",
      f"  h={h['h']} heads {h['constant']:10.4f}   w = {fmt(h['w'])}, c = {fmt(h['c'])}  (|w| >= {h['w_min']:.4f})",
      f"  pair C_2(w_min^2) = {out['pair_constant_at_w_min']:.6f}",
  ]
  r = out["rank_limited"]
  if r is not None:
    lines += [
        f"  rank-limited: p={r['p']}, h={r['h']}, r=p/h={r['r']} < d at D={r['D']}: blocks {r['blocks']}",
        f"    D*L = {r['d_times_loss']:.4f} (full-rank heads {r['full_rank_d_times_loss']:.4f}, one head "
        f"{r['single_d_times_loss']:.4f}); bias floor {r['bias_floor']:.4f}",
    ]
  lines.append("  conventions: " + out["conventions"])
  return "\n".join(lines)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
  """Sends everything written to file descriptor 1 (also by C libraries, e.g. LAPACK) to stderr meanwhile."""
  sys.stdout.flush()
  saved = os.dup(1)
  try:
    os.dup2(2, 1)
    yield
  finally:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


def _json_safe(value):
  """JSON has no inf/nan: they are written as null (strict JSON on stdout)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def main(argv: list[str] | None = None) -> int:
  """Entry point; returns the exit status (2 on invalid input, 1 if the computation fails)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  as_json = "--json" in argv
  try:
    try:
      args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help
      return int(exc.code or 0)
    with _stdout_to_stderr():
      out = compute(args.d, args.noise_var, args.heads, args.p, args.tau2, args.D, args.temperature, args.w_min)
  except (ValueError, TimeoutError, ArithmeticError, MemoryError, RuntimeError) as exc:
    message = " ".join(str(exc).split())
    print(f"jaxicl theory: error: {message}", file=sys.stderr)
    if as_json:
      print(json.dumps({"error": message}))
    return 2 if isinstance(exc, ValueError) else 1
  print(json.dumps(_json_safe(out), indent=2, allow_nan=False) if args.json else _table(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
