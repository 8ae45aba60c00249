"""The studies: ``multihead`` (study 1, multi-head superiority) and ``head_utilization`` (study 2).

A study is a base ``configs.Config`` + a grid (the study's ``StudySettings``) + an analysis. Each study module holds
``PRESETS`` (preset name -> a function of no arguments returning its ``Preset(name, doc, config, study)``) and
``configure(name, overrides)``, which applies ``--set`` overrides through ``split_overrides``. A preset's docstring
is the one place its command and expected time are written: a paragraph that opens with the command in
backticks, then `` — `` and the time. ``catalogue()`` reads them for ``jaxicl reproduce --list``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from typing import Any, Callable

# CLI name -> the module holding the study's PRESETS
STUDIES = {"multihead": "jaxicl.studies.multihead.presets", "head-utilization": "jaxicl.studies.head_utilization.run"}


def preset_registrar(registry: dict[str, Callable[[], Any]], preset: Callable[..., Any]
                     ) -> Callable[[Callable[[], tuple]], Callable[[], Any]]:
  """A decorator registering a function that returns (base config, study settings) as ``registry[its name]``: a
  function of no arguments returning ``preset(name, docstring, config, settings)``."""
  def register(fn: Callable[[], tuple]) -> Callable[[], Any]:
    def make():
      return preset(fn.__name__, fn.__doc__ or "", *fn())
    make.__name__, make.__doc__ = fn.__name__, fn.__doc__
    registry[fn.__name__] = make
    return make
  return register


def lazy_exports(package: str, modules: dict[str, str]) -> Callable[[str], Any]:
  """A study package's module ``__getattr__`` (PEP 562): name -> that attribute of submodule ``modules[name]``,
  imported on first use. A package that imported its ``run`` module itself would make
  ``python -m <package>.run`` execute a module already in ``sys.modules`` (runpy's RuntimeWarning)."""
  def __getattr__(name: str) -> Any:
    if name in modules:
      return getattr(importlib.import_module(f"{package}.{modules[name]}"), name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
  return __getattr__


def split_overrides(overrides: list[str] | tuple[str, ...], settings: type, grid_fields: dict[str, str], study: str,
                    parse: Callable[[str, str, Any, str], Any] | None = None) -> tuple[list[str], dict[str, Any]]:
  """``--set`` overrides of a study -> (the ``section.field=value`` strings for its base config, {name: value} for
  its ``settings`` dataclass from ``study.name=value``). A key in ``grid_fields`` (``section.*`` matches a whole
  section) is set by the study's grid and refused, naming the study field to use. ``parse(name, raw, annotation,
  key)`` parses a settings value (default ``configs.parse_value``). A key given twice is an error."""
  from jaxicl import configs

  configs.check_repeated(overrides)
  config_sets, values = [], {}
  hints = typing.get_type_hints(settings)
  for assignment in overrides:
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep:
      raise ValueError(f"override {assignment!r}: expected section.field=value")
    grid = grid_fields.get(key) or grid_fields.get(key.split(".")[0] + ".*")
    if grid:
      raise ValueError(f"override {key}={raw!r}: set by {study}'s grid per model; use {grid}")
    if not key.startswith("study."):
      config_sets.append(assignment)
      continue
    name = key[len("study."):]
    if name not in hints:
      raise ValueError(f"override {key!r}: unknown study setting; known: {sorted(hints)}")
    values[name] = (parse or (lambda n, r, a, k: configs.parse_value(r, a, k)))(name, raw, hints[name], key)
  return config_sets, values


def check_applies(set_values: dict[str, Any], unused: dict[str, str]) -> None:
  """``ValueError`` naming the first study setting the user set (``set_values``) that ``unused`` (its settings'
  ``{field: why it does nothing}``) says would be ignored."""
  for name, value in set_values.items():
    if name in unused:
      raise ValueError(f"study.{name}={value!r}: {unused[name]}")


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
