"""Distribution shifts at evaluation time: pure, vmappable transforms of sampled prompts.

Shape legend: B prompts, N points per prompt, d input dimension, k = ⌊d/2⌋ subspace dimension.

A shift maps an in-distribution ``tasks.Prompt`` (any family, covariance, prior or pool) to a shifted one;
labels are always recomputed from the transformed inputs and θ: ``targets = X w``, ``ys = targets + ε`` with
the prompt's own label noise ε = ys − targets (plus test-time noise for ``noisy``). Nothing is resampled
except what the shift itself draws, so a shifted prompt set is paired with the in-distribution one.

Global shifts act on every point of a prompt (g_i ~ N(0, I) is fresh per point, c, a, v parameters):

  ``scaled=c``     x_i ← c·x_i                                          (default c = 2)
  ``w_scaled=c``   w ← c·w, so ||w|| leaves the training range          (default c = 2)
  ``skewed=a``     x_i ← S x_i, S = U diag(√λ) Uᵀ, λ_j ∝ j^(−a) (j = 1..d) normalised to Σ_j λ_j = d, U a
                   Haar-random orthogonal matrix drawn once per evaluation; identity-covariance inputs become
                   N(0, Σ), Σ = U diag(λ) Uᵀ                            (default a = 1)
  ``noisy=v``      y_i ← y_i + √v g_i on the observed labels only; targets stay noise-free  (default v = 1)

Query shifts act relative to one prediction point t (the query; its context is the points j < t). The
theory layout has one query, t = N−1; in the prefix-wise (GPT-2) layout every point is a query, and the
evaluation builds one shifted set per prediction point t and reads only the prediction at t from it (a causal
model's prediction at t does not see points after t). Points other than those named are unchanged.

  ``orthogonal``   x_t ← ||x_t|| r/||r||, r = (I − Π)x_t, Π the orthogonal projector onto span{x_j : j < t}.
                   Defined for t < d (for n ≥ d context points the span is R^d almost surely).
  ``in_context``   x_t ← x_J, J ~ Uniform{0, …, t−1} per prompt: the query repeats a context point. t ≥ 1.
  ``half_subspace`` x_j ← √(d/k) Q Qᵀ x_j for every j ≠ t, Q [d, k] a Haar-random orthonormal basis per prompt:
                   the context lies in a random k-dimensional subspace (norm rescaled so E||x_j||² is kept),
                   the query does not. Needs d ≥ 2.
  ``mismatch=a``   x_t ← S x_t with S as in ``skewed`` (its own U): context from the training distribution,
                   query from N(0, Σ_test) — a train/test (context/query) covariance mismatch (default a = 1).

``parse("skewed,scaled=3")`` gives ``(ShiftSpec("skewed", 1.0), ShiftSpec("scaled", 3.0))``; ``"all"`` every
shift with its default. ``transform(spec, key, prompts, query_index)`` applies one to a batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import tasks


@dataclasses.dataclass(frozen=True)
class ShiftSpec:
  """A shift by name with its parameter (``None`` for shifts without one)."""

  name: str
  param: float | None = None

  def __str__(self) -> str:
    return self.name if self.param is None else f"{self.name}={self.param:g}"


# (once_key, prompt_key, one prompt, param, query index t) -> shifted prompt. once_key is the same for every
# prompt of an evaluation (for what is drawn once), prompt_key differs per prompt.
ShiftFn = Callable[[jax.Array, jax.Array, tasks.Prompt, jax.Array, jax.Array], tasks.Prompt]


class Shift(NamedTuple):
  fn: ShiftFn
  default: float | None  # None: the shift takes no parameter
  check: Callable[[float], bool]
  why: str  # what ``check`` demands, for the error message
  per_query: bool  # acts relative to a query point t
  defined: Callable[[int, int], bool]  # (t, d) -> whether the shift is defined at query index t
  needs: str  # the condition ``defined`` checks, in words
  formula: str  # the transform in one line (figure titles)


SHIFTS: dict[str, Shift] = {}


def _relabel(prompt: tasks.Prompt, xs: jax.Array, w: jax.Array) -> tasks.Prompt:
  """Labels recomputed from new inputs / θ, keeping the prompt's label noise ε = ys − targets."""
  targets = xs @ w
  return tasks.Prompt(xs=xs, ys=targets + (prompt.ys - prompt.targets), targets=targets, w=w)


def skew_spectrum(d: int, decay: float) -> np.ndarray:
  """λ_j ∝ j^(−decay), j = 1..d, normalised to Σ_j λ_j = d. -> [d]."""
  lam = np.arange(1, d + 1, dtype=np.float64) ** (-float(decay))
  return lam * d / lam.sum()


def random_orthogonal(key: jax.Array, d: int) -> jax.Array:
  """A Haar-random orthogonal matrix [d, d]: Q of the QR of a Gaussian matrix, columns sign-fixed by diag(R)."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (d, d)))
  return q * jnp.sign(jnp.diag(r))


def skewed_sqrt(key: jax.Array, d: int, decay: float | jax.Array) -> jax.Array:
  """S = U diag(√λ) Uᵀ, the symmetric square root of Σ = U diag(λ) Uᵀ, U = ``random_orthogonal(key, d)``. [d, d].

  λ as in ``skew_spectrum`` (traced ``decay`` allowed).
  """
  lam = jnp.arange(1, d + 1, dtype=jnp.float32) ** (-jnp.asarray(decay, jnp.float32))
  lam = lam * d / jnp.sum(lam)
  u = random_orthogonal(key, d)
  return (u * jnp.sqrt(lam)) @ u.T


def skewed_covariance(key: jax.Array, d: int, decay: float) -> np.ndarray:
  """Σ = S S of ``skewed_sqrt`` (float64 numpy): the covariance ``skewed`` / ``mismatch`` give N(0, I) inputs."""
  s = np.asarray(skewed_sqrt(key, d, decay), np.float64)
  return s @ s


def register_shift(name: str, default: float | None = None, check: Callable[[float], bool] = lambda v: True,
                   why: str = "", per_query: bool = False,
                   defined: Callable[[int, int], bool] = lambda t, d: True,
                   needs: str = "", formula: str = "") -> Callable[[ShiftFn], ShiftFn]:
  """Decorator registering ``fn(once_key, prompt_key, prompt, param, t) -> prompt`` as shift ``name``."""

  def wrap(fn: ShiftFn) -> ShiftFn:
    SHIFTS[name] = Shift(fn, default, check, why, per_query, defined, needs, formula)
    return fn

  return wrap


def _positive(v: float) -> bool:
  return math.isfinite(v) and v > 0


def _non_negative(v: float) -> bool:
  return math.isfinite(v) and v >= 0


@register_shift("scaled", 2.0, _positive, "must be a finite number > 0", formula="x ← c·x")
def _scaled(once_key, key, prompt, c, t):
  return _relabel(prompt, c * prompt.xs, prompt.w)


@register_shift("w_scaled", 2.0, _positive, "must be a finite number > 0", formula="w ← c·w")
def _w_scaled(once_key, key, prompt, c, t):
  return _relabel(prompt, prompt.xs, c * prompt.w)


@register_shift("skewed", 1.0, _non_negative, "must be a finite number >= 0",
                formula="x ~ N(0, U diag(λ) Uᵀ), λ_j ∝ j^-a")
def _skewed(once_key, key, prompt, decay, t):
  s = skewed_sqrt(once_key, prompt.xs.shape[-1], decay)
  return _relabel(prompt, prompt.xs @ s, prompt.w)  # S is symmetric: (S x_i)ᵀ = x_iᵀ S


@register_shift("noisy", 1.0, _non_negative, "must be a finite number >= 0", formula="y_i ← y_i + N(0, v)")
def _noisy(once_key, key, prompt, v, t):
  extra = jnp.sqrt(v) * jax.random.normal(key, prompt.ys.shape, prompt.ys.dtype)
  return prompt._replace(ys=prompt.ys + extra)


@register_shift("orthogonal", per_query=True, defined=lambda t, d: t < d, needs="n < d context examples",
                formula="x_q ⊥ span(context)")
def _orthogonal(once_key, key, prompt, param, t):
  xs = prompt.xs
  n_points = xs.shape[0]
  context = xs * (jnp.arange(n_points) < t).astype(xs.dtype)[:, None]
  _, s, vt = jnp.linalg.svd(context, full_matrices=False)
  keep = s > 10 * max(xs.shape) * jnp.finfo(xs.dtype).eps * s[0]  # no context (t = 0): s = 0, nothing kept
  x = xs[t]
  project_off = lambda v: v - vt.T @ (keep * (vt @ v))  # noqa: E731
  r = project_off(project_off(x))  # twice: a small residual keeps float32 orthogonality (as re-orthogonalised G-S)
  r_norm = jnp.linalg.norm(r)
  x_new = jnp.where(r_norm > 0, r * (jnp.linalg.norm(x) / jnp.where(r_norm > 0, r_norm, 1.0)), 0.0)
  return _relabel(prompt, xs.at[t].set(x_new), prompt.w)


@register_shift("in_context", per_query=True, defined=lambda t, d: t >= 1, needs="n >= 1 context examples",
                formula="x_q = a context point")
def _in_context(once_key, key, prompt, param, t):
  j = jax.random.randint(key, (), 0, jnp.maximum(t, 1))
  xs = prompt.xs.at[t].set(prompt.xs[j])
  return _relabel(prompt, xs, prompt.w)


@register_shift("half_subspace", per_query=True, defined=lambda t, d: d >= 2, needs="d >= 2",
                formula="context in a random d/2-dim subspace")
def _half_subspace(once_key, key, prompt, param, t):
  xs = prompt.xs
  n_points, d = xs.shape
  k = d // 2
  if k == 0:
    raise ValueError(f"shift 'half_subspace': needs d >= 2, got d={d}")
  q = random_orthogonal(key, d)[:, :k]
  projected = math.sqrt(d / k) * (xs @ q) @ q.T
  xs = jnp.where((jnp.arange(n_points) == t)[:, None], xs, projected)
  return _relabel(prompt, xs, prompt.w)


@register_shift("mismatch", 1.0, _non_negative, "must be a finite number >= 0", per_query=True,
                formula="x_q ~ N(0, Σ_test), context ~ train")
def _mismatch(once_key, key, prompt, decay, t):
  s = skewed_sqrt(once_key, prompt.xs.shape[-1], decay)
  return _relabel(prompt, prompt.xs.at[t].set(s @ prompt.xs[t]), prompt.w)


def get_shift(name: str) -> Shift:
  if name not in SHIFTS:
    raise ValueError(f"shift={name!r}: unknown shift; known: {sorted(SHIFTS)}")
  return SHIFTS[name]


def parse(text: str | Sequence[str]) -> tuple[ShiftSpec, ...]:
  """``"skewed,scaled=3"`` (or a list of such strings) -> shift specs, in order.

  ``all`` expands to every registered shift with its default parameter. Unknown names, parameters given to
  a shift without one, non-numbers, out-of-range values, empty items and a shift given twice (also through
  ``all``) raise ``ValueError`` naming the item. An empty list is no shift.
  """
  items = [text] if isinstance(text, str) else list(text)
  specs: list[ShiftSpec] = []
  for item in (",".join(items).split(",") if items else []):
    item = item.strip()
    if not item:
      raise ValueError(f"shift {','.join(items)!r}: an empty item; name shifts, e.g. skewed,scaled=3, or all")
    for spec in _parse_item(item):
      if spec in specs:
        raise ValueError(f"shift {item!r}: {spec} is given twice; name it once")
      specs.append(spec)
  return tuple(specs)


def _parse_item(item: str) -> list[ShiftSpec]:
  """One item of ``parse``: ``all``, ``name`` or ``name=value``."""
  if item == "all":
    return [ShiftSpec(name, shift.default) for name, shift in SHIFTS.items()]
  name, has_value, value = item.partition("=")
  name = name.strip()
  if name not in SHIFTS:
    raise ValueError(f"shift {item!r}: unknown shift {name!r}; known: {sorted(SHIFTS)} or all")
  shift = SHIFTS[name]
  if not has_value:
    return [ShiftSpec(name, shift.default)]
  if shift.default is None:
    raise ValueError(f"shift {item!r}: {name} takes no parameter")
  try:
    param = float(value)
  except ValueError:
    raise ValueError(f"shift {item!r}: parameter {value.strip()!r} is not a number") from None
  if not shift.check(param):
    raise ValueError(f"shift {item!r}: parameter {param:g} {shift.why}")
  return [ShiftSpec(name, param)]


def check_task(spec: ShiftSpec, d: int, query_indices: Sequence[int]) -> None:
  """Raises ``ValueError`` if ``spec`` is defined at none of the prediction points ``query_indices`` (inputs in R^d)."""
  shift = get_shift(spec.name)
  if not any(shift.defined(int(t), d) for t in query_indices):
    raise ValueError(f"shift {str(spec)!r}: undefined at every prediction point of this model (n in "
                     f"{[int(t) for t in query_indices]}, d={d}); it needs {shift.needs}")


def transform(spec: ShiftSpec, key: jax.Array, prompts: tasks.Prompt,
              query_index: int | jax.Array | None = None) -> tasks.Prompt:
  """Shift a batch of prompts [B, N, …] (pure; jit-safe, ``query_index`` may be traced).

  ``key`` gives what is drawn once (``fold_in(key, 0)``: U of skewed / mismatch) and per prompt (``fold_in(key,
  1)`` split B ways). ``query_index`` t is the query of a query shift; ``None`` means the last point, N−1.
  """
  shift = get_shift(spec.name)
  n_prompts, n_points = prompts.xs.shape[:2]
  t = jnp.asarray(n_points - 1 if query_index is None else query_index, jnp.int32)
  param = jnp.asarray(0.0 if spec.param is None else spec.param, jnp.float32)
  once_key = jax.random.fold_in(key, 0)
  keys = jax.random.split(jax.random.fold_in(key, 1), n_prompts)
  return jax.vmap(lambda k, p: shift.fn(once_key, k, p, param, t))(keys, prompts)
