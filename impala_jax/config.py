"""Frozen, self-validating configuration. Built from flags only in `experiments/`.

Defaults are the paper's Atari settings (Espeholt et al. 2018, Table G.1) wherever the paper
gives one.
"""

import dataclasses
import os
from typing import Optional, Tuple

_REDUCTIONS = ("sum", "mean")
_TORSOS = ("shallow", "deep", "mlp")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """One EnvPool batched environment, owned by one actor thread.

  Attributes:
    env_id: an EnvPool task id, e.g. "Pong-v5", "CartPole-v1", "HalfCheetah-v4".
    num_envs: environments in the pool.
    batch_size: environments returned by each `recv()`; < num_envs makes EnvPool asynchronous
      (the rest keep stepping while the agent thinks). None means num_envs.
    num_threads: EnvPool worker threads; 0 lets EnvPool decide.
    seed: EnvPool seed; actor thread i adds i * num_envs so pools differ.
    max_episode_steps: time limit (truncation), None for the task's default.
    episodic_life, reward_clip, noop_max, stack_num, frame_skip, repeat_action_probability:
      Atari only (ignored elsewhere); the defaults are the paper's settings.
  """

  env_id: str = "Pong-v5"
  num_envs: int = 16
  batch_size: Optional[int] = None
  num_threads: int = 0
  seed: int = 0
  max_episode_steps: Optional[int] = None
  episodic_life: bool = True
  reward_clip: bool = True
  noop_max: int = 30
  stack_num: int = 4
  frame_skip: int = 4
  repeat_action_probability: float = 0.0

  def __post_init__(self):
    _require(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}.")
    if self.batch_size is not None:
      _require(1 <= self.batch_size <= self.num_envs,
               f"env batch_size must be in [1, num_envs={self.num_envs}], got "
               f"{self.batch_size}.")
    _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}.")

  @property
  def recv_batch_size(self) -> int:
    return self.num_envs if self.batch_size is None else self.batch_size


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Attributes:
    torso: "shallow" (Mnih et al. 2016), "deep" (IMPALA ResNet, paper Fig. 3) or "mlp".
    use_lstm: add an LSTM core after the torso.
    lstm_size: LSTM hidden units.
    mlp_hidden_sizes: hidden layers of the MLP torso.
  """

  torso: str = "shallow"
  use_lstm: bool = False
  lstm_size: int = 256
  mlp_hidden_sizes: Tuple[int, ...] = (64, 64)

  def __post_init__(self):
    _require(self.torso in _TORSOS,
             f"Unknown network torso {self.torso!r}; accepted: {', '.join(_TORSOS)}.")
    _require(self.lstm_size >= 1, f"lstm_size must be >= 1, got {self.lstm_size}.")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The IMPALA loss (paper §4.2) and V-trace (§4.1) coefficients.

  `reduction` is "sum" over time and batch, as in the paper (and its learning rates), or
  "mean" over the real (unmasked) transitions.
  """

  discount: float = 0.99
  baseline_cost: float = 0.5
  entropy_cost: float = 0.01
  clip_rho_threshold: Optional[float] = 1.0
  clip_c_threshold: Optional[float] = 1.0
  clip_pg_rho_threshold: Optional[float] = 1.0
  lambda_: float = 1.0
  reduction: str = "sum"

  def __post_init__(self):
    _require(0.0 <= self.discount <= 1.0, f"discount must be in [0, 1], got {self.discount}.")
    _require(0.0 <= self.lambda_ <= 1.0, f"lambda_ must be in [0, 1], got {self.lambda_}.")
    _require(self.reduction in _REDUCTIONS,
             f"Unknown loss reduction {self.reduction!r}; accepted: {', '.join(_REDUCTIONS)}.")


def default_actor_layout(cores: Optional[int] = None) -> Tuple[int, int]:
  """(num_actor_threads, num_envs per thread) for the host's core count.

  From benchmarks/throughput.py on a 2-core machine (docs/performance.md): Pong end-to-end
  speed grows with the total number of environments (bigger inference batches, fewer Python
  steps per agent step) and with one actor thread per core: 2 threads × 32 envs was the
  fastest layout tried. The thread count follows the cores, capped where one learner can no
  longer keep up on a CPU-only host; XLA's own flags made no measurable difference.
  """
  cores = cores or os.cpu_count() or 1
  return max(1, min(cores, 8)), 32


_OPTIMIZERS = ("rmsprop", "adam")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """RMSProp as in the paper (TF semantics: ε inside the square root), or Adam.

  The learning rate decays linearly to 0 over the run when `anneal_learning_rate` is set.
  """

  optimizer: str = "rmsprop"
  learning_rate: float = 6e-4
  rmsprop_decay: float = 0.99
  rmsprop_momentum: float = 0.0
  epsilon: float = 0.01
  max_grad_norm: Optional[float] = 40.0
  anneal_learning_rate: bool = True

  def __post_init__(self):
    _require(self.optimizer in _OPTIMIZERS,
             f"Unknown optimizer {self.optimizer!r}; accepted: {', '.join(_OPTIMIZERS)}.")
    _require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}.")
    if self.max_grad_norm is not None:
      _require(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole training run: what `experiments/` builds from flags and `runtime.train` runs.

  Attributes:
    env: one actor thread's EnvPool (each of `num_actor_threads` threads owns one).
    network, loss, optimizer: see their classes.
    num_actor_threads: actor threads, each stepping its own EnvPool.
    unroll_length: T, agent steps per unroll (each unroll carries T+1 observations).
    batch_size: unrolls per learner update, split evenly over the local devices.
    queue_capacity: unrolls the actor→learner queue holds before actors block.
    inference_batch_wait_ms: how long the inference server waits for more requests after the
      first one arrives before running a batch (SEED's dynamic batching window).
    total_env_steps: stop after the learner has consumed this many agent steps.
    seed: seeds parameters, action sampling and the environments.
    logdir: run directory (metrics.csv, TensorBoard events, checkpoints/).
    resume: continue from the latest checkpoint in `logdir`.
    checkpoint_interval_minutes: also written at exit.
    log_interval_seconds: seconds between metric rows.
  """

  env: EnvConfig = EnvConfig()
  network: NetworkConfig = NetworkConfig()
  loss: LossConfig = LossConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  num_actor_threads: int = 2
  unroll_length: int = 20
  batch_size: int = 32
  queue_capacity: int = 64
  inference_batch_wait_ms: float = 1.0
  total_env_steps: int = 50_000_000
  seed: int = 0
  logdir: str = "runs/impala"
  resume: bool = False
  checkpoint_interval_minutes: float = 10.0
  log_interval_seconds: float = 10.0

  def __post_init__(self):
    _require(self.num_actor_threads >= 1,
             f"num_actor_threads must be >= 1, got {self.num_actor_threads}.")
    _require(self.unroll_length >= 1, f"unroll_length must be >= 1, got {self.unroll_length}.")
    _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
    _require(self.queue_capacity >= self.batch_size,
             f"queue_capacity ({self.queue_capacity}) must be >= batch_size "
             f"({self.batch_size}), or the learner could never fill a batch.")
    _require(self.total_env_steps >= 1,
             f"total_env_steps must be >= 1, got {self.total_env_steps}.")
    _require(self.inference_batch_wait_ms >= 0,
             f"inference_batch_wait_ms must be >= 0, got {self.inference_batch_wait_ms}.")

  @property
  def steps_per_update(self) -> int:
    """Agent steps the learner consumes per update."""
    return self.batch_size * self.unroll_length

  @property
  def total_updates(self) -> int:
    return max(1, self.total_env_steps // self.steps_per_update)

  @property
  def total_envs(self) -> int:
    return self.num_actor_threads * self.env.num_envs

  def check_devices(self, num_devices: int) -> None:
    """Fails early when the batch can't be split evenly over the learner devices."""
    _require(self.batch_size % num_devices == 0,
             f"batch_size={self.batch_size} is not divisible by the {num_devices} local "
             f"devices; use a batch size that is a multiple of {num_devices}.")
