"""Frozen, self-validating configuration. Built from flags only in `experiments/`.

Defaults are the paper's Atari settings (Espeholt et al. 2018, Table G.1) wherever the paper
gives one, except for three optimizer conventions that the paper's code inherits from
TensorFlow or ties to a run length, and that slow learning down (see `OptimizerConfig`). The
paper's exact settings are `experiments/configs/atari_paper.flags`.

Every list of accepted names lives here or in the modules it re-exports (`config_learning`,
`config_scale_out`), once: flags, validation, error messages and the modules that dispatch on a
name all read these tuples.
"""

import dataclasses
import math
import os
from typing import Optional, Tuple

from impala_jax.config_checks import check_one_of
from impala_jax.config_checks import require as _require
# The scale-out designs' settings, re-exported: `config.RemoteEnvConfig` etc.
from impala_jax.config_scale_out import MultiHostConfig
from impala_jax.config_scale_out import RemoteEnvConfig
from impala_jax.config_scale_out import TrajectoryStoreConfig
from impala_jax.config_scale_out import ValueLimits
# The learner's settings, re-exported: `config.LossConfig`, `config.OBJECTIVES` etc.
from impala_jax.config_learning import check_optimizer
from impala_jax.config_learning import CORRECTIONS
from impala_jax.config_learning import LossConfig
from impala_jax.config_learning import OBJECTIVES
from impala_jax.config_learning import OptimizerConfig
from impala_jax.config_learning import OPTIMIZERS
from impala_jax.config_learning import PopArtConfig
from impala_jax.config_learning import PPO_RATIOS
from impala_jax.config_learning import REDUCTIONS

# Network torsos (`networks.torsos.make_torso`).
TORSOS = ("shallow", "nature", "deep", "mlp")
# The convolutional torsos: they take images [C, H, W], and the learner unrolls its optimizer
# steps for them rather than scanning (`learning.update`).
IMAGE_TORSOS = ("shallow", "nature", "deep")


def check_torso(name: str) -> None:
  """ValueError unless `name` is one of `TORSOS` (also where networks are built from names)."""
  check_one_of("network torso", name, TORSOS)


# Separates the games of a multi-task run in `EnvConfig.env_id`: "Pong-v5,Breakout-v5".
TASK_SEPARATOR = ","
_TASKS_FORM = ("one EnvPool task id, or several Atari games separated by commas without "
               "spaces, e.g. 'Pong-v5,Breakout-v5'")


def _check_tasks(env_id: str) -> None:
  """ValueError unless `env_id` is one id or a list of distinct plain ids (`EnvConfig`).

  Only the form is checked here: whether each id is an EnvPool Atari game is the environments'
  business (`envs.env_spec`), which knows EnvPool's registry.
  """
  _require(isinstance(env_id, str) and env_id,
           f"env_id must be {_TASKS_FORM}; got {env_id!r}.")
  if TASK_SEPARATOR not in env_id:
    return
  tasks = env_id.split(TASK_SEPARATOR)
  for task in tasks:
    _require(task and task == task.strip() and ":" not in task,
             f"Bad game {task!r} in env_id {env_id!r}: it must be {_TASKS_FORM} (your own "
             "module.path:factory environments play alone).")
  repeated = sorted({task for task in tasks if tasks.count(task) > 1})
  _require(not repeated, f"env_id {env_id!r} lists {', '.join(repeated)} more than once; each "
           "game is one task.")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """One EnvPool batched environment, owned by one actor thread; or, with several games in
  `env_id`, a multi-task run's games, each played by its own actor threads (`task_config`).

  Attributes:
    env_id: an EnvPool task id, e.g. "Pong-v5", "CartPole-v1", "HalfCheetah-v4"; or several
      Atari games separated by commas, "Pong-v5,Breakout-v5": a multi-task run, whose task ids
      are the games' positions in the list (`tasks`).
    num_envs: environments in the pool.
    batch_size: environments returned by each `recv()`; < num_envs makes EnvPool asynchronous
      (the rest keep stepping while the agent thinks). None means num_envs.
    num_threads: EnvPool worker threads; 0 lets EnvPool decide.
    seed: EnvPool seed; actor thread i adds i * num_envs so pools differ.
    max_episode_steps: time limit (truncation), None for the task's default.
    episodic_life, reward_clip, noop_max, stack_num, frame_skip, repeat_action_probability:
      Atari only (ignored elsewhere); the defaults are the paper's settings.
    full_action_space: Atari only: the 18 actions of the whole ALE action set instead of the
      game's minimal set. Every game of a multi-task run has it (`task_config`), so that one
      policy head serves them all; a run of one game keeps its minimal set.
    image_size: Atari only: frames are resized to image_size × image_size grayscale (the
      paper's 84). Smaller frames make the torso and EnvPool's resize cheaper: RLlib's APPO
      Pong example uses 42.
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
  image_size: int = 84
  full_action_space: bool = False

  def __post_init__(self):
    _check_tasks(self.env_id)
    _require(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}.")
    if self.batch_size is not None:
      _require(1 <= self.batch_size <= self.num_envs,
               f"env batch_size must be in [1, num_envs={self.num_envs}], got "
               f"{self.batch_size}.")
    _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}.")
    # The shallow torso's two VALID convolutions (8×8/4, 4×4/2) need at least 20 pixels.
    _require(self.image_size >= 20, f"image_size must be >= 20, got {self.image_size}.")

  @property
  def recv_batch_size(self) -> int:
    return self.num_envs if self.batch_size is None else self.batch_size

  @property
  def tasks(self) -> Tuple[str, ...]:
    """The env id of each task, by task id: `(env_id,)` for a run of one task."""
    return tuple(self.env_id.split(TASK_SEPARATOR))

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def multi_task(self) -> bool:
    return self.num_tasks > 1

  def task_config(self, task: int) -> "EnvConfig":
    """The pool of task `task`: its one game, with the full action space in a multi-task run
    (one policy head over every game's actions). A run of one task: this config itself."""
    _require(0 <= task < self.num_tasks,
             f"task must be in [0, {self.num_tasks}), got {task}.")
    if not self.multi_task:
      return self
    return dataclasses.replace(self, env_id=self.tasks[task], full_action_space=True)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Attributes:
    torso: "shallow" (Mnih et al. 2016), "nature" (DQN, 2015), "deep" (IMPALA ResNet) or "mlp".
    use_lstm: add an LSTM core after the torso.
    lstm_size: LSTM hidden units.
    mlp_hidden_sizes: hidden layers of the MLP torso.
  """

  torso: str = "shallow"
  use_lstm: bool = False
  lstm_size: int = 256
  mlp_hidden_sizes: Tuple[int, ...] = (64, 64)

  def __post_init__(self):
    check_torso(self.torso)
    _require(self.lstm_size >= 1, f"lstm_size must be >= 1, got {self.lstm_size}.")


# Environments per actor thread: EnvPool's throughput per Python step grows with the pool, and
# 32 per thread was the fastest of the layouts measured (docs/performance.md).
_ENVS_PER_ACTOR_THREAD = 32
# Beyond this many threads one learner on a CPU-only host can no longer keep up.
_MAX_ACTOR_THREADS = 8


def default_actor_layout(cores: Optional[int] = None) -> Tuple[int, int]:
  """(num_actor_threads, num_envs per thread) for the host's core count.

  From benchmarks/throughput.py on a 2-core machine (docs/performance.md): Pong end-to-end
  speed grows with the total number of environments (bigger inference batches, fewer Python
  steps per agent step) and with one actor thread per core: 2 threads × 32 envs was the
  fastest layout tried. The thread count follows the cores, capped where one learner can no
  longer keep up on a CPU-only host; XLA's own flags made no measurable difference.
  """
  cores = cores or os.cpu_count() or 1
  return max(1, min(cores, _MAX_ACTOR_THREADS)), _ENVS_PER_ACTOR_THREAD


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole training run: what `experiments/` builds from flags and `impala_jax.train` runs.

  Attributes:
    env: one actor thread's EnvPool (each of `num_actor_threads` threads owns one). With
      several games (`EnvConfig.tasks`), thread k plays game k mod (number of games).
    network, loss, optimizer, popart: see their classes.
    num_actor_threads: actor threads, each stepping its own EnvPool; a multiple of the number
      of games in a multi-task run, so that every game has as many threads.
    unroll_length: T, agent steps per unroll (each unroll carries T+1 observations).
    batch_size: unrolls per learner update, split evenly over the local devices.
    num_epochs: passes over each batch (APPO: several; IMPALA: 1, one gradient step).
    num_minibatches: each pass splits the batch into this many minibatches of whole unrolls,
      one optimizer step each (per device: batch_size / devices must divide by it).
    queue_capacity: unrolls the actor→learner queue holds before actors block; None means
      batch_size: the smallest queue that can fill a batch, which keeps the policy lag (the
      age of the data, in updates) as low as the actors allow.
    inference_batch_wait_ms: how long the inference server waits for more requests after the
      first one arrives before running a batch (SEED's dynamic batching window).
    total_env_steps: stop after the learner has consumed this many agent steps.
    stop_at_score: stop earlier, once the score (the mean real return of the last 20 games
      finished, `runtime.telemetry.RECENT_EPISODES`, judged at each metrics row) reaches
      this: the local actors' score, or each of two remote hosts' confirmed by the learner's
      own games (`runtime.scores`, `runtime.score_check`); None: run to total_env_steps.
      A multi-task run compares the median over its games of each game's human-normalised
      score (its last 20 games) with it, once every game has 20 (`runtime.telemetry`).
    seed: seeds parameters, action sampling and the environments.
    logdir: run directory (metrics.csv, TensorBoard events, checkpoints/).
    resume: continue from the latest checkpoint in `logdir`.
    checkpoint_interval_minutes: also written at exit.
    log_interval_seconds: seconds between metric rows.
    remote_envs: serve remote environment hosts (`RemoteEnvConfig`), None for none. With it,
      num_actor_threads may be 0 (all environments remote).
    max_batch_wait_minutes: stop the run with an error when no batch of unrolls arrives for
      this long (every actor and host gone).
    trajectory_store: learn from a Redis store fed by actor hosts (`TrajectoryStoreConfig`)
      instead of local actors; then num_actor_threads must be 0.
    value_limits: what is accepted from env hosts and actor hosts (`ValueLimits`).
    multihost: this process's place in a multi-process learner (`MultiHostConfig`), or None.
    publish_delay_updates: hand the actors each update's parameters this many updates late,
      raising the policy lag on purpose (`runtime.publishing.delayed`; the paper's correction
      ablation, §5.3); 0: as soon as the update has finished.
  """

  env: EnvConfig = EnvConfig()
  network: NetworkConfig = NetworkConfig()
  loss: LossConfig = LossConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  popart: PopArtConfig = PopArtConfig()
  num_actor_threads: int = 2
  unroll_length: int = 20
  batch_size: int = 32
  num_epochs: int = 1
  num_minibatches: int = 1
  queue_capacity: Optional[int] = None
  inference_batch_wait_ms: float = 1.0
  total_env_steps: int = 50_000_000
  stop_at_score: Optional[float] = None
  seed: int = 0
  logdir: str = "runs/impala"
  resume: bool = False
  checkpoint_interval_minutes: float = 10.0
  log_interval_seconds: float = 10.0
  remote_envs: Optional[RemoteEnvConfig] = None
  max_batch_wait_minutes: float = 10.0
  trajectory_store: Optional[TrajectoryStoreConfig] = None
  value_limits: ValueLimits = ValueLimits()
  multihost: Optional[MultiHostConfig] = None
  publish_delay_updates: int = 0

  def __post_init__(self):
    self._check_task_layout()
    if self.trajectory_store is not None:
      _require(self.num_actor_threads == 0 and self.remote_envs is None,
               "With a trajectory store the learner has no actors of its own: use "
               f"--num_actor_threads=0 (got {self.num_actor_threads}) and no --listen; run "
               "experiments/actor_host.py for the actors.")
    minimum_actors = 0 if (self.remote_envs is not None or
                           self.trajectory_store is not None) else 1
    _require(self.num_actor_threads >= minimum_actors,
             f"num_actor_threads must be >= {minimum_actors}, got {self.num_actor_threads}"
             + ("" if minimum_actors == 0 else " (0 needs remote env hosts: --listen)") + ".")
    _require(self.max_batch_wait_minutes > 0,
             f"max_batch_wait_minutes must be > 0, got {self.max_batch_wait_minutes}.")
    _require(self.unroll_length >= 1, f"unroll_length must be >= 1, got {self.unroll_length}.")
    _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
    _require(self.num_epochs >= 1, f"num_epochs must be >= 1, got {self.num_epochs}.")
    _require(self.num_minibatches >= 1,
             f"num_minibatches must be >= 1, got {self.num_minibatches}.")
    _require(self.batch_size % self.num_minibatches == 0,
             f"batch_size={self.batch_size} is not divisible by num_minibatches="
             f"{self.num_minibatches}; minibatches hold whole unrolls.")
    _require(self.queue_capacity is None or self.queue_capacity >= self.batch_size,
             f"queue_capacity ({self.queue_capacity}) must be >= batch_size "
             f"({self.batch_size}), or the learner could never fill a batch.")
    _require(self.total_env_steps >= 1,
             f"total_env_steps must be >= 1, got {self.total_env_steps}.")
    _require(self.stop_at_score is None or math.isfinite(self.stop_at_score),
             f"stop_at_score must be a finite number, got {self.stop_at_score}.")
    _require(self.publish_delay_updates >= 0,
             f"publish_delay_updates must be >= 0, got {self.publish_delay_updates}.")
    _require(self.inference_batch_wait_ms >= 0,
             f"inference_batch_wait_ms must be >= 0, got {self.inference_batch_wait_ms}.")
    if self.popart.enabled:
      _require(self.popart.num_tasks == self.env.num_tasks,
               f"PopArt has statistics for {self.popart.num_tasks} task(s), but env "
               f"{self.env.env_id!r} has {self.env.num_tasks} game(s): PopArtConfig.num_tasks "
               "must be the number of games.")
      # ART moves μ by β N (mean − μ) for N targets (`rl.popart`): past the batch's own mean
      # when β N > 1, and it diverges past 2.
      targets = self.steps_per_update // self.num_minibatches
      _require(self.popart.step_size * targets <= 1.0,
               f"popart_step_size={self.popart.step_size} times the {targets} value targets of "
               "one optimizer step (batch_size × unroll_length × processes / num_minibatches) "
               f"is {self.popart.step_size * targets:.3g} > 1: PopArt's statistics would "
               f"overshoot each batch's mean. Use popart_step_size <= {1.0 / targets:.3g}.")

  def _check_task_layout(self) -> None:
    """A multi-task run: every game gets the same number of local actor threads; its data
    stays local for now (remote unrolls and episodes carry no task id yet)."""
    num_tasks = self.env.num_tasks
    if num_tasks == 1:
      return
    scale_out = [flag for flag, used in (("--listen", self.remote_envs is not None),
                                         ("--trajectory_store", self.trajectory_store is not None),
                                         ("--num_processes > 1", self.multihost is not None))
                 if used]
    _require(not scale_out,
             f"A multi-task run (--env={self.env.env_id}) plays on this process's own actor "
             f"threads only; {', '.join(scale_out)} is not supported with several games yet.")
    _require(self.num_actor_threads >= num_tasks and self.num_actor_threads % num_tasks == 0,
             f"num_actor_threads={self.num_actor_threads} does not split over the {num_tasks} "
             f"games of --env={self.env.env_id}: thread k plays game k mod {num_tasks}, so use "
             f"a multiple of {num_tasks} (e.g. --num_actor_threads={num_tasks}).")

  @property
  def num_processes(self) -> int:
    return self.multihost.num_processes if self.multihost else 1

  @property
  def process_index(self) -> int:
    return self.multihost.process_id if self.multihost else 0

  @property
  def steps_per_update(self) -> int:
    """Agent steps one learner update consumes, over all processes."""
    return self.batch_size * self.unroll_length * self.num_processes

  @property
  def total_updates(self) -> int:
    return max(1, self.total_env_steps // self.steps_per_update)

  @property
  def unroll_queue_capacity(self) -> int:
    return self.batch_size if self.queue_capacity is None else self.queue_capacity

  @property
  def optimizer_steps_per_update(self) -> int:
    """Gradient steps in one learner update: every minibatch of every epoch."""
    return self.num_epochs * self.num_minibatches

  @property
  def anneal_optimizer_steps(self) -> int:
    """The learning-rate schedule's length in optimizer steps (`optimizer.anneal_env_steps`)."""
    updates = max(1, self.optimizer.anneal_env_steps // self.steps_per_update)
    return updates * self.optimizer_steps_per_update

  @property
  def total_envs(self) -> int:
    """Local environments: those of the actor threads."""
    return self.num_actor_threads * self.env.num_envs

  @property
  def inference_envs(self) -> int:
    """Environment ids at the inference server: local ones, then the remote hosts' slots."""
    return self.total_envs + (self.remote_envs.max_envs if self.remote_envs else 0)

  def check_devices(self, num_devices: int) -> None:
    """Fails early when the batch can't be split evenly over the learner devices."""
    _require(self.batch_size % num_devices == 0,
             f"batch_size={self.batch_size} is not divisible by the {num_devices} local "
             f"devices; use a batch size that is a multiple of {num_devices}.")
    per_device = self.batch_size // num_devices
    _require(per_device % self.num_minibatches == 0,
             f"batch_size={self.batch_size} over {num_devices} devices gives {per_device} "
             f"unrolls per device, not divisible by num_minibatches={self.num_minibatches}; "
             f"use a batch size that is a multiple of {num_devices * self.num_minibatches}.")
