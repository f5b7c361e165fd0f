"""The learner's settings: the objective and its correction, PopArt, the optimizer.

Re-exported by `impala_jax.config` (`config.LossConfig`, ...), where a run's `TrainConfig`
holds them. The objectives' own settings and defaults (the paper's, Table G.1) are defined once
in `rl.objectives` and `rl.popart`; these configs take their defaults from there.
"""

import dataclasses
from typing import Optional

from impala_jax.config_checks import check_one_of
from impala_jax.config_checks import require as _require
from impala_jax.rl import corrections as rl_corrections
from impala_jax.rl import losses as rl_losses
from impala_jax.rl import objectives as rl_objectives
from impala_jax.rl import popart as rl_popart

# How the loss's per-step terms are reduced over time and batch: defined by `rl.losses`.
REDUCTIONS = rl_losses.REDUCTIONS
# The off-policy corrections of the paper's ablation (§5.3, Table 2), V-trace first: defined by
# `rl.corrections`.
CORRECTIONS = rl_corrections.CORRECTIONS
# Optimizers (`learning.optimizers.make_optimizer`).
OPTIMIZERS = ("rmsprop", "adam")
# Policy objectives (`learning.update.make_loss_fn`): IMPALA's V-trace policy gradient, or
# APPO's PPO-clipped surrogate on V-trace advantages.
OBJECTIVES = ("impala", "appo")
# What APPO's ratio r = π/π_ref is taken against (`rl.objectives.appo_loss`): the behaviour
# policy that acted (Sample Factory), or the learner's policy at the start of the update
# (decoupled PPO, Hilton et al. 2021).
PPO_RATIOS = ("behaviour", "proximal")


def check_optimizer(name: str) -> None:
  """ValueError unless `name` is one of `OPTIMIZERS`."""
  check_one_of("optimizer", name, OPTIMIZERS)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The objective, the discount, and the objective's settings (V-trace, paper §4.1; the
  loss, §4.2). The objective's settings and their defaults (the paper's) are defined once, in
  `rl.objectives.ImpalaSettings` and `AppoSettings`: these fields take their defaults from
  there, and `settings()` hands them back as the objective's settings.

  Attributes:
    objective: "impala" (V-trace policy gradient, paper §4.2) or "appo" (the PPO clipped
      surrogate on V-trace advantages, see `rl.objectives.appo_loss`).
    discount: γ (`learning.update.learner_inputs`).
    baseline_cost, entropy_cost, clip_rho_threshold, clip_c_threshold, clip_pg_rho_threshold,
      lambda_, reduction: see `rl.objectives.ImpalaSettings`.
    clip_epsilon, normalize_advantages: APPO's, see `rl.objectives.AppoSettings` (checked
      for either objective).
    ppo_ratio: APPO's ratio r: π/μ against the behaviour policy ("behaviour"), or π/π_prox
      against the policy at the start of the update ("proximal", decoupled PPO).
    correction: the off-policy correction (paper §5.3, Table 2), one of `CORRECTIONS`; see
      `rl.objectives.ImpalaSettings`. APPO takes only "vtrace"; "epsilon" needs discrete
      actions, which `runtime.training.TrainingRun` checks against the environment.
  """

  objective: str = "impala"
  discount: float = 0.99
  baseline_cost: float = rl_objectives.AppoSettings.baseline_cost
  entropy_cost: float = rl_objectives.AppoSettings.entropy_cost
  clip_rho_threshold: Optional[float] = rl_objectives.AppoSettings.clip_rho_threshold
  clip_c_threshold: Optional[float] = rl_objectives.AppoSettings.clip_c_threshold
  clip_pg_rho_threshold: Optional[float] = rl_objectives.AppoSettings.clip_pg_rho_threshold
  lambda_: float = rl_objectives.AppoSettings.lambda_
  reduction: str = rl_objectives.AppoSettings.reduction
  clip_epsilon: float = rl_objectives.AppoSettings.clip_epsilon
  normalize_advantages: bool = rl_objectives.AppoSettings.normalize_advantages
  ppo_ratio: str = "behaviour"
  correction: str = rl_objectives.AppoSettings.correction

  def __post_init__(self):
    check_one_of("objective", self.objective, OBJECTIVES)
    _require(0.0 <= self.discount <= 1.0, f"discount must be in [0, 1], got {self.discount}.")
    check_one_of("ppo_ratio", self.ppo_ratio, PPO_RATIOS)
    self.settings()  # The objective's settings: the correction is checked against it here.
    # APPO's own settings are checked for either objective; APPO's one correction is APPO's.
    self._settings(rl_objectives.AppoSettings, correction=rl_objectives.AppoSettings.correction)

  def _settings(self, settings_class, **overrides):
    return settings_class(**{field.name: overrides.get(field.name, getattr(self, field.name))
                             for field in dataclasses.fields(settings_class)})

  def settings(self) -> rl_objectives.ImpalaSettings:
    """The objective's settings: `rl.objectives.AppoSettings` for "appo", else
    `ImpalaSettings`."""
    return self._settings(rl_objectives.AppoSettings if self.objective == "appo" else
                          rl_objectives.ImpalaSettings)


@dataclasses.dataclass(frozen=True)
class PopArtConfig:
  """PopArt (`rl.popart`; Hessel et al. 2019): the value head learns normalised values, one per
  task, and the baseline and advantages are measured in units of each task's σ. β and σ's
  bounds take their defaults from `rl.popart.PopArtSettings`, their one source.

  Attributes:
    enabled: learn PopArt's normalised values; False: one plain value, the paper's IMPALA.
    step_size: β, ART's step size per value target.
    scale_lb, scale_ub: σ_min and σ_max.
    num_tasks: K, the tasks with statistics and a value output of their own: the number of
      games in `EnvConfig.env_id` (`TrainConfig` checks it when PopArt is on).
  """

  enabled: bool = False
  step_size: float = rl_popart.PopArtSettings.step_size
  scale_lb: float = rl_popart.PopArtSettings.scale_lb
  scale_ub: float = rl_popart.PopArtSettings.scale_ub
  num_tasks: int = 1

  def __post_init__(self):
    _require(self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}.")
    self.settings()  # Checks β and the bounds, whether PopArt is on or not.

  def settings(self) -> rl_popart.PopArtSettings:
    return rl_popart.PopArtSettings(step_size=self.step_size, scale_lb=self.scale_lb,
                                    scale_ub=self.scale_ub)

  @property
  def network_tasks(self) -> Optional[int]:
    """The value head's outputs (`networks.make_network`'s `num_tasks`): one per task with
    PopArt, None (one plain value) without."""
    return self.num_tasks if self.enabled else None


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Global-norm clipping, then RMSProp (the paper's) or Adam, with a linear learning-rate decay.

  Attributes:
    optimizer: one of `OPTIMIZERS`.
    learning_rate: the initial learning rate.
    rmsprop_decay, rmsprop_momentum: RMSProp's ms decay and momentum (paper: 0.99, 0).
    rmsprop_epsilon: RMSProp's ε (paper: 0.01).
    rmsprop_eps_in_sqrt: where ε goes. True divides by √(ms + ε), TensorFlow's RMSProp and so
      the paper's: with ε = 0.01 the denominator is at least 0.1, and weights whose gradients
      are small move 2–5× slower. False divides by √ms + ε, PyTorch's RMSProp, used by
      torchbeast and Cleanba (optax's `eps_in_sqrt`, see optax issue #532). Default False.
    adam_epsilon: Adam's ε, its own setting (1e-5 as in CleanRL, baselines and Sample
      Factory): RMSProp's 0.01 would shrink Adam's steps 10–100× on a mean-reduced loss.
    max_grad_norm: global gradient-norm clip (paper: 40); None disables it.
    anneal_learning_rate: decay the learning rate linearly to 0 ...
    anneal_env_steps: ... over this many agent steps: the training budget the schedule is
      written for (paper: 200M frames = 50M agent steps), not the length of this run, so that
      a short run learns at nearly the full rate as the references' long runs do at its
      stage (scalable_agent decays over 1e9 frames, torchbeast over 30M steps, Cleanba over
      50M).
  """

  optimizer: str = "rmsprop"
  learning_rate: float = 6e-4
  rmsprop_decay: float = 0.99
  rmsprop_momentum: float = 0.0
  rmsprop_epsilon: float = 0.01
  rmsprop_eps_in_sqrt: bool = False
  adam_epsilon: float = 1e-5
  max_grad_norm: Optional[float] = 40.0
  anneal_learning_rate: bool = True
  anneal_env_steps: int = 50_000_000

  def __post_init__(self):
    check_optimizer(self.optimizer)
    _require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}.")
    _require(self.rmsprop_epsilon > 0, f"rmsprop_epsilon must be > 0, got {self.rmsprop_epsilon}.")
    _require(self.adam_epsilon > 0, f"adam_epsilon must be > 0, got {self.adam_epsilon}.")
    _require(self.anneal_env_steps >= 1,
             f"anneal_env_steps must be >= 1, got {self.anneal_env_steps}.")
    if self.max_grad_norm is not None:
      _require(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}.")
