"""D·L limit constants of the scenarios of theory.md ("same recipe"), and heads below full rank.

Every function returns single- and multi-head constants as ``TheoryResult(value, method, params, family)``;
``method`` says whether the number is a closed form, a polynomial root or a numerical optimum, ``family`` what
predictor family it is the optimum (or infimum) of. Derivations (all by the Gaussian tilt of theory.md):

* Isotropic / noisy labels: ``jaxicl.theory.constants`` with S = dτ².
* Correlated features, x ~ N(0, Σ): unbiasedness needs Σ_k c_k ΣW_k = I. One head is therefore forced to
  W = Σ⁻¹/c, and with W_k = w_k Σ⁻¹ the x-integrals reduce to chi-square ones (xᵀΣ⁻¹x ~ χ²_d): the isotropic
  formulas hold with S = E(θᵀx)² = τ² tr Σ (+ θ0ᵀΣθ0). The multi-head bound d(S + σ²) + S also holds for
  general matrices W_k (power series of the kernel; see ``kernels``). Heads with W_k ∝ I keep an O(1) loss
  τ²(tr Σ − (tr Σ²)²/tr Σ³) unless Σ ∝ I.
* Local examples, x_i = x + r·g_i (Σ = I): with ω_k = r·w_k, softmax_i(w_k x_iᵀx) tilts g to N(ω_k x, I), so
  R_k = (1 + rω_k)θᵀx and G_kl = g(ω_kω_l) with signal S' = r²S. Unbiasedness: Σ_k c_k(1 + r²w_k) = 1, so
  the plain average (w = 0, C = S' + σ²) is already unbiased. Single head: min_ω g(ω²)/(1 + rω)², whose
  stationarity condition is a quartic in ω (solved exactly). Multi-head: G ⪰ a_0 11ᵀ + a_1 ωωᵀ gives the
  infimum 1/(1/a_0 + r²/a_1) with a_0 = S' + σ², a_1 = d(S' + σ²) + S', approached by a uniform head
  (w = 0) plus a head with w → 0 (a combination of the local average and local linear attention).
* Prior knowledge, θ ~ N(θ0, τ²I): the constants depend on the prior only through S. The family that can
  use the prior is ŷ = θ0ᵀx + Σ_k c_k Σ_i (y_i − θ0ᵀx_i) softmax_i(w_k x_iᵀx) (a residual path writing θ0ᵀx
  and values shifted by θ0ᵀx_i; optimal over γ, β in ŷ = γᵀx + Σ c_k Σ (y_i − βᵀx_i)·softmax), with a free
  scale λ = Σ c_k w_k (shrinkage). Weak prior (τ² fixed): constants with S = dτ² (vs S = ||θ0||² + dτ²
  without the prior path). Strong prior (τ² = κ/D): D·L → min_λ (1−λ)²dκ + λ²C_0 = dκ·C_0/(dκ + C_0),
  C_0 the constant at S = 0 (single σ²(d+2)((d+2)/d)^(d/2), multi dσ²); without the path, C(S = ||θ0||²).
* Heads below full rank: see ``rank_limited_loss`` and ``block_pair_constant``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxicl.theory import _optim
from jaxicl.theory import constants as K
from jaxicl.theory.common import (DataModel, ScenarioResult, TheoryResult, check_d, check_nonneg, fail,
                                  resolve_tau2)


def _single_multi(d: int, noise_var: float, signal: float) -> tuple[K.SingleHeadOptimum, float]:
  """(C_single optimum, C_multi) at signal variance S (via τ² = S/d)."""
  tau2 = signal / d
  return K.c_single(d, noise_var, tau2), K.c_multi(d, noise_var, tau2)


def isotropic(d: int, noise_var: float, tau2: float | None = None, temperature: float = 1.0) -> ScenarioResult:
  """Noisy labels, x ~ N(0, I): C_single (s*, w* = T·√s*) and C_multi = d(S + σ²) + S, S = dτ² (closed forms)."""
  d = check_d(d)
  sigma2 = check_nonneg(noise_var, "noise_var")
  signal = d * resolve_tau2(d, tau2)
  single, multi = _single_multi(d, sigma2, signal)
  return ScenarioResult(
      "isotropic",
      TheoryResult(single.constant, "closed form", {"s": single.s, "w": temperature * single.w, "c": 1 / single.w,
                                                     "signal": signal}, "one head, A = wI"),
      TheoryResult(multi, "closed form",
                   {"signal": signal, "attained": "limit w -> 0 of w_1 = -w_2 = w, c_1 = -c_2 = 1/(2w)"},
                   "any h >= 2 full-rank heads (infimum)"))


def correlated_features(d: int, noise_var: float, cov: str = "equicorrelated", rho: float = 0.5,
                        cov_matrix=None, tau2: float | None = None) -> ScenarioResult:
  """x ~ N(0, Σ) (``cov``: equicorrelated (1−ρ)I + ρ11ᵀ, toeplitz ρ^|i−j|, identity, or given ``cov_matrix``).

  Closed forms: the isotropic constants at S = τ² tr Σ with kernels W ∝ Σ⁻¹ (forced for one head).
  extras["isotropic_kernel_floor"]: the O(1) loss floor of heads with W_k ∝ I.
  """
  d = check_d(d)
  sigma2 = check_nonneg(noise_var, "noise_var")
  if cov_matrix is not None:
    sigma = DataModel(d=d, cov=cov_matrix).cov_matrix()
  else:
    from jaxicl import tasks  # config dataclass and its covariance helper only

    sigma = tasks.covariance(tasks.TaskConfig(d=d, cov=cov, rho=rho))
  model = DataModel(d=d, noise_var=sigma2, tau2=tau2, cov=sigma)
  signal = model.signal()
  single, multi = _single_multi(d, sigma2, signal)
  t2 = model.tau2_value
  tr1, tr2, tr3 = (np.trace(np.linalg.matrix_power(sigma, k)) for k in (1, 2, 3))
  floor = t2 * (tr1 - tr2**2 / tr3)
  return ScenarioResult(
      "correlated_features",
      TheoryResult(single.constant, "closed form", {"s": single.s, "w": single.w, "c": 1 / single.w,
                                                     "kernel": "w * inv(Sigma)", "signal": signal},
                   "one head; unbiasedness forces W = inv(Sigma)/c"),
      TheoryResult(multi, "closed form", {"signal": signal, "kernel": "+-w * inv(Sigma), w -> 0"},
                   "any h >= 2 heads with general matrices W_k (infimum)"),
      {"isotropic_kernel_floor": TheoryResult(float(floor), "closed form", {"lambda": tr2 / tr3},
                                              "heads with W_k = w_k I: O(1) loss floor, not a D*L constant"),
       "cov": sigma})


# ----------------------------------------------------------------------------------------------- local examples


def local_gram(w, d: int, noise_var: float, radius: float, tau2: float | None = None) -> np.ndarray:
  """G_kl = g(r² w_k w_l) at signal S' = r²dτ² for local examples x_i = x + r·g_i (needs r²w_k² < 1/2)."""
  d = check_d(d)
  sigma2 = check_nonneg(noise_var, "noise_var")
  r = check_nonneg(radius, "radius")
  w = np.atleast_1d(np.asarray(w, dtype=np.float64))
  omega = r * w
  if np.any(omega**2 >= 0.5):
    fail("w", w.tolist(), "local heads need (r*w_k)^2 < 1/2")
  return K.g_function(np.outer(omega, omega), d, sigma2, r * r * d * resolve_tau2(d, tau2))


def local_optimal_output_weights(w, d: int, noise_var: float, radius: float,
                                 tau2: float | None = None) -> tuple[np.ndarray, float]:
  """Best c for local heads w under Σ_k c_k(1 + r²w_k) = 1: c = G⁻¹b/(bᵀG⁻¹b), constant 1/(bᵀG⁻¹b)."""
  gram = local_gram(w, d, noise_var, radius, tau2)
  b = 1.0 + float(radius) ** 2 * np.atleast_1d(np.asarray(w, dtype=np.float64))
  z = np.linalg.lstsq(gram, b, rcond=1e-13)[0]
  c = z / (b @ z)
  return c, float(c @ gram @ c)


def local_examples(d: int, noise_var: float, radius: float, tau2: float | None = None,
                   w_min: float | None = None) -> ScenarioResult:
  """Local examples x_i = x + r·g_i, x ~ N(0, I_d) (see the module docstring).

  single: exact minimiser of g(ω²)/(1 + rω)² over ω = r·w (real roots of a quartic); multi: closed-form
  infimum; its ``params`` give a finite realisation (w = (0, w_min), optimal c) and that constant.
  """
  d = check_d(d)
  sigma2 = check_nonneg(noise_var, "noise_var")
  r = check_nonneg(radius, "radius")
  sig = r * r * d * resolve_tau2(d, tau2)
  a0 = sig + sigma2
  a1 = d * (sig + sigma2) + sig
  if a0 == 0.0:
    zero = TheoryResult(0.0, "closed form", {}, "degenerate: no signal and no noise")
    return ScenarioResult("local_examples", zero, zero)
  m = d / 2.0 + 1.0
  p10 = 2 * a0 * (m - 1) + sig
  p12 = -2 * p10 + 2 * sig * m
  coeffs = [-r * a0, p10, r * p10 - r * (sig - 4 * a0), p12, r * p12 - r * (4 * a0 - 2 * sig)]
  roots = np.polynomial.polynomial.polyroots(coeffs)
  cands = [z.real for z in np.atleast_1d(roots) if abs(z.imag) < 1e-7 * (1 + abs(z)) and z.real**2 < 0.5
           and 1 + r * z.real != 0]
  objective = lambda om: K.g_function(om * om, d, sigma2, sig) / (1 + r * om) ** 2
  omega = min(cands, key=objective)
  w_single = omega / r if r > 0 else 0.0
  single = TheoryResult(float(objective(omega)), "polynomial root",
                        {"w": w_single, "omega": omega, "c": 1 / (1 + r * omega), "signal_local": sig},
                        "one head, A = wI (plain local average at w = 0)")
  inf_value = a0 * a1 / (a1 + r * r * a0)
  w_min = K.default_w_min(d) if w_min is None else float(w_min)
  params = {"a0": a0, "a1": a1, "attained": "limit w -> 0 of heads w = (0, w)"}
  if r > 0:
    c_fin, value_fin = local_optimal_output_weights([0.0, w_min], d, sigma2, r, tau2)
    params.update({"finite_w": [0.0, w_min], "finite_c": c_fin, "finite_constant": value_fin})
  multi = TheoryResult(inf_value, "closed form", params, "any h >= 2 heads A_k = w_k I (infimum)")
  return ScenarioResult("local_examples", single, multi, {"plain_average": TheoryResult(a0, "closed form", {},
                                                                                          "uniform weights (w = 0)")})


# -------------------------------------------------------------------------------------------- prior knowledge


def prior_knowledge(d: int, noise_var: float, prior_mean_norm2: float, tau2: float | None = None,
                    regime: str = "weak", kappa: float = 1.0) -> ScenarioResult:
  """θ ~ N(θ0, τ²I) with ||θ0||² = ``prior_mean_norm2`` (closed forms; see the module docstring).

  regime ``"weak"``: τ² fixed (default 1/d): constants with the prior path at S = dτ²;
  regime ``"strong"``: τ² = κ/D (``tau2`` ignored): D·L → dκ·C_0/(dκ + C_0) with shrinkage λ* = dκ/(dκ + C_0).
  extras: the same heads without the prior path (S = ||θ0||² + dτ², resp. ||θ0||²).
  """
  d = check_d(d)
  sigma2 = check_nonneg(noise_var, "noise_var")
  n2 = check_nonneg(prior_mean_norm2, "prior_mean_norm2")
  family = "ŷ = θ0ᵀx + Σ_k c_k Σ_i (y_i − θ0ᵀx_i) softmax_i(w_k x_iᵀx)"
  if regime == "weak":
    signal = d * resolve_tau2(d, tau2)
    single, multi = _single_multi(d, sigma2, signal)
    s_no, m_no = _single_multi(d, sigma2, n2 + signal)
    res_single = TheoryResult(single.constant, "closed form", {"s": single.s, "w": single.w, "signal": signal},
                              "one head, " + family)
    res_multi = TheoryResult(multi, "closed form", {"signal": signal}, "h >= 2 heads, " + family + " (infimum)")
  elif regime == "strong":
    kap = check_nonneg(kappa, "kappa")
    s0, m0 = _single_multi(d, sigma2, 0.0)

    def shrunk(c0: float) -> tuple[float, float]:
      total = d * kap + c0
      return (d * kap * c0 / total, d * kap / total) if total > 0 else (0.0, 1.0)

    v1, l1 = shrunk(s0.constant)
    vm, lm = shrunk(m0)
    res_single = TheoryResult(v1, "closed form", {"lambda": l1, "C0": s0.constant, "s": s0.s, "w": s0.w},
                              "one head, " + family + ", tau2 = kappa/D")
    res_multi = TheoryResult(vm, "closed form", {"lambda": lm, "C0": m0},
                             "h >= 2 heads, " + family + ", tau2 = kappa/D (infimum)")
    s_no, m_no = _single_multi(d, sigma2, n2)
  else:
    fail("regime", regime, "must be 'weak' or 'strong'")
  extras = {"single_without_prior_path": TheoryResult(s_no.constant, "closed form", {"s": s_no.s},
                                                      "one head, plain values"),
            "multi_without_prior_path": TheoryResult(m_no, "closed form", {}, "h >= 2 heads, plain values")}
  return ScenarioResult(f"prior_knowledge_{regime}", res_single, res_multi, extras)


# ------------------------------------------------------------------------------------- heads below full rank


def block_pair_constant(s: float, block_sizes: tuple[int, int], noise_var: float, tau2: float | None = None) -> float:
  """D·L constant of two heads on complementary coordinate blocks (sizes r_1 + r_2 = d): W_1 = wP_1, W_2 = −wP_2,
  c = (1/w, −1/w), s = w² (closed form; unbiased and zero-sum):

      C = (S+σ²)[(1−2s)^(−r_1/2) + (1−2s)^(−r_2/2) − 2]/s + τ²[r_1(1−2s)^(−r_1/2−1) + r_2(1−2s)^(−r_2/2−1)]
        = C_multi + O(s)   (the full-rank pair is C_multi + O(s²)).
  """
  r1, r2 = (check_d(r, "block_sizes") for r in block_sizes)
  d = r1 + r2
  sigma2 = check_nonneg(noise_var, "noise_var")
  t2 = resolve_tau2(d, tau2)
  if not 0.0 < s < 0.5:
    fail("s", s, "must lie in (0, 1/2)")
  a = d * t2 + sigma2
  base = 1.0 - 2.0 * s
  first = sum(np.expm1(-r / 2.0 * np.log1p(-2.0 * s)) for r in (r1, r2)) / s
  return float(a * first + t2 * (r1 * base ** (-r1 / 2 - 1) + r2 * base ** (-r2 / 2 - 1)))


@dataclasses.dataclass(frozen=True)
class RankLimitedResult:
  """Best leading-order loss of h heads of rank r = p/h on coordinate blocks, at context size D.

  Attributes:
    d, p, h, r, D: the configuration (r = p // h).
    blocks: coordinate blocks (tuples of indices); head k uses blocks[k % len(blocks)].
    bias_floor: (1 − covered/d)·S with covered = min(d, p): the D → ∞ loss of the family (closed form).
    loss: min over (c, w) of bias(c, w) + cᵀG(w)c/D (derived leading-order loss; c exact, w numerical).
    c, w: the optimiser (kernels W_k = w_k P_{block(k)}).
    full_rank_loss: the same optimum for h full-rank heads (r >= d), same D and |w| bounds.
    single_loss: the same optimum for one full-rank head.
    mc_mean, mc_se: Monte Carlo loss of the optimiser (c, W) at D (None unless n_prompts > 0).
    method: how the numbers were obtained.
  """

  d: int
  p: int
  h: int
  r: int
  D: int
  blocks: tuple
  bias_floor: float
  loss: float
  c: np.ndarray
  w: np.ndarray
  full_rank_loss: float
  single_loss: float
  mc_mean: float | None
  mc_se: float | None
  method: str

  @property
  def d_times_loss(self) -> float:
    return self.D * self.loss

  def kernels(self) -> np.ndarray:
    """W_k = w_k P_{block(k)} [h, d, d]."""
    return _block_kernels(self.d, self.blocks, self.w)

  def to_dict(self) -> dict:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out.update({"d_times_loss": self.d_times_loss, "full_rank_d_times_loss": self.D * self.full_rank_loss,
                "single_d_times_loss": self.D * self.single_loss, "blocks": [list(b) for b in self.blocks],
                "c": self.c.tolist(), "w": self.w.tolist()})
    return out


def _block_kernels(d: int, blocks: tuple, w: np.ndarray) -> np.ndarray:
  out = np.zeros((len(w), d, d))
  for k, wk in enumerate(w):
    idx = list(blocks[k % len(blocks)])
    out[k, idx, idx] = wk
  return out


_PAD = 8


def block_pieces(w, overlap, sizes, d, noise, tau2, xp=np):
  """Closed-form (M, mu, m00, G) of ``kernels.quadratic_pieces`` for block kernels W_k = w_k P_{B_k}, Σ = I,
  θ0 = 0, where blocks are equal or disjoint: with t = w_k w_l and n_kl = |B_k ∩ B_l|,
  G_kl = (dτ² + σ²)(1−2t)^(−n/2) + nτ²t(1−2t)^(−n/2−1), M_kl = τ²t·n_kl, mu_k = τ²w_k|B_k|, m00 = dτ²."""
  t = xp.outer(w, w)
  base = 1.0 - 2.0 * t
  gram = (d * tau2 + noise) * base ** (-overlap / 2) + overlap * tau2 * t * base ** (-overlap / 2 - 1)
  return tau2 * t * overlap, tau2 * w * sizes, d * tau2, gram


def _block_loss(u, aux):
  """Leading-order L(D) = min_c bias + cᵀGc/D = m00 − muᵀ(M + G/D)⁻¹mu of the active block heads (jnp)."""
  active = aux["active"]
  w = active * K._bounded_w(u, aux["sign"], aux["lo"], aux["hi"])
  m_mat, mu, m00, gram = block_pieces(w, aux["overlap"], aux["size"], aux["d"], aux["noise"], aux["tau2"], xp=jnp)
  q_mat = jnp.outer(active, active) * (m_mat + gram / aux["D"])
  q_mat = q_mat + 1e-10 * jnp.trace(q_mat) * jnp.eye(w.shape[0]) + jnp.diag(1.0 - active)  # ridge: coinciding heads
  q_vec = active * mu
  value = m00 - q_vec @ jnp.linalg.solve(q_mat, q_vec)
  return jnp.where(value >= 0, value, jnp.inf)  # a negative value can only be round-off


def _optimise_blocks(d: int, blocks: tuple, h: int, sigma2: float, t2: float, D: int, w_min: float, w_max: float,
                     n_starts: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
  """(c, w, loss) minimising the leading-order loss of h heads on ``blocks`` (head k on block k mod #blocks)."""
  block_of = np.array([k % len(blocks) for k in range(h)] + [0] * (_PAD - h))
  sizes = np.array([len(blocks[b]) for b in block_of], dtype=np.float64)
  overlap = (block_of[:, None] == block_of[None, :]) * sizes[None, :]
  active = np.array([1.0] * h + [0.0] * (_PAD - h))
  rng = np.random.default_rng(seed)
  signs = rng.choice([-1.0, 1.0], size=(n_starts, _PAD))
  signs[0] = 1.0
  signs[1::2] = np.where(np.arange(_PAD) % 2 == 0, 1.0, -1.0)  # half the starts alternate signs
  aux = {"sign": signs, "active": np.tile(active, (n_starts, 1)), "overlap": np.tile(overlap, (n_starts, 1, 1)),
         "size": np.tile(sizes, (n_starts, 1))}
  aux.update({k: np.full(n_starts, float(v)) for k, v in
              {"d": d, "noise": sigma2, "tau2": t2, "lo": w_min, "hi": w_max, "D": D}.items()})
  us, _ = _optim.minimise(_block_loss, rng.normal(0.0, 1.5, size=(n_starts, _PAD)), aux)
  best = None
  for k in range(n_starts):  # re-evaluate every start exactly (pseudo-inverse), keep the best
    w = K._bounded_w(us[k], signs[k], w_min, w_max, xp=np)[:h]
    m_mat, mu, m00, gram = block_pieces(w, overlap[:h, :h], sizes[:h], d, sigma2, t2)
    q_mat = m_mat + gram / D
    c = np.linalg.lstsq(q_mat, mu, rcond=1e-13)[0]
    value = float(m00 - 2 * c @ mu + c @ q_mat @ c)
    if np.isfinite(value) and (best is None or value < best[2]):
      best = (c, w, value)
  return best


def rank_limited_loss(d: int, p: int, h: int, noise_var: float, D: int, tau2: float | None = None, *,
                      w_min: float | None = None, w_max: float = 0.7, n_starts: int = 24, n_prompts: int = 0,
                      seed: int = 0) -> RankLimitedResult:
  """Best loss at context size D of h heads whose kernels have rank r = p/h (x ~ N(0, I), θ ~ N(0, τ²I)).

  Family (an assumption, stated): kernels W_k = w_k P_k with P_k the projector on a block of r consecutive
  coordinates; the first min(d, p) coordinates are cut into blocks and head k uses block k mod #blocks;
  |w_k| ∈ [w_min, w_max]; any c (so shrinkage is allowed). Loss: the derived leading-order
  L(D) = bias(c, w) + cᵀG(w)c/D (``kernels`` module: limit bias plus delta-method variance, block integrals in
  closed form, ``block_pieces``; the O(bias/D) cross term and o(1/D) are dropped), minimised exactly over c and
  numerically over w (JAX multi-start damped Newton). ``full_rank_loss`` and ``single_loss`` are the same
  optimum for h, resp. 1, full-rank heads. With ``n_prompts > 0`` the optimiser is evaluated by Monte Carlo.

  What it shows: with p < d a bias (1 − p/d)·S remains; with h = 1 and r < d a bias (1 − r/d)·S; with
  p >= d and h >= 2, heads on complementary blocks with zero-sum output weights reach D·L → C_multi as
  w → 0 (one head per block pays O(w²) over C_multi where a full-rank pair pays O(w⁴)).
  """
  d = check_d(d)
  p = check_d(p, "p")
  h = check_d(h, "heads")
  D = check_d(D, "D")
  sigma2 = check_nonneg(noise_var, "noise_var")
  if p % h:
    fail("p", p, f"must be divisible by heads h={h}")
  if h > _PAD:
    fail("heads", h, f"rank_limited_loss supports at most {_PAD} heads")
  t2 = resolve_tau2(d, tau2)
  w_min = K.default_w_min(d) if w_min is None else float(w_min)
  if not 0.0 < w_min < w_max < math.sqrt(0.5):
    fail("w_min, w_max", (w_min, w_max), "need 0 < w_min < w_max < 1/sqrt(2)")
  r = p // h
  size = min(r, d)
  covered = min(d, p)
  blocks = tuple(tuple(range(j, min(j + size, covered))) for j in range(0, covered, size))
  opt = dict(sigma2=sigma2, t2=t2, D=D, w_min=w_min, w_max=w_max, n_starts=n_starts, seed=seed)
  c, w, loss = _optimise_blocks(d, blocks, h, **opt)
  full = tuple([tuple(range(d))])
  full_loss = loss if blocks == full else _optimise_blocks(d, full, h, **opt)[2]
  single_loss = _optimise_blocks(d, full, 1, **opt)[2]
  method = ("bias_floor: closed form; loss, full_rank_loss, single_loss: derived leading-order formula "
            "bias + c'Gc/D, c exact, w numerical (JAX multi-start damped Newton)")
  mc_mean = mc_se = None
  if n_prompts > 0:
    from jaxicl.theory.montecarlo import mc_loss

    res = mc_loss(DataModel(d=d, noise_var=sigma2, tau2=t2), c, _block_kernels(d, blocks, w), D,
                  n_prompts=n_prompts, seed=seed)
    mc_mean, mc_se = float(res.mean), float(res.se)
    method += f"; mc: Monte Carlo of the optimiser at D ({res.n_prompts} prompts)"
  return RankLimitedResult(d=d, p=p, h=h, r=r, D=D, blocks=blocks, bias_floor=(1 - covered / d) * d * t2,
                           loss=loss, c=c, w=w, full_rank_loss=full_loss, single_loss=single_loss,
                           mc_mean=mc_mean, mc_se=mc_se, method=method)
