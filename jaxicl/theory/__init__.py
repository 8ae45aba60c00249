"""Analysis module: exact O(1/D) constants of one-layer softmax attention for in-context regression.

Implements the team's derivation (shared/theory.md) and extends it by the same recipe. Conventions (each a
parameter): x ~ N(0, Σ) (Σ = I by default), θ ~ N(θ0, τ²I) with τ² = 1/d by default (E||θ − θ0||² = 1),
y = θᵀx + ε with ε ~ N(0, σ²), loss against the noise-free θᵀx, D context examples, kernel predictor
ŷ = Σ_k c_k Σ_i y_i softmax_i(x_iᵀA_k x / T). Nothing here imports training code.

Modules: ``constants`` (isotropic closed forms and the h-head optimum), ``kernels`` (general matrix kernels,
closed-form Gaussian integrals), ``scenarios`` (correlated features, local examples, prior knowledge, heads
below full rank), ``montecarlo`` (JAX Monte Carlo of any kernel predictor), ``cli`` (``jaxicl theory``).
"""

from jaxicl.theory.common import DataModel, ScenarioResult, TheoryResult, float64
from jaxicl.theory.constants import (HeadsOptimum, SingleHeadOptimum, c_multi, c_single, default_w_min, g,
                                     head_constant, head_gram, optimal_heads, optimal_output_weights, pair_constant,
                                     signal_variance, single_head_constant)
from jaxicl.theory.kernels import KernelAsymptotics, best_output_weights, kernel_asymptotics
from jaxicl.theory.montecarlo import MCResult, mc_d_times_loss, mc_loss
from jaxicl.theory.scenarios import (RankLimitedResult, block_pair_constant, correlated_features, isotropic,
                                     local_examples, local_gram, local_optimal_output_weights, prior_knowledge,
                                     rank_limited_loss)

__all__ = [
    "DataModel", "ScenarioResult", "TheoryResult", "float64",
    "HeadsOptimum", "SingleHeadOptimum", "c_multi", "c_single", "default_w_min", "g", "head_constant", "head_gram",
    "optimal_heads", "optimal_output_weights", "pair_constant", "signal_variance", "single_head_constant",
    "KernelAsymptotics", "best_output_weights", "kernel_asymptotics",
    "MCResult", "mc_d_times_loss", "mc_loss",
    "RankLimitedResult", "block_pair_constant", "correlated_features", "isotropic", "local_examples", "local_gram",
    "local_optimal_output_weights", "prior_knowledge", "rank_limited_loss",
]
