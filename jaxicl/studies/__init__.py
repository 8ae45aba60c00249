"""The studies: ``multihead`` (study 1, multi-head superiority) and ``head_utilization`` (study 2).

Each study module holds ``PRESETS`` (preset name -> a function of no arguments returning its config). A preset's
docstring (for study 1, ``StudyPreset.doc``) is the one place its command and expected time are written: a
paragraph that opens with the command in backticks, then `` — `` and the time. ``catalogue()`` reads them for
``jaxicl reproduce --list``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

# CLI name -> the module holding the study's PRESETS
STUDIES = {"multihead": "jaxicl.studies.multihead.presets", "head-utilization": "jaxicl.studies.head_utilization.run"}

_COMMAND = re.compile(r"`(jaxicl reproduce [^`]*)`\s*[—-]+\s*(.*)", re.S)


def preset_doc(fn: Any) -> str:
  """The docstring of a preset function (or, when it has none, the ``doc`` field of the config it returns)."""
  return inspect.cleandoc(fn.__doc__ or getattr(fn(), "doc", "") or "")


def parse_doc(doc: str) -> dict[str, str]:
  """{"summary": the paragraphs before the command, "command": the backticked command, "time": the text after its
  dash} of a preset docstring (empty strings for a part it lacks)."""
  paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
  summary, command, time = [], "", ""
  for p in paragraphs:
    m = _COMMAND.match(p)
    if m and not command:
      command, time = m.group(1), m.group(2)
    elif not command:
      summary.append(p)
  return {"summary": " ".join(summary), "command": command, "time": time}


def catalogue() -> list[dict[str, str]]:
  """One row per (study, preset): {"study", "preset", "summary", "command", "time"} from the presets' docstrings."""
  rows = []
  for study, module in STUDIES.items():
    presets = importlib.import_module(module).PRESETS
    for name, fn in presets.items():
      rows.append({"study": study, "preset": name, **parse_doc(preset_doc(fn))})
  return rows
