"""Traced programs kept across processes: a jitted function ``jax.export``-ed once, read back by later processes.

JAX's persistent compilation cache spares a second process XLA's compilation, not the Python tracing and the
lowering to StableHLO that come before it, and for a training chunk those cost more than reading the compiled
program back (``tiny`` on the 2-core CPU: trace 0.7 s + lowering 0.6 s, against 0.35 s to lower a stored export).
``program(name, fn, args, ...)`` traces ``fn`` at ``args``' shapes, dtypes and shardings once, stores the
serialized export beside the compilation cache, and returns a callable that runs the stored export; a later
process with the same key reads it instead of tracing.

The key holds everything the trace depends on: the caller's key (e.g. the config and static arguments), the
argument tree, shapes, dtypes and shardings, the devices, the versions of Python, jax, jaxlib, flax, optax and
numpy, every ``jax.config`` value, and a digest of jaxicl's own source files. Both the process that exports and the
ones that read back run the same deserialized program, so they compute the same bits (tested against ``fn``).

Off (``fn`` is returned as it is) without a compilation cache folder (``jax_compilation_cache_dir``), with
several processes (``jax.distributed``), or when the export cannot be made or serialized (e.g. a custom call
``jax.export`` refuses, or no ``flatbuffers``). An unreadable stored program is a cache miss: it is exported again
and replaced atomically; an unwritable folder is a warning, and the program runs from memory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
import sys
import warnings
from typing import Any, Callable

import jax
import numpy as np

from jaxicl import files

SUBDIR = "jaxicl_programs"


def directory() -> str | None:
  """Where exports are kept: ``<jax_compilation_cache_dir>/jaxicl_programs`` (None: the cache is off)."""
  base = jax.config.jax_compilation_cache_dir
  if not base or jax.process_count() > 1 or not isinstance(getattr(jax.config, "values", None), dict):
    return None  # (without jax.config.values the key could not hold every flag)
  return os.path.join(base, SUBDIR)


@functools.lru_cache(maxsize=1)
def _environment_digest() -> str:
  """What every trace depends on besides its arguments: versions and jaxicl's source."""
  h = hashlib.sha256()
  versions = [sys.version]
  for dist in ("jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      versions.append(f"{dist}={importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
      versions.append(f"{dist}=?")
  h.update(repr(versions).encode())
  package = os.path.dirname(os.path.abspath(__file__))
  for root, dirs, names in sorted(os.walk(package)):
    dirs.sort()
    for name in sorted(n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, package).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def _key(name: str, key: str, in_tree: Any, specs: list[jax.ShapeDtypeStruct]) -> str:
  h = hashlib.sha256()
  config = sorted((k, repr(v)) for k, v in jax.config.values.items())
  devices = [(d.platform, d.device_kind, d.id) for d in jax.devices()]
  shardings = [(repr(s.sharding), getattr(getattr(s.sharding, "mesh", None), "device_ids", None)) for s in specs]
  for part in (name, key, str(in_tree), repr([(s.shape, str(s.dtype)) for s in specs]), repr(shardings),
               repr(devices), repr(config), _environment_digest()):
    h.update(part.encode())
    h.update(b"\0")
  return f"{name}-{h.hexdigest()[:40]}"


def _spec(x: Any) -> jax.ShapeDtypeStruct:
  """An argument's shape, dtype and sharding (None for an uncommitted array: placed where the program runs)."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  sharding = x.sharding if isinstance(x, jax.Array) and x.committed else None
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _read(path: str) -> tuple[jax.export.Exported, Any] | None:
  try:
    with open(path, "rb") as f:
      blob, out_tree = pickle.load(f)
    return jax.export.deserialize(bytearray(blob)), out_tree
  except Exception:  # missing, torn or foreign: a miss (the caller exports and replaces it)
    return None


def _export(name: str, fn: Callable, in_tree: Any, specs: list[jax.ShapeDtypeStruct]) -> tuple[bytes, Any] | None:
  box = {}

  def flat(*leaves):
    out_leaves, box["out_tree"] = jax.tree.flatten(fn(*jax.tree.unflatten(in_tree, leaves)))
    return out_leaves

  flat.__name__ = f"jaxicl_{name}"  # JAX's logs name the trace after it
  try:
    exported = jax.export.export(jax.jit(flat))(*specs)
    return bytes(exported.serialize()), box["out_tree"]
  except Exception:  # not exportable here: the caller runs fn itself
    return None


class Program:
  """``fn`` at fixed argument shapes, run from its stored export: ``program(*args) -> out`` (same pytrees), and
  ``lower(*args)`` as ``jax.jit``'s (for XLA's analyses; its ``compile()`` is called with the same pytrees).

  ``out_avals``: the outputs' abstract values (``jax.ShapeDtypeStruct``, with the requested shardings) in the
  output tree, known without tracing."""

  def __init__(self, name: str, exported: jax.export.Exported, in_tree: Any, out_tree: Any, out_shardings: Any,
               donate_argnums: tuple[int, ...]):
    def run(*args):
      leaves, tree = jax.tree.flatten(args)
      if tree != in_tree:  # checked when traced, i.e. once per argument structure
        raise ValueError(f"program {name!r} called with arguments {tree}, exported for {in_tree}")
      return jax.tree.unflatten(out_tree, exported.call(*leaves))

    run.__name__ = f"stored_{name}"
    self._run = jax.jit(run, donate_argnums=donate_argnums, out_shardings=out_shardings)
    self.out_avals = jax.tree.unflatten(out_tree, [
        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
        for a, s in zip(exported.out_avals, _per_leaf(out_shardings, out_tree))])

  def __call__(self, *args: Any) -> Any:
    return self._run(*args)

  def lower(self, *args: Any) -> jax.stages.Lowered:
    return self._run.lower(*args)

  def _cache_size(self) -> int:
    """Executables compiled for this program (as ``jax.jit``'s ``_cache_size``)."""
    return self._run._cache_size()


def _per_leaf(prefix: Any, out_tree: Any) -> list:
  """``prefix`` (a sharding, or a pytree prefix of the outputs holding shardings) broadcast to one per output leaf."""
  full = jax.tree.unflatten(out_tree, [0] * out_tree.num_leaves)
  is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
  return jax.tree.leaves(jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), prefix, full,
                                      is_leaf=is_sharding), is_leaf=is_sharding)


def program(name: str, fn: Callable, args: tuple, *, key: str, out_shardings: Any,
            donate_argnums: tuple[int, ...] = ()) -> Callable:
  """``fn`` (a jitted function of pytrees) as a ``Program`` for ``args``' shapes, traced at most once per key.

  ``key``: what ``fn``'s trace depends on beyond the arguments and the environment (module docstring), e.g. the
  config's repr and static arguments; ``out_shardings``: the outputs' shardings (a prefix of the output tree);
  ``donate_argnums``: arguments whose buffers the program may reuse. Returns ``fn`` itself when exports are off.
  """
  folder = directory()
  if folder is None:
    return fn
  leaves, in_tree = jax.tree.flatten(args)
  specs = [_spec(x) for x in leaves]
  path = os.path.join(folder, _key(name, key, in_tree, specs) + ".bin")
  stored = _read(path)
  if stored is None:
    made = _export(name, fn, in_tree, specs)
    if made is None:
      return fn
    try:
      os.makedirs(folder, exist_ok=True)
      files.write_bytes(path, pickle.dumps(made))
    except OSError as e:  # an unwritable cache costs later processes the trace, not this one its run
      warnings.warn(f"jaxicl: cannot store a traced program in {folder!r} ({e.strerror})", stacklevel=2)
    stored = jax.export.deserialize(bytearray(made[0])), made[1]  # run what a later process will read
  exported, out_tree = stored
  return Program(name, exported, in_tree, out_tree, out_shardings, donate_argnums)
