"""Orbax checkpointing of a training state: one small wrapper on ``ocp.CheckpointManager``.

Saves are asynchronous, keep the last n, and are atomic (Orbax writes a temporary directory and
renames it), so a run killed at any moment leaves its latest finished checkpoint readable.
``restore_latest`` restores against an abstract state (``jax.eval_shape`` of the initial state,
with shardings) and skips unreadable checkpoints with a message, falling back to older ones.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Periodic async checkpoints of a pytree ``state`` plus a JSON ``meta`` dict under ``directory``."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
    """Starts saving ``state`` at ``step`` (returns before the write finishes when async)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
    self.manager.save(step, args=args, force=True)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, meta) of the newest readable checkpoint, or None if there is none.

    Unreadable checkpoints are reported on stderr and skipped.
    """
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 -- any failure to read means: try the previous one
        print(f"jaxicl: checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: {e}); skipping it",
              file=sys.stderr)
        continue
      return step, restored["state"], dict(restored["meta"] or {})
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
