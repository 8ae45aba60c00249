"""Study 2 — head utilization on in-context sparse regression (Chen, Zhao & Zou, arXiv 2408.04532; protocol in
shared/studies.md).

A preset is a base ``jaxicl.configs.Config`` plus ``StudySettings`` (the σ × L × H grid and the analysis settings);
each (L, H) model trains as one ``jaxicl.train`` program with every σ and seed inside it, in a resumable workdir.

    from jaxicl.studies.head_utilization import configure, main
    p = configure("quick", ["train.steps=2000", "study.noise_stds=0.1,0.5"])    # inspect: p.config, p.study
    summary = main("quick", "results/hu", overrides=["study.noise_stds=0.1,0.5"])  # or: jaxicl reproduce ...
"""

from jaxicl.studies import lazy_exports

__all__ = ["PRESETS", "Preset", "StudySettings", "configure", "main"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "run"))
