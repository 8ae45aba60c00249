"""Task samplers: random regression prompts as pure, jit- and vmap-safe functions of a PRNG key.

Shape legend: B batch of prompts, N points per prompt (the last point is the query of the theory
layout; in the GPT-2 layout every point is a query given the points before it), d input dimension,
M tasks in a finite pool.

A prompt is a ``Prompt(xs_Nxd, ys_N, targets_N, w_d)``:
  * ``xs``      inputs x_i;
  * ``ys``      observed labels y_i = wᵀx_i + ε_i, ε_i ~ N(0, σ²);
  * ``targets`` noise-free labels wᵀx_i (what the excess risk is measured against);
  * ``w``       the task parameter θ / w.

Every family shares the input model and label noise; a family only says how w is drawn. Input
covariance (identity / equicorrelated / Toeplitz / given), local examples, label noise, prior
mean and a finite task pool are fields of ``TaskConfig`` and compose with every family.
Users add a family with ``@register_family("name")`` on a function ``(key, cfg) -> w_d``.

Dims curriculum: a family that accepts a keyword ``n_active_dims`` (a traced int, the active input
coordinates 0..n_active-1) draws w inside them (``sparse`` draws its support there, so w stays s-sparse);
for any other family ``mask_dims`` zeroes the inactive coordinates of w afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np


class Prompt(NamedTuple):
  """One prompt (or a batch of them with a leading B axis)."""

  xs: jax.Array  # [N, d]
  ys: jax.Array  # [N]
  targets: jax.Array  # [N]
  w: jax.Array  # [d]


COVARIANCES = ("identity", "equicorrelated", "toeplitz", "given")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """What a prompt is. Hashable, so it can be a static argument of ``jax.jit``.

  Attributes:
    family: name of the task prior of w (``linear``, ``sparse`` or a registered one).
    d: input dimension.
    n_points: points per prompt (context examples + 1 query in the theory layout).
    noise_var: label noise variance σ².
    w_var: variance τ² of each entry of w; ``None`` means 1/d (so E||w - w0||² = 1).
    prior_mean: the prior mean θ0 as a tuple of d floats (prior-knowledge scenario).
    prior_mean_norm: if > 0 and ``prior_mean`` is None, θ0 is drawn once from ``task_seed``
      uniformly on the sphere of this radius.
    cov: input covariance: ``identity``, ``equicorrelated`` ((1-ρ)I + ρ11ᵀ), ``toeplitz``
      (ρ^|i-j|) or ``given`` (``cov_matrix``).
    rho: correlation ρ of the ``equicorrelated`` / ``toeplitz`` covariances.
    cov_matrix: a d×d PSD matrix as nested tuples, for ``cov="given"``.
    local_radius: if set, context inputs are local to the query: x_i = x_q + r·Σ^{1/2}g_i, g_i ~ N(0, I).
    sparsity: number s of non-zero entries of w for the ``sparse`` family.
    pool_size: if set, w is drawn uniformly from a fixed pool of this many tasks (drawn once
      from ``task_seed`` with the family's prior).
    task_seed: seed of everything drawn once per run (θ0, the task pool).

  A value that the chosen family, covariance or prior would not read (``sparsity`` on ``linear``, ``rho`` with
  an identity or given covariance, ``cov_matrix`` without ``cov='given'``, ``prior_mean_norm`` beside
  ``prior_mean``) is an error naming the field, as is any invalid value.
  """

  family: str = "linear"
  d: int = 5
  n_points: int = 21
  noise_var: float = 0.0
  w_var: float | None = None
  prior_mean: tuple[float, ...] | None = None
  prior_mean_norm: float = 0.0
  cov: str = "identity"
  rho: float = 0.0
  cov_matrix: tuple[tuple[float, ...], ...] | None = None
  local_radius: float | None = None
  sparsity: int | None = None
  pool_size: int | None = None
  task_seed: int = 0

  def __post_init__(self):
    validate(self)

  @property
  def tau2(self) -> float:
    """Prior variance τ² of each entry of w."""
    return 1.0 / self.d if self.w_var is None else float(self.w_var)


FamilyFn = Callable[[jax.Array, TaskConfig], jax.Array]
FAMILIES: dict[str, FamilyFn] = {}


def register_family(name: str) -> Callable[[FamilyFn], FamilyFn]:
  """Decorator registering ``fn(key, cfg) -> w_d`` as task family ``name``."""

  def wrap(fn: FamilyFn) -> FamilyFn:
    FAMILIES[name] = fn
    return fn

  return wrap


def _fail(field: str, value, why: str):
  raise ValueError(f"TaskConfig.{field}={value!r}: {why}")


def validate(cfg: TaskConfig) -> None:
  """Raises ``ValueError`` naming the first invalid field of ``cfg``."""
  if cfg.family not in FAMILIES:
    _fail("family", cfg.family, f"unknown task family; known: {sorted(FAMILIES)}")
  if not isinstance(cfg.d, (int, np.integer)) or cfg.d < 1:
    _fail("d", cfg.d, "must be an integer >= 1")
  if not isinstance(cfg.n_points, (int, np.integer)) or cfg.n_points < 1:
    _fail("n_points", cfg.n_points, "must be an integer >= 1")
  if not cfg.noise_var >= 0:
    _fail("noise_var", cfg.noise_var, "must be >= 0")
  if cfg.w_var is not None and not cfg.w_var >= 0:
    _fail("w_var", cfg.w_var, "must be >= 0")
  if cfg.prior_mean is not None and len(cfg.prior_mean) != cfg.d:
    _fail("prior_mean", cfg.prior_mean, f"must have d={cfg.d} entries")
  if not cfg.prior_mean_norm >= 0:
    _fail("prior_mean_norm", cfg.prior_mean_norm, "must be >= 0")
  if cfg.cov not in COVARIANCES:
    _fail("cov", cfg.cov, f"unknown covariance; known: {COVARIANCES}")
  if cfg.cov == "equicorrelated" and not -1.0 / max(cfg.d - 1, 1) <= cfg.rho <= 1.0:
    _fail("rho", cfg.rho, f"equicorrelated covariance is PSD only for -1/(d-1) <= rho <= 1 (d={cfg.d})")
  if cfg.cov == "toeplitz" and not -1.0 < cfg.rho < 1.0:
    _fail("rho", cfg.rho, "Toeplitz covariance rho^|i-j| needs -1 < rho < 1")
  if cfg.cov == "given":
    if cfg.cov_matrix is None:
      _fail("cov_matrix", None, 'required when cov="given"')
    m = np.asarray(cfg.cov_matrix, dtype=np.float64)
    if m.shape != (cfg.d, cfg.d):
      _fail("cov_matrix", m.shape, f"must be {cfg.d}x{cfg.d}")
    if not np.allclose(m, m.T, atol=1e-8) or np.linalg.eigvalsh(m).min() < -1e-8:
      _fail("cov_matrix", cfg.cov_matrix, "must be symmetric positive semi-definite")
  if cfg.local_radius is not None and not cfg.local_radius >= 0:
    _fail("local_radius", cfg.local_radius, "must be >= 0")
  if cfg.family == "sparse":
    if cfg.sparsity is None or not 1 <= cfg.sparsity <= cfg.d:
      _fail("sparsity", cfg.sparsity, f"the sparse family needs 1 <= sparsity <= d={cfg.d}")
  elif cfg.sparsity is not None and not 1 <= cfg.sparsity <= cfg.d:
    _fail("sparsity", cfg.sparsity, f"must be in [1, d={cfg.d}]")
  # a value the chosen family / covariance / prior never reads would be silently ignored
  if cfg.family == "linear" and cfg.sparsity is not None:
    _fail("sparsity", cfg.sparsity, "does not apply to family 'linear' (only to 'sparse' or a registered family)")
  if cfg.cov in ("identity", "given") and cfg.rho != 0:
    _fail("rho", cfg.rho, f"does not apply to cov={cfg.cov!r} (only to 'equicorrelated' or 'toeplitz')")
  if cfg.cov != "given" and cfg.cov_matrix is not None:
    _fail("cov_matrix", cfg.cov_matrix, f"does not apply to cov={cfg.cov!r} (only to 'given')")
  if cfg.prior_mean is not None and cfg.prior_mean_norm != 0:
    _fail("prior_mean_norm", cfg.prior_mean_norm, "does not apply when prior_mean is given (θ0 is prior_mean)")
  if cfg.pool_size is not None and cfg.pool_size < 1:
    _fail("pool_size", cfg.pool_size, "must be >= 1")


def covariance(cfg: TaskConfig) -> np.ndarray:
  """The input covariance Σ (d×d, float64 numpy; a constant of the config)."""
  d = cfg.d
  if cfg.cov == "identity":
    return np.eye(d)
  if cfg.cov == "equicorrelated":
    return (1.0 - cfg.rho) * np.eye(d) + cfg.rho * np.ones((d, d))
  if cfg.cov == "toeplitz":
    idx = np.arange(d)
    return cfg.rho ** np.abs(idx[:, None] - idx[None, :])
  return np.asarray(cfg.cov_matrix, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _cov_sqrt(cfg: TaskConfig) -> np.ndarray:
  """Symmetric square root of Σ (eigen-decomposition, so PSD-singular Σ works)."""
  evals, evecs = np.linalg.eigh(covariance(cfg))
  return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


def prior_mean(cfg: TaskConfig) -> np.ndarray:
  """θ0 (d,), zero unless ``prior_mean`` or ``prior_mean_norm`` is set."""
  if cfg.prior_mean is not None:
    return np.asarray(cfg.prior_mean, dtype=np.float64)
  if cfg.prior_mean_norm > 0:
    g = np.random.default_rng(cfg.task_seed).standard_normal(cfg.d)
    return cfg.prior_mean_norm * g / np.linalg.norm(g)
  return np.zeros(cfg.d)


@register_family("linear")
def sample_linear_w(key: jax.Array, cfg: TaskConfig) -> jax.Array:
  """w ~ N(θ0, τ² I_d)."""
  noise = jax.random.normal(key, (cfg.d,))
  return jnp.asarray(prior_mean(cfg), jnp.float32) + jnp.sqrt(cfg.tau2) * noise


@register_family("sparse")
def sample_sparse_w(key: jax.Array, cfg: TaskConfig, n_active_dims: jax.Array | int | None = None) -> jax.Array:
  """s-sparse w: support = s indices uniform among the first ``n_active_dims`` coordinates (all d if None),
  entries θ0_j + N(0, τ²) on it, 0 elsewhere.

  The support is the s smallest of d i.i.d. U(0, 1) scores, inactive coordinates scored 2 (never chosen while
  s <= n_active, which ``configs.Config`` checks for a dims curriculum). ``n_active_dims`` may be traced.
  With the study-2 protocol set ``w_var=1.0`` (N(0,1) entries).
  """
  k_support, k_values = jax.random.split(key)
  values = jnp.asarray(prior_mean(cfg), jnp.float32) + jnp.sqrt(cfg.tau2) * jax.random.normal(k_values, (cfg.d,))
  return _support_mask(k_support, cfg, n_active_dims) * values


def _support_mask(key: jax.Array, cfg: TaskConfig, n_active_dims: jax.Array | int | None) -> jax.Array:
  """[d] 0/1 mask of a uniform s-subset of the first ``n_active_dims`` coordinates (see ``sample_sparse_w``)."""
  scores = jax.random.uniform(key, (cfg.d,))
  if n_active_dims is not None:
    scores = jnp.where(jnp.arange(cfg.d) < n_active_dims, scores, 2.0)
  support = jnp.argsort(scores)[: cfg.sparsity]
  return jnp.zeros((cfg.d,)).at[support].set(1.0)


@functools.lru_cache(maxsize=16)
def task_pool(cfg: TaskConfig) -> np.ndarray:
  """The fixed pool of ``pool_size`` tasks [M, d], drawn once from ``task_seed`` with the family's prior."""
  if cfg.pool_size is None:
    raise ValueError("TaskConfig.pool_size=None: this config has no task pool")
  family = FAMILIES[cfg.family]
  with jax.ensure_compile_time_eval():  # a constant of the config, also when first asked for under jit
    keys = jax.random.split(jax.random.PRNGKey(cfg.task_seed), cfg.pool_size)
    return np.asarray(jax.vmap(lambda k: family(k, cfg))(keys))


def _takes_active_dims(family: FamilyFn) -> bool:
  return "n_active_dims" in inspect.signature(family).parameters


def sample_w(key: jax.Array, cfg: TaskConfig, n_active_dims: jax.Array | int | None = None) -> jax.Array:
  """One task parameter w [d]: from the family's prior, or uniformly from the task pool.

  ``n_active_dims`` (dims curriculum) goes to families that accept it (see the module docstring).
  """
  if cfg.pool_size is not None:
    index = jax.random.randint(key, (), 0, cfg.pool_size)
    return jnp.asarray(task_pool(cfg))[index]
  family = FAMILIES[cfg.family]
  if n_active_dims is not None and _takes_active_dims(family):
    return family(key, cfg, n_active_dims=n_active_dims)
  return family(key, cfg)


def sample_inputs(key: jax.Array, cfg: TaskConfig) -> jax.Array:
  """Inputs xs [N, d]: i.i.d. N(0, Σ); with ``local_radius`` r the first N-1 are x_q + r·N(0, Σ)."""
  g = jax.random.normal(key, (cfg.n_points, cfg.d))
  if cfg.cov != "identity":
    g = g @ jnp.asarray(_cov_sqrt(cfg), jnp.float32)
  if cfg.local_radius is None:
    return g
  query = g[-1]
  context = query + cfg.local_radius * g[:-1]
  return jnp.concatenate([context, query[None]], axis=0)


def sample_prompt(key: jax.Array, cfg: TaskConfig, n_active_dims: jax.Array | int | None = None) -> Prompt:
  """One prompt; a pure function of ``key`` (``n_active_dims``: see ``sample_w``)."""
  k_w, k_x, k_eps = jax.random.split(key, 3)
  w = sample_w(k_w, cfg, n_active_dims)
  xs = sample_inputs(k_x, cfg)
  targets = xs @ w
  ys = targets + jnp.sqrt(cfg.noise_var) * jax.random.normal(k_eps, (cfg.n_points,))
  return Prompt(xs=xs, ys=ys, targets=targets, w=w)


def sample_batch(key: jax.Array, cfg: TaskConfig, batch_size: int,
                 n_active_dims: jax.Array | int | None = None) -> Prompt:
  """A batch of ``batch_size`` independent prompts (vmapped over split keys): shapes [B, N, d], [B, N], [B, N], [B, d].

  ``n_active_dims`` (dims curriculum, may be traced): families that accept it draw w inside the active
  coordinates; follow with ``mask_dims`` to zero the inactive inputs.
  """
  prompts = jax.vmap(lambda k: sample_prompt(k, cfg, n_active_dims))(jax.random.split(key, batch_size))
  chex.assert_shape(prompts.xs, (batch_size, cfg.n_points, cfg.d))
  return prompts


def batch_key(seed_key: jax.Array, step: jax.Array | int) -> jax.Array:
  """The data key of training step ``step``: ``fold_in(seed_key, step)``, so any batch can be regenerated."""
  return jax.random.fold_in(seed_key, step)


def mask_dims(prompts: Prompt, n_dims: jax.Array | int) -> Prompt:
  """Curriculum over dimensions: zero input coordinates >= ``n_dims`` (traced ok; shapes unchanged).

  Labels are recomputed from the masked inputs so that y depends on the active coordinates only.
  """
  d = prompts.xs.shape[-1]
  keep = (jnp.arange(d) < n_dims).astype(prompts.xs.dtype)
  xs = prompts.xs * keep
  w = prompts.w * keep
  targets = jnp.einsum("...nd,...d->...n", xs, w)
  ys = targets + (prompts.ys - prompts.targets)
  return Prompt(xs=xs, ys=ys, targets=targets, w=w)


# ----------------------------------------------------------------------------- per-run (traced) task values

# TaskConfig fields a run may set for itself inside one compiled program (``TrainConfig.task_variants``).
TRACED_FIELDS = ("n_points", "noise_var", "w_var", "prior_mean", "prior_mean_norm", "cov", "rho", "local_radius")


class TaskParams(NamedTuple):
  """The scenario values of one run as arrays, so runs with different values share one program.

  A leading R axis when stacked over runs. Prompts of such runs have the program's N points; a run
  with D = ``n_context`` < N - 1 uses the first D as its context and the last as its query (the points
  between are padding that the model masks out).
  """

  n_context: jax.Array  # int32 D
  noise_var: jax.Array  # σ²
  tau2: jax.Array  # prior variance of each entry of w
  prior_mean: jax.Array  # [d] θ0
  rho: jax.Array  # equicorrelation ρ (0: identity covariance)
  local: jax.Array  # bool: context inputs local to the query
  local_radius: jax.Array  # r (when local)


def check_traceable(cfg: TaskConfig, field: str = "task") -> None:
  """Raises ``ValueError`` unless ``cfg``'s prompts can be drawn by ``sample_prompt_traced``."""
  if cfg.family not in ("linear", "sparse"):
    raise ValueError(f"{field}: family={cfg.family!r}: per-run task values need the 'linear' or 'sparse' family")
  if cfg.pool_size is not None:
    raise ValueError(f"{field}: pool_size={cfg.pool_size!r}: per-run task values need pool_size=None")
  if cfg.cov not in ("identity", "equicorrelated"):
    raise ValueError(f"{field}: cov={cfg.cov!r}: per-run task values need an identity or equicorrelated covariance")


def task_params(cfg: TaskConfig) -> TaskParams:
  """The ``TaskParams`` of a (traceable) config: numpy scalars and θ0 [d]."""
  check_traceable(cfg)
  return TaskParams(
      n_context=np.int32(cfg.n_points - 1), noise_var=np.float32(cfg.noise_var), tau2=np.float32(cfg.tau2),
      prior_mean=prior_mean(cfg).astype(np.float32),
      rho=np.float32(cfg.rho if cfg.cov == "equicorrelated" else 0.0),
      local=np.bool_(cfg.local_radius is not None),
      local_radius=np.float32(0.0 if cfg.local_radius is None else cfg.local_radius))


def stack_params(params: list[TaskParams]) -> TaskParams:
  """[R] TaskParams from a list of per-run ones."""
  return TaskParams(*(np.stack(field) for field in zip(*params)))


def _prefix_normal(key: jax.Array, n: int, shape: tuple[int, ...]) -> jax.Array:
  """[n, *shape] standard normals: rows 0..n-2 from one draw whose first rows do not depend on n (JAX's default
  partitionable threefry numbers the draws by their flat index), the last row (the query) from its own key."""
  if not jax.config.jax_threefry_partitionable:  # the prefix property needs it (JAX's default since 0.5)
    raise ValueError("jax_threefry_partitionable=False: padded per-run task values (train.task_variants) need "
                     "JAX's default partitionable threefry")
  k_ctx, k_query = jax.random.split(key)
  return jnp.concatenate([jax.random.normal(k_ctx, (n - 1, *shape)), jax.random.normal(k_query, (1, *shape))])


def sample_prompt_traced(key: jax.Array, cfg: TaskConfig, tp: TaskParams,
                         n_active_dims: jax.Array | int | None = None) -> Prompt:
  """One prompt of ``cfg.n_points`` points whose scenario values come from ``tp`` (traced).

  The same distribution as ``sample_prompt`` of the config ``tp`` was made from, padded: the context points are
  the first rows of one draw and the query has its own key (``_prefix_normal``), so the first D context points
  and the query do not depend on the padded length N. Inputs x = Σ^{1/2} g with
  Σ^{1/2} = aI + (b - a)11ᵀ/d, a = √(1-ρ), b = √(1-ρ+dρ) (equicorrelated Σ = (1-ρ)I + ρ11ᵀ); local
  context x_i = x_q + r Σ^{1/2} g_i; w = θ0 + √τ² N(0, I); y = wᵀx + σ ε. The ``sparse`` family keeps w on a
  uniform s-subset of the first ``n_active_dims`` coordinates, drawn as ``sample_sparse_w`` draws it (same key,
  same w).
  """
  d, n = cfg.d, cfg.n_points
  k_w, k_x, k_eps = jax.random.split(key, 3)
  if cfg.family == "sparse":
    k_support, k_values = jax.random.split(k_w)
    w = _support_mask(k_support, cfg, n_active_dims) * (
        jnp.asarray(tp.prior_mean, jnp.float32) + jnp.sqrt(tp.tau2) * jax.random.normal(k_values, (d,)))
  else:
    w = jnp.asarray(tp.prior_mean, jnp.float32) + jnp.sqrt(tp.tau2) * jax.random.normal(k_w, (d,))
  g = _prefix_normal(k_x, n, (d,))  # [N, d]
  a, b = jnp.sqrt(1.0 - tp.rho), jnp.sqrt(1.0 - tp.rho + d * tp.rho)
  g = a * g + (b - a) * jnp.mean(g, axis=-1, keepdims=True)
  query = g[-1]
  context = jnp.where(tp.local, query + tp.local_radius * g[:-1], g[:-1])
  xs = jnp.concatenate([context, query[None]], axis=0)
  eps = _prefix_normal(k_eps, n, ())
  targets = xs @ w
  ys = targets + jnp.sqrt(tp.noise_var) * eps
  return Prompt(xs=xs, ys=ys, targets=targets, w=w)


def sample_batch_traced(key: jax.Array, cfg: TaskConfig, tp: TaskParams, batch_size: int,
                        n_active_dims: jax.Array | int | None = None) -> Prompt:
  """``batch_size`` prompts of ``sample_prompt_traced``: [B, N, d], [B, N], [B, N], [B, d]."""
  return jax.vmap(lambda k: sample_prompt_traced(k, cfg, tp, n_active_dims))(jax.random.split(key, batch_size))
