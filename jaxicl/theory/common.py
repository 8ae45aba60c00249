"""Shared pieces of the analysis module: input validation, the data model, results and float64 scope.

The data model (every convention is a field, so a user holding a paper can switch to its conventions):

  * query and context inputs x, x_i ~ N(0, Σ) i.i.d. (Σ = I_d unless ``cov`` is given); with a locality
    radius r the context is drawn around the query, x_i = x + r·Σ^{1/2} g_i, g_i ~ N(0, I_d) (the
    ``jaxicl.tasks`` convention; for Σ = I this is x_i ~ N(x, r² I_d));
  * task θ ~ N(θ0, τ² I_d), τ² = 1/d by default so that E||θ − θ0||² = 1 (and E(θᵀx)² = 1 for Σ = I, θ0 = 0);
  * labels y_i = θᵀx_i + ε_i, ε_i ~ N(0, σ²);
  * loss L = E[(ŷ − θᵀx)²] against the noise-free query label; D context examples.

Nothing here imports training code; ``jaxicl.tasks`` is used only to read a ``TaskConfig``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

import jax
import numpy as np


def fail(field: str, value: Any, why: str) -> None:
  """Raises ``ValueError("field=value: why")``."""
  raise ValueError(f"{field}={value!r}: {why}")


def check_d(d: Any, field: str = "d") -> int:
  """d must be an integer >= 1."""
  if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
    fail(field, d, "must be an integer >= 1")
  return int(d)


def check_nonneg(value: Any, field: str) -> float:
  """A finite float >= 0."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    fail(field, value, "must be a number >= 0")
  if not (math.isfinite(v) and v >= 0.0):
    fail(field, value, "must be a finite number >= 0")
  return v


def resolve_tau2(d: int, tau2: float | None) -> float:
  """τ² with the default 1/d (E||θ − θ0||² = 1)."""
  return 1.0 / d if tau2 is None else check_nonneg(tau2, "tau2")


@contextlib.contextmanager
def float64() -> Iterator[None]:
  """Local float64 scope for JAX (``jax.enable_x64``); the global flag is left untouched."""
  with jax.enable_x64(True):
    yield


@dataclasses.dataclass(frozen=True)
class TheoryResult:
  """A D·L limit constant (or loss) with how it was obtained.

  Attributes:
    value: the number (a D·L limit constant unless ``params`` says otherwise).
    method: ``"closed form"``, ``"polynomial root"``, ``"numerical: ..."`` or ``"monte carlo: ..."``.
    params: the optimiser of the predictor family (e.g. ``s``, ``w``, ``c``) and anything else needed to
      reproduce the value.
    family: the predictor family the value is the optimum (or infimum) of.
  """

  value: float
  method: str
  params: dict = dataclasses.field(default_factory=dict)
  family: str = ""

  def to_dict(self) -> dict:
    return {"value": self.value, "method": self.method, "family": self.family, "params": _plain(self.params)}


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
  """Single- and multi-head D·L limits of one scenario, plus scenario-specific extras (TheoryResults)."""

  scenario: str
  single: TheoryResult
  multi: TheoryResult
  extras: dict = dataclasses.field(default_factory=dict)

  @property
  def ratio(self) -> float:
    """C_single / C_multi (inf when C_multi = 0)."""
    return self.single.value / self.multi.value if self.multi.value > 0 else math.inf

  def to_dict(self) -> dict:
    out = {"scenario": self.scenario, "single": self.single.to_dict(), "multi": self.multi.to_dict(),
           "ratio": self.ratio}
    out["extras"] = {k: (v.to_dict() if isinstance(v, TheoryResult) else _plain(v)) for k, v in self.extras.items()}
    return out


def _plain(obj: Any) -> Any:
  """numpy/jax scalars and arrays -> JSON-friendly Python objects."""
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


def _as_tuple_matrix(m: Any, d: int, field: str) -> tuple[tuple[float, ...], ...]:
  a = np.asarray(m, dtype=np.float64)
  if a.shape != (d, d):
    fail(field, a.shape, f"must be a {d}x{d} matrix")
  if not np.allclose(a, a.T, atol=1e-10) or np.linalg.eigvalsh(a).min() <= 0:
    fail(field, m, "must be symmetric positive definite")
  return tuple(tuple(float(v) for v in row) for row in a)


@dataclasses.dataclass(frozen=True)
class DataModel:
  """Prompt distribution of the analysis (see the module docstring). Hashable.

  Attributes:
    d: input dimension.
    noise_var: label noise σ².
    tau2: τ², variance of each entry of θ − θ0; ``None`` means 1/d.
    cov: input covariance Σ as nested tuples (any array-like is accepted and converted); ``None`` = I_d.
    prior_mean: θ0 as a tuple of d floats; ``None`` = 0.
    local_radius: r of local examples x_i = x + r·Σ^{1/2} g_i; ``None`` = i.i.d. context.
  """

  d: int
  noise_var: float = 0.0
  tau2: float | None = None
  cov: Any = None
  prior_mean: Any = None
  local_radius: float | None = None

  def __post_init__(self):
    d = check_d(self.d)
    check_nonneg(self.noise_var, "noise_var")
    if self.tau2 is not None:
      check_nonneg(self.tau2, "tau2")
    if self.cov is not None:
      object.__setattr__(self, "cov", _as_tuple_matrix(self.cov, d, "cov"))
    if self.prior_mean is not None:
      pm = np.asarray(self.prior_mean, dtype=np.float64).reshape(-1)
      if pm.shape != (d,):
        fail("prior_mean", self.prior_mean, f"must have d={d} entries")
      object.__setattr__(self, "prior_mean", tuple(float(v) for v in pm))
    if self.local_radius is not None:
      check_nonneg(self.local_radius, "local_radius")

  @classmethod
  def from_task_config(cls, cfg: Any) -> "DataModel":
    """The data model of a ``jaxicl.tasks.TaskConfig`` (``linear`` family, no task pool)."""
    from jaxicl import tasks  # the config dataclass only; nothing from training code

    if cfg.family != "linear":
      fail("family", cfg.family, "the theory covers the Gaussian 'linear' family only")
    if cfg.pool_size is not None:
      fail("pool_size", cfg.pool_size, "the theory assumes a fresh task per prompt")
    cov = None if cfg.cov == "identity" else tasks.covariance(cfg)
    theta0 = tasks.prior_mean(cfg)
    return cls(d=cfg.d, noise_var=cfg.noise_var, tau2=cfg.tau2, cov=cov,
               prior_mean=None if not np.any(theta0) else theta0, local_radius=cfg.local_radius)

  @property
  def tau2_value(self) -> float:
    """τ² (resolving the 1/d default)."""
    return resolve_tau2(self.d, self.tau2)

  def cov_matrix(self) -> np.ndarray:
    """Σ, d×d float64."""
    return np.eye(self.d) if self.cov is None else np.asarray(self.cov, dtype=np.float64)

  def cov_sqrt(self) -> np.ndarray:
    """Symmetric Σ^{1/2}."""
    evals, evecs = np.linalg.eigh(self.cov_matrix())
    return (evecs * np.sqrt(evals)) @ evecs.T

  def theta0(self) -> np.ndarray:
    """θ0, (d,) float64."""
    return np.zeros(self.d) if self.prior_mean is None else np.asarray(self.prior_mean, dtype=np.float64)

  def theta_second_moment(self) -> np.ndarray:
    """P = E[θθᵀ] = θ0θ0ᵀ + τ² I."""
    t0 = self.theta0()
    return np.outer(t0, t0) + self.tau2_value * np.eye(self.d)

  def signal(self) -> float:
    """S = E(θᵀx)² = θ0ᵀΣθ0 + τ² tr Σ: the only way θ's scale enters the isotropic constants."""
    return float(np.trace(self.theta_second_moment() @ self.cov_matrix()))
