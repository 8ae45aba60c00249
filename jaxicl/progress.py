"""Progress of a job made of several trainings: ONE tqdm bar over all their steps, one line per finished piece.

A job (a study, a sweep) knows its total number of optimisation steps up front: Σ over its trainings of
``train.steps``. ``JobProgress`` holds one bar of that total; each ``jaxicl.train.train(..., progress=job.bar)``
advances it by the steps of its training (steps restored from a checkpoint included, so a resumed job's bar
starts where the job stands) and shows the current loss in the bar's postfix; a training read back from disk
instead of run is counted with ``job.skip(steps)``. ``job.line(text)`` prints a line above the bar (stdout)
without breaking it. Disabled (``enabled=False``, the CLI's ``--quiet``): no bar, no lines, ``job.bar`` is None.

    with JobProgress(sum(c.train.steps for c in cfgs), "sweep") as job:
      for name, cfg in zip(names, cfgs):
        job.stage(name)
        result = train.train(cfg, workdir, progress=job.bar)
        job.line(f"{name}: final loss {result.history[-1]['loss']}")
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Bar(Protocol):
  """What ``jaxicl.train.train`` needs of a job's bar (a ``tqdm`` bar has it)."""

  def update(self, n: int) -> Any: ...

  def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...


def make_bar(total: int, initial: int = 0, desc: str | None = None) -> Any:
  """A ``tqdm.auto`` bar counting optimisation steps (ETA from the measured step rate)."""
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


class JobProgress:
  """One bar for a whole job of ``total_steps`` steps (see the module docstring); a context manager."""

  def __init__(self, total_steps: int, desc: str | None = None, enabled: bool = True):
    self.enabled = enabled
    self.bar = make_bar(total_steps, desc=desc) if enabled else None

  def stage(self, text: str) -> None:
    """Names the piece being trained now (the bar's description)."""
    if self.bar is not None:
      self.bar.set_description(text, refresh=False)

  def skip(self, steps: int) -> None:
    """Counts ``steps`` that need no training (a finished piece read back from disk)."""
    if self.bar is not None and steps:
      self.bar.update(steps)

  def line(self, text: str) -> None:
    """Prints ``text`` on stdout above the bar (nothing when disabled)."""
    if not self.enabled:
      return
    from tqdm.auto import tqdm
    tqdm.write(text, file=sys.stdout)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def __enter__(self) -> "JobProgress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
