"""Study 1 — multi-head superiority (Cui et al., arXiv 2401.17426; protocol in shared/studies.md).

One-layer softmax attention trained on in-context linear regression: D·L vs D for single vs multi-head against
the theory's constants C_single and C_multi (``jaxicl.theory``), heads vs embedding dimension (p/h < d),
scenarios (noisy labels, correlated features, local examples, prior knowledge), read-in / lazy-training
ablations and the learned head parameters vs the theory's optimum.

    from jaxicl.studies.multihead import main
    summary = main(preset="quick", out="results/multihead_quick")   # or: jaxicl reproduce multihead ...

Modules: ``presets`` (tiny / quick / full), ``run`` (``main``: training, evaluation, tables, summary),
``heads`` (per-head kernel parameters of a trained model), ``analysis`` (theory lines), ``plots`` (figures).
"""

from jaxicl.studies import lazy_exports

__all__ = ["PRESETS", "Preset", "StudySettings", "configure", "main"]
__getattr__ = lazy_exports(__name__, {**dict.fromkeys(__all__, "presets"), "main": "run"})
