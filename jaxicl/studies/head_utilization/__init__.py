"""Study 2 — head utilization on in-context sparse regression (Chen, Zhao & Zou, arXiv 2408.04532; protocol in
shared/studies.md).

A preset is a base ``jaxicl.configs.Config`` plus ``StudySettings`` (the σ × L × H grid and the analysis settings);
each (L, H) model trains as one ``jaxicl.train`` program with every σ and seed inside it, in a resumable workdir.

    from jaxicl.studies.head_utilization import configure, main
    p = configure("quick", ["train.steps=2000", "study.noise_stds=0.1,0.5"])    # inspect: p.config, p.study
    summary = main("quick", "results/hu", overrides=["study.noise_stds=0.1,0.5"])  # or: jaxicl reproduce ...
"""

import importlib
from typing import Any

__all__ = ["PRESETS", "Preset", "StudySettings", "configure", "main"]


def __getattr__(name: str) -> Any:
  # Imported on first use, not here: `python -m jaxicl.studies.head_utilization.run` would otherwise run a module
  # the package had already imported (runpy's RuntimeWarning).
  if name in __all__:
    return getattr(importlib.import_module(f"{__name__}.run"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
