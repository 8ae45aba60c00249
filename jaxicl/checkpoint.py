"""Orbax checkpointing of a training state: one small wrapper on ``ocp.CheckpointManager``.

Saves are asynchronous, keep the last n, and are atomic (Orbax writes a temporary directory and
renames it), so a run killed at any moment leaves its latest finished checkpoint readable. Each save
records a fingerprint of the state in its ``meta`` (per leaf: two wrapping uint32 sums of the raw bits,
exact on any backend).

``restore_latest`` walks back from the newest step to the newest checkpoint that restores against
the abstract state (``jax.eval_shape`` of the initial state, with shardings) AND validates: same
tree, shapes and dtypes, finite values, matching step and fingerprint. Every skipped checkpoint is
reported on stderr with the reason and (with ``repair=True``, the training loop's mode) moved aside
into the sibling folder ``<directory>_corrupt/``, so that a later save of the same step is never
blocked by it. A plain file in place of the checkpoint folder is moved aside likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
import types
import warnings
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _say(message: str) -> None:
  print(f"jaxicl: {message}", file=sys.stderr, flush=True)


@jax.jit
def fingerprint(state: Any) -> list[jax.Array]:
  """Per leaf, [sum of the raw bits as uint32 words, sum of (index-weighted words)], both mod 2³² (uint32[2])."""

  def one(x):
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype.itemsize == 8:
      words = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    else:
      unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
      words = jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)
    weights = jnp.arange(1, words.size + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * weights, dtype=jnp.uint32)])

  return [one(x) for x in jax.tree.leaves(state)]


def _fingerprint_list(state: Any) -> list[list[int]]:
  return [[int(v) for v in np.asarray(f)] for f in fingerprint(state)]


def validate(state: Any, abstract_state: Any, step: int, meta: dict[str, Any]) -> str | None:
  """Why a restored ``state`` is not a valid checkpoint of ``step`` (None if it is)."""
  leaves, tree = jax.tree.flatten(state)
  want, want_tree = jax.tree.flatten(abstract_state)
  if tree != want_tree:
    return "its tree structure differs from the run's state"
  for path_leaf, leaf, spec in zip(jax.tree_util.tree_flatten_with_path(state)[0], leaves, want):
    name = jax.tree_util.keystr(path_leaf[0])
    if tuple(leaf.shape) != tuple(spec.shape) or leaf.dtype != spec.dtype:
      return f"{name} is {leaf.dtype}{list(leaf.shape)}, expected {spec.dtype}{list(spec.shape)}"
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(leaf))):
      return f"{name} holds non-finite values"
  if meta.get("step") != step:
    return f"its meta data says step {meta.get('step')!r}"
  steps = getattr(state, "step", None)
  if steps is not None and not np.all(np.asarray(steps) == step):
    return f"its state is at step {np.unique(np.asarray(steps)).tolist()}"
  if "fingerprint" in meta and meta["fingerprint"] != _fingerprint_list(state):
    return "its contents do not match the fingerprint recorded at save time"
  return None


_ORBAX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__)))  # .../site-packages/orbax


def _from_orbax(obj: Any = None, tb: Any = None) -> bool:
  """Whether a coroutine / task (``obj``) or a traceback (``tb``) comes from Orbax's code."""
  code = getattr(obj, "cr_code", None)
  if code is None and isinstance(obj, asyncio.Future) and hasattr(obj, "get_coro"):
    code = getattr(obj.get_coro(), "cr_code", None)
  if code is not None and code.co_filename.startswith(_ORBAX_ROOT):
    return True
  while tb is not None:
    if tb.tb_frame.f_code.co_filename.startswith(_ORBAX_ROOT):
      return True
    tb = tb.tb_next
  return False


def _not_an_orbax_task_record(record: logging.LogRecord) -> bool:
  return not (_ORBAX_ROOT in record.getMessage() or (record.exc_info and _from_orbax(tb=record.exc_info[2])))


def _quiet_leftovers_from_now_on() -> None:
  """After a failed read, some of its dropped coroutines and tasks become garbage only later, often at interpreter
  exit, when no restore is running to hide them. From the first failed read on, this process drops exactly those:
  unraisable exceptions of Orbax's coroutines (or the closed loop's "Event loop is closed"), asyncio's records that
  name an Orbax task, and "never awaited" warnings of Orbax's coroutines (closed here when found: a closed
  coroutine does not warn). Everything else still reaches the previous hook, logger and warnings."""
  names = {"_read_array_index_and_device_put"}  # the one seen at exit; others are found below
  for obj in gc.get_objects():
    if type(obj) is types.CoroutineType and _from_orbax(obj):  # type(), not isinstance: no object's hooks run
      names.add(obj.cr_code.co_name)
      if obj.cr_frame is not None and not obj.cr_running:
        obj.close()
  for name in sorted(names):
    warnings.filterwarnings("ignore", message=f"coroutine '{name}' was never awaited", category=RuntimeWarning)
  asyncio_log = logging.getLogger("asyncio")
  if _not_an_orbax_task_record not in asyncio_log.filters:
    asyncio_log.addFilter(_not_an_orbax_task_record)
  previous = sys.unraisablehook
  if getattr(previous, "_drops_orbax_leftovers", False):
    return

  def hook(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if not (_from_orbax(unraisable.object, unraisable.exc_traceback)
            or (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")):
      previous(unraisable)

  hook._drops_orbax_leftovers = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _aborted_read_noise_hidden() -> Iterator[None]:
  """Keeps the leftovers of a read that failed half-way off stderr: Orbax reads a checkpoint's arrays as
  concurrent TensorStore futures on an asyncio loop, and when one fails the others are dropped with the closed
  loop; their errors ("Event loop is closed", the same read error again, "Task exception was never retrieved",
  "coroutine ... was never awaited") surface as unraisable exceptions, asyncio log records and warnings, dozens of
  tracebacks for one corrupt file. The first error is the one ``restore_latest`` reports; the leftovers are
  collected here and dropped, and those that surface later by ``_quiet_leftovers_from_now_on``."""
  hook, asyncio_log = sys.unraisablehook, logging.getLogger("asyncio")
  disabled = asyncio_log.disabled
  dropped, failed = [], False
  sys.unraisablehook, asyncio_log.disabled = dropped.append, True
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
      try:
        yield
      except BaseException:
        quiet_since = time.monotonic()  # the dropped reads end on TensorStore's threads: wait for 0.3 s of quiet
        while time.monotonic() - quiet_since < 0.3 and len(dropped) < 10_000:
          before = len(dropped)
          gc.collect()
          time.sleep(0.05)
          if len(dropped) != before:
            quiet_since = time.monotonic()
        failed = True
        raise
      finally:  # also after a read that succeeds: an earlier failed read's tasks often become garbage only now
        gc.collect()
  finally:
    sys.unraisablehook, asyncio_log.disabled = hook, disabled
    if failed:
      _quiet_leftovers_from_now_on()


class Checkpointer:
  """Periodic async checkpoints of a pytree ``state`` plus a JSON ``meta`` dict under ``directory``.

  ``repair=True`` (training) moves checkpoints that fail to restore or validate aside; ``repair=False``
  (reading a run, e.g. for evaluation) only skips them and writes nothing.
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True, repair: bool = True):
    self.directory = os.path.abspath(directory)
    self.quarantine = self.directory + "_corrupt"
    self.repair = repair
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=repair, enable_async_checkpointing=async_save, cleanup_tmp_directories=repair)
    if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
      if not repair:
        raise ValueError(f"checkpoints={self.directory!r}: not a directory")
      self.set_aside(self.directory, "is not a directory")
    if not repair and not os.path.isdir(self.directory):
      self.manager = None
    else:
      self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
    """Starts saving ``state`` at ``step`` (returns before the write finishes when async)."""
    meta = dict(meta or {}, fingerprint=_fingerprint_list(state))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.manager.save(step, args=args, force=True)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps()) if self.manager is not None else []

  def candidates(self) -> list[int]:
    """Every step-named entry (finished or not, folder or not), newest first: what ``restore_latest`` looks at."""
    names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
    return sorted({int(n) for n in names if n.isdigit()} | set(self.steps()), reverse=True)

  def set_aside(self, path: str, why: str) -> None:
    """Moves ``path`` into the quarantine folder (``repair=True`` only) and says so on stderr."""
    if not self.repair:
      return
    os.makedirs(self.quarantine, exist_ok=True)
    target = os.path.join(self.quarantine, f"{os.path.basename(path)}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    _say(f"{path} {why}; moved it to {target}")

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, meta) of the newest checkpoint that restores and validates, or None if there is none."""
    candidates = self.candidates()
    skipped = False
    for step in candidates:
      path = os.path.join(self.directory, str(step))
      why, restored = None, None
      if not os.path.isdir(path):
        why = "not a checkpoint folder"
      elif step not in self.steps():
        why = "not a finished Orbax checkpoint"
      else:
        try:
          with _aborted_read_noise_hidden():
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                              meta=ocp.args.JsonRestore()))
          meta = dict(restored["meta"] or {})
          why = validate(restored["state"], abstract_state, step, meta)
        except Exception as e:  # noqa: BLE001 -- any failure to read means: try the previous one
          first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
          why = f"{type(e).__name__}: {first}"
      if why is None:
        return step, restored["state"], meta
      skipped = True
      if self.repair:
        self.set_aside(path, f"is unreadable ({why}); skipping it")
        self.manager.reload()
      else:
        _say(f"checkpoint {path} is unreadable ({why}); skipping it")
    if skipped:
      _say(f"no checkpoint in {self.directory} restores; starting from step 0" if self.repair
           else f"no checkpoint in {self.directory} restores")
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    if self.manager is not None:
      self.manager.wait_until_finished()

  def close(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
