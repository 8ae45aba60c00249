"""Typed run configuration: dataclasses, named presets, JSON files and ``key=value`` overrides.

A ``Config`` is frozen and hashable (it is a static argument of the compiled training program).
Presets are registered with ``@preset``; each preset's docstring gives its command and expected time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Callable

from jaxicl import tasks
from jaxicl.models import ModelConfig

def _finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, field: str, value: Any, why: str) -> None:
  if not ok:
    raise ValueError(f"{field}={value!r}: {why}")


SCHEDULES = ("constant", "cosine", "linear")
SHARD_MODES = ("auto", "batch", "runs")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Adam(W) with an optax schedule; ``freeze`` lists parameter-path prefixes kept fixed (lazy training)."""

  lr: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  schedule: str = "constant"  # constant | cosine | linear (decay to 0), after warmup
  warmup_steps: int = 0
  grad_clip: float | None = None  # global-norm clipping
  freeze: tuple[str, ...] = ()  # e.g. ("W_in",) or ("block_0/attn",)

  def __post_init__(self):
    _check(_finite(self.lr) and self.lr > 0, "optim.lr", self.lr, "must be a finite number > 0")
    _check(0 <= self.b1 < 1, "optim.b1", self.b1, "must be in [0, 1)")
    _check(0 <= self.b2 < 1, "optim.b2", self.b2, "must be in [0, 1)")
    _check(_finite(self.eps) and self.eps > 0, "optim.eps", self.eps, "must be a finite number > 0")
    _check(_finite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
           "must be a finite number >= 0")
    _check(self.schedule in SCHEDULES, "optim.schedule", self.schedule, f"known: {SCHEDULES}")
    _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
    _check(self.grad_clip is None or (_finite(self.grad_clip) and self.grad_clip > 0), "optim.grad_clip",
           self.grad_clip, "must be a finite number > 0 (or none)")
    _check(all(isinstance(f, str) and f for f in self.freeze), "optim.freeze", self.freeze,
           "must be non-empty parameter-path prefixes")


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
  """Garg et al.'s curriculum: active dims and points grow by ``*_inc`` every ``every`` steps.

  Implemented by masking (inputs beyond the active dims are zero; loss only on active points), so
  shapes never change and nothing recompiles. ``None`` start values mean no curriculum on that axis; an axis's
  ``*_inc`` (and ``every``, without either axis) set without its start is an error (it would do nothing).
  """

  dims_start: int | None = None
  dims_inc: int = 1
  points_start: int | None = None
  points_inc: int = 2
  every: int = 2000

  def __post_init__(self):
    _check(self.every >= 1, "curriculum.every", self.every, "must be >= 1")
    _check(self.dims_start is None or self.dims_start >= 1, "curriculum.dims_start", self.dims_start, "must be >= 1")
    _check(self.points_start is None or self.points_start >= 1, "curriculum.points_start", self.points_start,
           "must be >= 1")
    _check(self.dims_inc >= 0, "curriculum.dims_inc", self.dims_inc, "must be >= 0")
    _check(self.points_inc >= 0, "curriculum.points_inc", self.points_inc, "must be >= 0")
    no_dims, no_points = self.dims_start is None, self.points_start is None
    for field, unused, start in (("dims_inc", no_dims, "dims_start"), ("points_inc", no_points, "points_start"),
                                 ("every", no_dims and no_points, "dims_start / points_start")):
      value = getattr(self, field)
      _check(not unused or value == CurriculumConfig.__dataclass_fields__[field].default, f"curriculum.{field}",
             value, f"does not apply without curriculum.{start}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Loop, seeds, logging and checkpointing.

  ``task_variants`` × ``lrs`` × ``seeds`` runs train together in one compiled program (vmapped); ``lrs``
  empty means just ``optim.lr``; ``task_variants`` empty means just ``task``. A task variant is a string
  ``field=value;field=value`` of task fields in ``tasks.TRACED_FIELDS`` (e.g. ``n_points=21;noise_var=1``)
  that its runs take instead of ``task``'s: they are passed to the program as arrays, and runs with fewer
  points than ``task.n_points`` are padded and masked (one-layer models). ``freeze=W_in`` (prefixes joined by
  ``+``) freezes those parameters in the variant's runs only (a per-run mask on gradients and updates). ``log_every`` is also the number
  of steps fused in one ``lax.scan`` chunk.
  """

  steps: int = 1000
  batch_size: int = 64
  seeds: tuple[int, ...] = (0,)
  lrs: tuple[float, ...] = ()
  task_variants: tuple[str, ...] = ()
  log_every: int = 100
  ckpt_every: int = 0  # 0: only at the end; must be a multiple of log_every
  keep_ckpts: int = 3
  shard: str = "auto"  # batch: split each batch over devices; runs: split the runs; auto: see train.fit_devices
  eval_prompts: int = 1024

  def __post_init__(self):
    _check(self.steps >= 1, "train.steps", self.steps, "must be >= 1")
    _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
    _check(len(self.seeds) >= 1, "train.seeds", self.seeds, "needs at least one seed")
    _check(all(0 <= s < 2**31 for s in self.seeds), "train.seeds", self.seeds, "seeds must be in [0, 2**31)")
    _check(len(set(self.seeds)) == len(self.seeds), "train.seeds", self.seeds, "a seed is repeated")
    _check(all(_finite(lr) and lr > 0 for lr in self.lrs), "train.lrs", self.lrs,
           "learning rates must be finite numbers > 0")
    _check(len(set(self.lrs)) == len(self.lrs), "train.lrs", self.lrs, "a learning rate is repeated")
    _check(len(set(self.task_variants)) == len(self.task_variants), "train.task_variants", self.task_variants,
           "a variant is repeated")
    _check(self.log_every >= 1, "train.log_every", self.log_every, "must be >= 1")
    _check(self.ckpt_every >= 0 and self.ckpt_every % self.log_every == 0, "train.ckpt_every", self.ckpt_every,
           f"must be a non-negative multiple of train.log_every={self.log_every}")
    _check(self.keep_ckpts >= 1, "train.keep_ckpts", self.keep_ckpts, "must be >= 1")
    _check(self.shard in SHARD_MODES, "train.shard", self.shard, f"known: {SHARD_MODES}")
    _check(self.eval_prompts >= 1, "train.eval_prompts", self.eval_prompts, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class Config:
  task: tasks.TaskConfig = tasks.TaskConfig()
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  curriculum: CurriculumConfig = CurriculumConfig()
  train: TrainConfig = TrainConfig()

  def __post_init__(self):
    check_values(self)
    c = self.curriculum
    if c.dims_start is not None:
      _check(c.dims_start <= self.task.d, "curriculum.dims_start", c.dims_start, f"must be <= task.d={self.task.d}")
      if self.task.family == "sparse":  # the support is drawn among the active dims, so s of them must exist
        _check(c.dims_start >= self.task.sparsity, "curriculum.dims_start", c.dims_start,
               f"must be >= task.sparsity={self.task.sparsity} for the sparse family")
    if c.points_start is not None:
      _check(c.points_start <= self.task.n_points, "curriculum.points_start", c.points_start,
             f"must be <= task.n_points={self.task.n_points}")
      _check(self.model.name == "gpt2", "curriculum.points_start", c.points_start,
             "a points curriculum needs a model that predicts at every point (model.name='gpt2')")
    if self.model.name == "gpt2":
      _check(self.task.n_points <= self.model.max_points, "task.n_points", self.task.n_points,
             f"exceeds model.max_points={self.model.max_points}")
    if self.train.task_variants:
      variant_tasks(self)  # raises on a bad variant

  @property
  def lrs(self) -> tuple[float, ...]:
    return self.train.lrs or (self.optim.lr,)

  @property
  def runs(self) -> list[tuple[int, float]]:
    """(seed, lr) of every run, variant-major then lr-major: run r has lr ``lrs[(r // n_seeds) % n_lrs]``,
    seed ``seeds[r % n_seeds]`` and task variant ``r // (n_lrs · n_seeds)`` (``run_variants``)."""
    n_variants = max(1, len(self.train.task_variants))
    return [(s, lr) for _ in range(n_variants) for lr in self.lrs for s in self.train.seeds]

  @property
  def run_variants(self) -> list[int]:
    """The task variant (index into ``train.task_variants``; 0 without variants) of every run."""
    per_variant = len(self.lrs) * len(self.train.seeds)
    return [r // per_variant for r in range(len(self.runs))]


# The keys of a task variant and the config field each stands for: the traced task fields, and ``freeze`` (the run's
# own ``optim.freeze`` prefixes, joined by "+"; a per-run mask, so lazy and full training share a program).
VARIANT_FIELDS = {**{f: f"task.{f}" for f in tasks.TRACED_FIELDS}, "freeze": "optim.freeze"}


def parse_variant(variant: str) -> dict[str, str]:
  """``"n_points=21;noise_var=1"`` -> {"n_points": "21", "noise_var": "1"}; keys must be in ``VARIANT_FIELDS``."""
  out = {}
  for item in variant.split(";"):
    if not item.strip():
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in VARIANT_FIELDS:
      raise ValueError(f"train.task_variants={variant!r}: {item.strip()!r} is not field=value with a field of "
                       f"{tuple(VARIANT_FIELDS)}")
    out[key] = value.strip()
  return out


def variant_freeze(cfg: Config) -> list[tuple[str, ...]]:
  """The parameter-path prefixes each task variant freezes on top of ``optim.freeze`` (``[()]`` without variants)."""
  if not cfg.train.task_variants:
    return [()]
  out = []
  for variant in cfg.train.task_variants:
    raw = parse_variant(variant).get("freeze", "")
    prefixes = tuple(p.strip() for p in raw.split("+") if p.strip() and p.strip().lower() != "none")
    out.append(prefixes)
  return out


def variant_tasks(cfg: Config) -> list[tasks.TaskConfig]:
  """The TaskConfig of every task variant of ``cfg`` (``[cfg.task]`` without variants); checks that they can
  share the program: same d, at most ``task.n_points`` points, a traceable prior and covariance, and (gpt2)
  the same number of points."""
  if not cfg.train.task_variants:
    return [cfg.task]
  tasks.check_traceable(cfg.task, "task")
  hints = typing.get_type_hints(tasks.TaskConfig)
  out = []
  for variant in cfg.train.task_variants:
    values = {k: _coerce(_Text(v), hints[k], f"train.task_variants[{variant!r}].{k}")
              for k, v in parse_variant(variant).items() if k != "freeze"}
    task = dataclasses.replace(cfg.task, **values)
    tasks.check_traceable(task, f"train.task_variants={variant!r}")
    _check(task.n_points <= cfg.task.n_points, "train.task_variants", variant,
           f"n_points must be <= task.n_points={cfg.task.n_points} (the padded length)")
    if not cfg.model.one_layer:
      _check(task.n_points == cfg.task.n_points, "train.task_variants", variant,
             f"n_points differs from task.n_points: padded contexts need a one-layer model, not {cfg.model.name!r}")
    _check(task.n_points >= 2, "train.task_variants", variant, "needs n_points >= 2 (a context and the query)")
    out.append(task)
  return out


# ----------------------------------------------------------------------------- dict / file / overrides

def to_dict(cfg: Config) -> dict[str, Any]:
  """Nested plain dict (JSON-serialisable)."""
  return dataclasses.asdict(cfg)


_INT_LIMIT = 2**31  # every int field (steps, seeds, sizes) becomes an int32 on device


class _Text(str):
  """A ``key=value`` override's value: text to be parsed (a plain ``str`` from a JSON file is not parsed)."""


def _describe(annotation: Any) -> str:
  return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, field: str, nested: bool = False) -> Any:
  """Checks a JSON value, or parses a ``key=value`` string, against the field's annotated type.

  Override strings (from ``--set``) are parsed: ``"1e3"`` is read as the int 1000 (integral values only),
  ``"true"``/``"false"`` as bools, ``"a,b"`` or a JSON list ``"[a, b]"`` as tuples, ``"none"`` as None. Non-string
  values (JSON) must already have the right type: no silent coercion (2.5 or true for an int, "3" for a float are
  errors); a single value for a variable-length tuple field is the 1-tuple. Floats must be finite and ints must fit in int32. Raises ``ValueError`` naming ``field``.
  """
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    if value is None or (isinstance(value, _Text) and value.strip().lower() in ("none", "null")):
      if type(None) in args:
        return None
      raise ValueError(f"{field}={value!r}: must not be None (expected {_describe(annotation)})")
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, field, nested)
      except ValueError as e:
        errors.append(str(e))
    raise ValueError(errors[0] if len(errors) == 1 else f"{field}={value!r}: expected {_describe(annotation)}")
  if origin is tuple:
    if isinstance(value, _Text):
      text = value.strip()
      if text.startswith("["):
        try:
          value = json.loads(text)
        except json.JSONDecodeError:
          raise ValueError(f"{field}={value!r}: not a valid JSON list") from None
      else:
        value = [_Text(v.strip()) for v in text.replace("(", "").replace(")", "").split(",") if v.strip()]
    if (not nested and not isinstance(value, (list, tuple, dict)) and args and args[-1] is Ellipsis
        and typing.get_origin(args[0]) is not tuple):
      value = [value]
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"{field}={value!r}: expected a list ({_describe(annotation)})")
    if args and args[-1] is Ellipsis:
      return tuple(_coerce(v, args[0], f"{field}[{i}]", True) for i, v in enumerate(value))
    if len(value) != len(args):
      raise ValueError(f"{field}={value!r}: expected {len(args)} entries")
    return tuple(_coerce(v, a, f"{field}[{i}]", True) for i, (v, a) in enumerate(zip(value, args)))
  if annotation is bool:
    if isinstance(value, _Text):
      if value.strip().lower() in ("1", "true", "yes"):
        return True
      if value.strip().lower() in ("0", "false", "no"):
        return False
      raise ValueError(f"{field}={value!r}: expected true/false")
    if not isinstance(value, bool):
      raise ValueError(f"{field}={value!r}: expected true/false, got {type(value).__name__}")
    return value
  if annotation in (int, float) and isinstance(value, _Text) and not value.isascii():
    raise ValueError(f"{field}={value!r}: expected a number written in ASCII digits")
  if annotation is int:
    if isinstance(value, _Text):
      try:
        number = float(value)
      except ValueError:
        raise ValueError(f"{field}={value!r}: expected an integer") from None
      if not (math.isfinite(number) and number.is_integer()):
        raise ValueError(f"{field}={value!r}: expected an integer")
      value = int(number) if not value.strip().lstrip("+-").isdigit() else int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{field}={value!r}: expected an integer, got {type(value).__name__}")
    if not -_INT_LIMIT <= value < _INT_LIMIT:
      raise ValueError(f"{field}={value!r}: out of range (|value| must be < 2**31)")
    return value
  if annotation is float:
    if isinstance(value, _Text):
      try:
        value = float(value)
      except ValueError:
        raise ValueError(f"{field}={value!r}: expected a number") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(f"{field}={value!r}: expected a number, got {type(value).__name__}")
    try:
      number = float(value)
    except OverflowError:
      raise ValueError(f"{field}={value!r}: not a finite number") from None
    if isinstance(value, int) and number != value:  # e.g. 2**53 + 1: no silent rounding of an integer
      raise ValueError(f"{field}={value!r}: not exactly representable as a float (write it as a decimal number)")
    value = number
    if not math.isfinite(value):
      raise ValueError(f"{field}={value!r}: must be a finite number")
    return value
  if annotation is str:
    if not isinstance(value, str):
      raise ValueError(f"{field}={value!r}: expected a string, got {type(value).__name__}")
    return str(value)
  return value


def parse_value(text: str, annotation: Any, field: str) -> Any:
  """Parses override text (``--set``) against an annotated type exactly as ``override`` does (``"a,b"`` a tuple,
  ``"none"`` None, ints integral, floats finite); ``ValueError`` naming ``field``. For settings outside ``Config``
  (e.g. a study's own) that share the command line's ``key=value`` syntax."""
  return _coerce(_Text(text), annotation, field)


def field_type(key: str) -> Any:
  """The annotated type of the config field ``section.field``; ``ValueError`` naming an unknown key."""
  section, _, name = key.partition(".")
  hints = typing.get_type_hints(Config)
  if section not in hints:
    raise ValueError(f"{key!r}: unknown config section {section!r}; known: {sorted(hints)}")
  fields = typing.get_type_hints(hints[section])
  if name not in fields:
    raise ValueError(f"{key!r}: unknown config field {name!r}; known: {sorted(fields)}")
  return fields[name]


def _build(cls, values: Any, prefix: str):
  """``cls(**values)`` with every field checked by ``_coerce`` (nested dataclasses recursively)."""
  where = prefix.rstrip(".") or "config"
  if not isinstance(values, dict):
    raise ValueError(f"{where}={values!r}: must be an object ({{field: value, ...}}), got {type(values).__name__}")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for key, value in values.items():
    if key not in hints:
      raise ValueError(f"{prefix}{key}: unknown config field; known: {sorted(hints)}")
    if dataclasses.is_dataclass(hints[key]):
      kwargs[key] = _build(hints[key], value, f"{prefix}{key}.")
    else:
      kwargs[key] = _coerce(value, hints[key], prefix + key)
  try:
    return cls(**kwargs)
  except (TypeError, OverflowError, ArithmeticError) as e:  # a check that compared values of a wrong kind
    raise ValueError(f"{where}: invalid values ({type(e).__name__}: {e})") from None


def check_values(cfg: Any, prefix: str = "") -> None:
  """Every float in a (nested) config dataclass is finite and every int fits in int32, whatever built it."""
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    name = prefix + f.name
    if dataclasses.is_dataclass(value):
      check_values(value, name + ".")
      continue
    stack = [value]
    while stack:
      v = stack.pop()
      if isinstance(v, (tuple, list)):
        stack.extend(v)
      elif isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{name}={value!r}: must be finite")
      elif isinstance(v, int) and not isinstance(v, bool) and not -_INT_LIMIT <= v < _INT_LIMIT:
        raise ValueError(f"{name}={value!r}: out of range (|value| must be < 2**31)")


def from_dict(values: dict[str, Any]) -> Config:
  """Inverse of ``to_dict`` (missing fields take their defaults); unknown fields or bad values raise ``ValueError``."""
  return _build(Config, values, "")


def check_repeated(assignments: list[str] | tuple[str, ...], what: str = "override") -> None:
  """``ValueError`` for a ``key=value`` whose key is given twice (which value was meant is not for us to guess)."""
  seen: dict[str, str] = {}
  for a in assignments:
    key = a.split("=", 1)[0].strip()
    if key in seen:
      raise ValueError(f"{what} {key}: given twice ({seen[key]!r}, {a!r}); keep one")
    seen[key] = a


def override(cfg: Config, assignments: list[str]) -> Config:
  """Applies ``section.field=value`` strings, e.g. ``task.d=10``, ``model.heads=8,1,1``; a key given twice is an
  error (``check_repeated``)."""
  check_repeated(assignments)
  values = to_dict(cfg)
  for assignment in assignments:
    if "=" not in assignment:
      raise ValueError(f"override {assignment!r}: expected section.field=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = values
    for k in keys[:-1]:
      if not isinstance(node, dict) or k not in node or not isinstance(node[k], dict):
        raise ValueError(f"override {path.strip()!r}: unknown config section {k!r}; known: {sorted(values)}")
      node = node[k]
    if keys[-1] not in node:
      raise ValueError(f"override {path.strip()!r}: unknown config field {keys[-1]!r}; known: {sorted(node)}")
    if isinstance(node[keys[-1]], dict):
      raise ValueError(f"override {path.strip()}={raw!r}: {path.strip()!r} is a section, not a field; set its "
                       f"fields, e.g. {path.strip()}.{next(iter(node[keys[-1]]))}=...")
    node[keys[-1]] = _Text(raw)
  return from_dict(values)


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, Callable[[], Config]] = {}


def preset(fn: Callable[[], Config]) -> Callable[[], Config]:
  """Registers a preset under its function name."""
  PRESETS[fn.__name__] = fn
  return fn


def load(path: str) -> Config:
  """The config in the JSON file ``path`` (``to_dict`` format); ``ValueError`` naming the file if it is missing,
  unreadable, not JSON or holds an invalid config. The one reader of config files (``--config x.json``, a
  workdir's ``config.json``)."""
  def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in pairs:
      if key in values:
        raise ValueError(f"key {key!r} appears twice in one object")
      values[key] = value
    return values

  try:
    with open(path) as f:
      values = json.load(f, object_pairs_hook=no_repeated_keys)
  except OSError as e:
    raise ValueError(f"{path}: cannot read the config file ({e.strerror})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  except ValueError as e:  # a repeated key
    raise ValueError(f"{path}: {e}") from None
  try:
    return from_dict(values)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def get_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
  """A preset by name, or a JSON file (``load``), then ``overrides``."""
  if name_or_path in PRESETS:
    cfg = PRESETS[name_or_path]()
  elif name_or_path.endswith(".json"):
    cfg = load(name_or_path)
  else:
    raise ValueError(f"config={name_or_path!r}: neither a preset ({sorted(PRESETS)}) nor a .json file")
  return override(cfg, list(overrides))


@preset
def tiny() -> Config:
  """A few-second CPU smoke run (tests): 2-layer GPT-2, d=3.

  `jaxicl train --config tiny --workdir /tmp/tiny` — ~10 s on CPU.
  """
  return Config(
      task=tasks.TaskConfig(d=3, n_points=8, w_var=1.0),
      model=ModelConfig(name="gpt2", width=32, n_layers=2, heads=(2,), max_points=16),
      optim=OptimConfig(lr=3e-3),
      train=TrainConfig(steps=200, batch_size=32, log_every=50, eval_prompts=256),
  )


@preset
def small() -> Config:
  """The small CPU preset: 2-layer GPT-2 (width 64, 4 heads, flagged y tokens) on d=3, 15 points, with a
  dims curriculum 1→3 (+1 every 1000 steps), 4000 steps.

  `jaxicl train --config small --workdir runs/small` — 2–3 minutes on an idle 2-core CPU (9 minutes on a
  heavily shared one), seconds on a GPU. Measured (2026-11-25, seed 0, default read-in/read-out init):
  excess risk 0.2–0.3 at n ≥ 9 (0.29 at n = 14) against averaging's ≈ 1–1.5 and OLS's 0 — well below averaging,
  still far from least squares; results/eval_shifts_small/ holds that evaluation.
  """
  return Config(
      task=tasks.TaskConfig(d=3, n_points=15, w_var=1.0),
      model=ModelConfig(name="gpt2", width=64, n_layers=2, heads=(4,), max_points=16, layout="interleaved_flag"),
      optim=OptimConfig(lr=1e-3),
      curriculum=CurriculumConfig(dims_start=1, dims_inc=1, every=1000),
      train=TrainConfig(steps=4000, batch_size=64, log_every=250, ckpt_every=1000),
  )


@preset
def standard() -> Config:
  """Garg et al.'s standard setup: d=20, 41 points, GPT-2 12 layers × 8 heads × 256, Adam 1e-4, batch 64, 500k steps,
  curriculum dims 5→20 (+1 / 2000 steps) and points 11→41 (+2 / 2000 steps).

  `jaxicl train --config standard --workdir runs/standard` — many hours on one GPU (use
  `--set train.steps=...` for shorter runs); impractical on CPU.
  """
  return Config(
      task=tasks.TaskConfig(d=20, n_points=41, w_var=1.0),
      model=ModelConfig(name="gpt2", width=256, n_layers=12, heads=(8,), max_points=41),
      optim=OptimConfig(lr=1e-4),
      curriculum=CurriculumConfig(dims_start=5, dims_inc=1, points_start=11, points_inc=2, every=2000),
      train=TrainConfig(steps=500_000, batch_size=64, log_every=1000, ckpt_every=10_000),
  )


@preset
def study1() -> Config:
  """Study 1's one-layer softmax attention (p=64, h=4) on d=5 with D=50 context examples.

  `jaxicl train --config study1 --workdir runs/study1` — about a minute on CPU.
  """
  return Config(
      task=tasks.TaskConfig(d=5, n_points=51),
      model=ModelConfig(name="softmax_icl", embed_dim=64, heads=(4,)),
      optim=OptimConfig(lr=1e-3),
      train=TrainConfig(steps=3000, batch_size=256, log_every=250, ckpt_every=1000),
  )


@preset
def sparse() -> Config:
  """Study 2's sparse regression: d=20, s=3, N=40, 3-layer GPT-2 × 8 heads (width 256).

  `jaxicl train --config sparse --workdir runs/sparse` — ~15 min on one GPU; use the study's quick preset on CPU.
  """
  return Config(
      task=tasks.TaskConfig(family="sparse", d=20, sparsity=3, w_var=1.0, n_points=40),
      model=ModelConfig(name="gpt2", width=256, n_layers=3, heads=(8,), mlp=True, max_points=40),
      optim=OptimConfig(lr=1e-4, warmup_steps=1000),
      train=TrainConfig(steps=50_000, batch_size=64, log_every=500, ckpt_every=5000),
  )
