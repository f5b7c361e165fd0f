"""Flags shared by the experiment scripts, and their translation into a `TrainConfig`.

This is the only place flags are read: everything below `impala_jax` takes frozen configs.
"""

import logging as std_logging
import os
import sys
from typing import Any, Dict, Optional

from absl import app
from absl import flags
from absl import logging
import jax

from impala_jax import config as config_lib
from impala_jax.distributed import multihost
from impala_jax.distributed import peer_loss
from impala_jax.runtime import training

# Run as a script, the repository root is on the path (the scripts put it there).
from experiments import config_flags  # pylint: disable=g-bad-import-order


def define_flags(defaults: Dict[str, Any]) -> None:
  """Defines the common flags. Each flag's default is its config field's
  (`config_flags.default`), unless the script's `defaults` (keyed by flag name) sets another."""
  d = _Defaults(defaults)
  _define_env_flags(d)
  _define_learner_flags(d)
  _define_objective_flags(d)
  _define_popart_flags(d)
  _define_optimizer_flags(d)
  _define_run_flags(d)
  _define_remote_flags(d)
  _define_value_flags(d)
  _define_store_flags(d)
  _define_multihost_flags(d)


class _Defaults:
  """`d(Config, "field")`: the script's default for that field's flag, else the config's."""

  def __init__(self, script_defaults: Dict[str, Any]):
    self._script = dict(script_defaults)
    flag_names = {f for fields in config_flags.FIELD_FLAGS.values() for f in fields.values()}
    unknown = set(self._script) - flag_names
    if unknown:
      raise ValueError(f"Script defaults for unknown flags: {sorted(unknown)}.")

  def __call__(self, cls, field: str) -> Any:
    flag = config_flags.FIELD_FLAGS[cls][field]
    return self._script.get(flag, config_flags.default(cls, field))


_ENV, _NET, _LOSS = config_lib.EnvConfig, config_lib.NetworkConfig, config_lib.LossConfig
_OPT, _TRAIN, _LIMITS = config_lib.OptimizerConfig, config_lib.TrainConfig, config_lib.ValueLimits
_REMOTE, _STORE = config_lib.RemoteEnvConfig, config_lib.TrajectoryStoreConfig
_MULTI, _POPART = config_lib.MultiHostConfig, config_lib.PopArtConfig


def _define_env_flags(d: _Defaults) -> None:
  flags.DEFINE_string("env", d(_ENV, "env_id"), "EnvPool task id, e.g. Pong-v5, CartPole-v1, "
                      "HalfCheetah-v4; or module.path:factory for your own gymnasium/dm_env "
                      "environment (docs/custom_envs.md); or several Atari games, "
                      "Pong-v5,Breakout-v5: one network learns them all (multi-task, full "
                      "action space; thread k plays game k mod the number of games).")
  flags.DEFINE_bool("reward_clip", d(_ENV, "reward_clip"), "Atari: train on sign(reward) "
                    "(the paper's); --noreward_clip trains on the game's own rewards. Scores "
                    "are always the game's own.")
  flags.DEFINE_integer("num_envs", d(_ENV, "num_envs"), "Environments per actor thread.")
  flags.DEFINE_integer("env_batch_size", d(_ENV, "batch_size"),
                       "Environments per EnvPool recv(); unset: num_envs (all of them). "
                       "Smaller values let EnvPool step the rest asynchronously.")
  flags.DEFINE_integer("env_threads", d(_ENV, "num_threads"), "EnvPool worker threads per "
                       "actor; 0 lets EnvPool decide. Custom environments: worker processes; "
                       "0 steps them in the actor thread.")
  flags.DEFINE_integer("num_actor_threads", d(_TRAIN, "num_actor_threads"), "Actor threads.")
  flags.DEFINE_integer("image_size", d(_ENV, "image_size"), "Atari: frames are resized to "
                       "image_size × image_size grayscale (the paper's 84).")
  flags.DEFINE_integer("max_episode_steps", d(_ENV, "max_episode_steps"), "Time limit per "
                       "episode (truncation); unset: the task's default.")
  flags.DEFINE_float("inference_batch_wait_ms", d(_TRAIN, "inference_batch_wait_ms"),
                     "How long the inference server waits for more actors' requests before "
                     "running a batch.")


def _define_learner_flags(d: _Defaults) -> None:
  flags.DEFINE_integer("unroll_length", d(_TRAIN, "unroll_length"), "T, agent steps per "
                       "unroll.")
  flags.DEFINE_integer("batch_size", d(_TRAIN, "batch_size"), "Unrolls per learner update; "
                       "must be divisible by the number of local devices.")
  flags.DEFINE_integer("queue_capacity", d(_TRAIN, "queue_capacity"),
                       "Unrolls the actor→learner queue holds; unset: batch_size (the lowest "
                       "policy lag).")
  flags.DEFINE_integer("publish_delay_updates", d(_TRAIN, "publish_delay_updates"),
                       "Hand the actors each update's parameters this many updates late: "
                       "policy lag raised on purpose (the correction ablation).")
  flags.DEFINE_integer("num_epochs", d(_TRAIN, "num_epochs"), "Passes over each batch.")
  flags.DEFINE_integer("num_minibatches", d(_TRAIN, "num_minibatches"),
                       "Optimizer steps per pass, each on a disjoint set of whole unrolls.")
  flags.DEFINE_enum("network", d(_NET, "torso"), config_lib.TORSOS, "Torso.")
  flags.DEFINE_bool("use_lstm", d(_NET, "use_lstm"), "Add an LSTM core (state kept by the "
                    "inference server).")
  flags.DEFINE_integer("lstm_size", d(_NET, "lstm_size"), "LSTM hidden units.")
  flags.DEFINE_list("mlp_hidden_sizes", [str(n) for n in d(_NET, "mlp_hidden_sizes")],
                    "Hidden layer sizes of the MLP torso.")


def _define_objective_flags(d: _Defaults) -> None:
  flags.DEFINE_enum("objective", d(_LOSS, "objective"), config_lib.OBJECTIVES,
                    "impala: the V-trace policy gradient (paper §4.2); appo: the PPO clipped "
                    "surrogate on V-trace advantages, with epochs and minibatches.")
  flags.DEFINE_float("discount", d(_LOSS, "discount"), "γ.")
  flags.DEFINE_float("entropy_cost", d(_LOSS, "entropy_cost"), "Entropy bonus weight.")
  flags.DEFINE_float("baseline_cost", d(_LOSS, "baseline_cost"), "Value loss weight.")
  flags.DEFINE_enum("loss_reduction", d(_LOSS, "reduction"), config_lib.REDUCTIONS,
                    "Sum over time and batch (the paper) or mean over transitions.")
  flags.DEFINE_float("vtrace_lambda", d(_LOSS, "lambda_"), "V-trace's λ (c_i = λ min(c̄, "
                     "π/μ)).")
  flags.DEFINE_float("clip_rho_threshold", d(_LOSS, "clip_rho_threshold"), "V-trace's ρ̄.")
  flags.DEFINE_float("clip_c_threshold", d(_LOSS, "clip_c_threshold"), "V-trace's c̄.")
  flags.DEFINE_float("clip_pg_rho_threshold", d(_LOSS, "clip_pg_rho_threshold"),
                     "ρ̄ of the policy gradient's importance weight.")
  flags.DEFINE_enum("correction", d(_LOSS, "correction"), config_lib.CORRECTIONS,
                    "IMPALA's off-policy correction (the paper's ablation, §5.3, Table 2): "
                    "vtrace (V-trace); is_1step (one-step TD targets for V, the TD error times "
                    "min(ρ̄_pg, π/μ) as advantage, no traces); epsilon (as none, with log(π + ε) "
                    "in the policy gradient; discrete actions only); none (the behaviour data's "
                    "n-step returns, as if on-policy). APPO takes only vtrace.")
  flags.DEFINE_float("clip_epsilon", d(_LOSS, "clip_epsilon"), "APPO: ε of the clip range "
                     "[1 − ε, 1 + ε] of the ratio.")
  flags.DEFINE_enum("ppo_ratio", d(_LOSS, "ppo_ratio"), config_lib.PPO_RATIOS, "APPO's ratio: "
                    "π/μ against the behaviour policy (Sample Factory), or π/π_prox against "
                    "the policy at the start of each update, with V-trace correcting π_prox/μ "
                    "(proximal: decoupled PPO, Hilton et al. 2021).")
  flags.DEFINE_bool("normalize_advantages", d(_LOSS, "normalize_advantages"), "APPO: "
                    "standardise each minibatch's advantages.")


def _define_popart_flags(d: _Defaults) -> None:
  flags.DEFINE_bool("popart", d(_POPART, "enabled"), "PopArt (Hessel et al. 2019): learn "
                    "normalised values per task, baseline and advantages in units of σ.")
  flags.DEFINE_float("popart_step_size", d(_POPART, "step_size"), "PopArt's β, its "
                     "statistics' step size per value target.")
  flags.DEFINE_float("popart_scale_lb", d(_POPART, "scale_lb"), "PopArt's lower bound on σ.")
  flags.DEFINE_float("popart_scale_ub", d(_POPART, "scale_ub"), "PopArt's upper bound on σ.")


def _define_optimizer_flags(d: _Defaults) -> None:
  flags.DEFINE_enum("optimizer", d(_OPT, "optimizer"), config_lib.OPTIMIZERS,
                    "Optimizer (the paper uses RMSProp).")
  flags.DEFINE_float("learning_rate", d(_OPT, "learning_rate"), "Initial learning rate.")
  flags.DEFINE_float("rmsprop_decay", d(_OPT, "rmsprop_decay"), "RMSProp's decay.")
  flags.DEFINE_float("rmsprop_momentum", d(_OPT, "rmsprop_momentum"), "RMSProp's momentum.")
  flags.DEFINE_float("rmsprop_epsilon", d(_OPT, "rmsprop_epsilon"), "RMSProp's ε (the "
                     "paper's 0.01).")
  flags.DEFINE_bool("rmsprop_eps_in_sqrt", d(_OPT, "rmsprop_eps_in_sqrt"), "RMSProp divides "
                    "by √(ms + ε) (TensorFlow's, the paper's) instead of √ms + ε (PyTorch's, "
                    "torchbeast's and Cleanba's).")
  flags.DEFINE_float("adam_epsilon", d(_OPT, "adam_epsilon"), "Adam's ε.")
  flags.DEFINE_bool("anneal_learning_rate", d(_OPT, "anneal_learning_rate"), "Decay the "
                    "learning rate linearly to 0 ...")
  flags.DEFINE_integer("anneal_env_steps", d(_OPT, "anneal_env_steps"), "... over this many "
                       "agent steps (the training budget the schedule is written for, not "
                       "this run's length; the paper's 200M frames by default).")
  flags.DEFINE_float("max_grad_norm", d(_OPT, "max_grad_norm"), "Global gradient norm clip; "
                     "0 disables.")


def _define_run_flags(d: _Defaults) -> None:
  flags.DEFINE_integer("total_env_steps", d(_TRAIN, "total_env_steps"),
                       "Agent steps (not frames) for the learner to consume.")
  flags.DEFINE_float("stop_at_score", d(_TRAIN, "stop_at_score"), "End the run (with a "
                     "checkpoint) once the mean real return of the last 20 games reaches "
                     "this: of the local actors' games, or of each of two remote hosts' "
                     "confirmed by 20 games the learner plays itself (one host's alone never "
                     "counts); several games: once the median over the games of each one's "
                     "human-normalised score (its last 20 games) reaches this; unset: run to "
                     "--total_env_steps.")
  flags.DEFINE_integer("seed", d(_TRAIN, "seed"), "Seeds parameters, action sampling and "
                       "environments.")
  flags.DEFINE_string("logdir", d(_TRAIN, "logdir"), "Run directory: metrics.csv, "
                      "TensorBoard events, checkpoints/.")
  flags.DEFINE_bool("resume", d(_TRAIN, "resume"), "Continue from the latest checkpoint in "
                    "--logdir.")
  flags.DEFINE_float("checkpoint_interval_minutes", d(_TRAIN, "checkpoint_interval_minutes"),
                     "Minutes between checkpoints (one is always written at exit).")
  flags.DEFINE_float("log_interval_seconds", d(_TRAIN, "log_interval_seconds"),
                     "Seconds between metric rows.")
  flags.DEFINE_float("max_batch_wait_minutes", d(_TRAIN, "max_batch_wait_minutes"),
                     "Stop with an error when no unroll arrives for this long (all actors "
                     "and hosts gone).")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _define_remote_flags(d: _Defaults) -> None:
  flags.DEFINE_string("listen", None, "Serve remote env hosts (experiments/env_host.py) on "
                      "HOST:PORT, e.g. 127.0.0.1:50051 (0.0.0.0:PORT for other machines); "
                      "unset: none.")
  flags.DEFINE_string("token_file", d(_REMOTE, "token_file"), "File with the env hosts' "
                      "shared secret (default: $IMPALA_JAX_TOKEN). Never pass the secret "
                      "itself on a command line.")
  flags.DEFINE_integer("remote_max_envs", d(_REMOTE, "max_envs"), "Environments reserved for "
                       "all remote hosts.")
  flags.DEFINE_integer("remote_max_envs_per_host", d(_REMOTE, "max_envs_per_host"), "The "
                       "most environments one host may bring; unset: a fair share, "
                       "remote_max_envs // max_hosts.")
  flags.DEFINE_integer("max_hosts", d(_REMOTE, "max_hosts"), "Concurrent env hosts.")
  flags.DEFINE_float("host_lease_seconds", d(_REMOTE, "lease_seconds"), "A host silent for "
                     "this long is evicted (it may reconnect, and starts clean).")
  flags.DEFINE_float("hello_timeout_seconds", d(_REMOTE, "hello_timeout_seconds"), "A host's "
                     "stream that has not said HELLO this long after opening is closed.")
  flags.DEFINE_string("tls_cert_file", d(_REMOTE, "tls_cert_file"), "Serve TLS: certificate "
                      "chain (PEM).")
  flags.DEFINE_string("tls_key_file", d(_REMOTE, "tls_key_file"), "Serve TLS: private key "
                      "(PEM).")
  flags.DEFINE_bool("insecure_listen", d(_REMOTE, "insecure_listen"), "Serve a non-loopback "
                    "--listen address without TLS: the token and all data cross the network "
                    "in the clear.")


def _define_value_flags(d: _Defaults) -> None:
  flags.DEFINE_float("max_abs_reward", d(_LIMITS, "max_abs_reward"), "The largest reward "
                     "(per step) accepted from env hosts and actor hosts; larger ones reject "
                     "their message.")
  flags.DEFINE_float("max_abs_value", d(_LIMITS, "max_abs_value"), "The largest float "
                     "observation, continuous action or recurrent state magnitude accepted "
                     "from env hosts and actor hosts.")
  flags.DEFINE_integer("violations_to_evict", d(_LIMITS, "violations_to_evict"), "A host "
                       "whose messages break the value checks this many times is evicted.")


def _define_store_flags(d: _Defaults) -> None:
  flags.DEFINE_string("trajectory_store", None, "Learn from (or, in actor_host.py, feed) a "
                      "Redis trajectory store: redis://HOST:PORT/DB, rediss://... for TLS; "
                      "unset: none. The password comes from $REDIS_PASSWORD or "
                      "--redis_password_file, never the URL.")
  flags.DEFINE_string("redis_username", d(_STORE, "username"), "The Redis ACL user: learner "
                      "(the training run) or actor (actor hosts); unset: the default user.")
  flags.DEFINE_string("redis_password_file", d(_STORE, "password_file"), "File holding that "
                      "user's password.")
  flags.DEFINE_string("redis_tls_ca_file", d(_STORE, "tls_ca_file"), "rediss://: trust this "
                      "CA certificate (PEM).")
  flags.DEFINE_string("redis_tls_cert_file", d(_STORE, "tls_cert_file"), "rediss://: this "
                      "client's certificate (PEM), for servers that verify clients.")
  flags.DEFINE_string("redis_tls_key_file", d(_STORE, "tls_key_file"), "rediss://: this "
                      "client's private key (PEM).")
  flags.DEFINE_bool("insecure_redis", d(_STORE, "insecure_redis"), "Allow redis:// (no TLS) "
                    "to a non-loopback host: the password and all data cross the network in "
                    "the clear.")
  flags.DEFINE_string("redis_key_prefix", d(_STORE, "key_prefix"), "Namespace of this run's "
                      "Redis keys.")
  flags.DEFINE_integer("store_capacity", d(_STORE, "capacity"), "Unrolls the store keeps; "
                       "older ones are dropped and counted.")
  flags.DEFINE_integer("max_policy_lag", d(_STORE, "max_policy_lag"), "The learner drops "
                       "unrolls acted more than this many updates ago.")
  flags.DEFINE_float("params_publish_interval_seconds", d(_STORE, "publish_interval_seconds"),
                     "Publish parameters to the store at most this often.")


def _define_multihost_flags(d: _Defaults) -> None:
  # The usual environment variables as defaults, so a launcher can set them per process.
  env = os.environ
  flags.DEFINE_string("coordinator_address", env.get("JAX_COORDINATOR_ADDRESS"),
                      "Multi-host learner: HOST:PORT of process 0's coordination service "
                      "(default $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", int(env.get("JAX_NUM_PROCESSES", "1")),
                       "Processes in the multi-host learner (default $JAX_NUM_PROCESSES, 1).")
  flags.DEFINE_integer("process_id", int(env.get("JAX_PROCESS_ID", "0")),
                       "This process's index, 0 writes metrics and checkpoints (default "
                       "$JAX_PROCESS_ID).")
  flags.DEFINE_string("coordinator_bind_address", d(_MULTI, "coordinator_bind_address"),
                      "Where process 0's coordination service listens, HOST:PORT; unset: "
                      "loopback for a loopback --coordinator_address, else every interface.")
  flags.DEFINE_integer("initialization_timeout_seconds",
                       d(_MULTI, "initialization_timeout_seconds"), "Give up when the "
                       "process group has not formed by then.")
  flags.DEFINE_integer("heartbeat_timeout_seconds", d(_MULTI, "heartbeat_timeout_seconds"),
                       "A process silent this long is declared dead and every other exits "
                       "naming it.")
  flags.DEFINE_float("stall_timeout_seconds", d(_MULTI, "stall_timeout_seconds"), "A process "
                     "whose learner completes no update for this long exits (stuck, e.g. in "
                     "a collective).")


def multihost_config_from_flags() -> Optional[config_lib.MultiHostConfig]:
  f = flags.FLAGS
  if f.num_processes <= 1:
    return None
  if not f.coordinator_address:
    raise ValueError(f"--num_processes={f.num_processes} needs --coordinator_address=HOST:PORT "
                     "(process 0's host) or $JAX_COORDINATOR_ADDRESS.")
  return config_flags.build(_MULTI)


def store_config_from_flags() -> Optional[config_lib.TrajectoryStoreConfig]:
  return config_flags.build(_STORE) if flags.FLAGS.trajectory_store else None


def remote_config_from_flags() -> Optional[config_lib.RemoteEnvConfig]:
  return config_flags.build(_REMOTE) if flags.FLAGS.listen else None


def env_config_from_flags() -> config_lib.EnvConfig:
  return config_flags.build(_ENV)


def config_from_flags_without_store() -> config_lib.TrainConfig:
  """The training config with the store left out (an actor host's: it *is* the actors)."""
  saved = flags.FLAGS.trajectory_store
  flags.FLAGS.trajectory_store = None
  try:
    return config_from_flags()
  finally:
    flags.FLAGS.trajectory_store = saved


def config_from_flags() -> config_lib.TrainConfig:
  """Builds the frozen config; invalid values raise ValueError naming the flag to change."""
  env = env_config_from_flags()
  return config_flags.build(
      _TRAIN, env=env, network=config_flags.build(_NET),
      loss=config_flags.build(_LOSS), optimizer=config_flags.build(_OPT),
      popart=config_flags.build(_POPART, num_tasks=env.num_tasks),
      value_limits=config_flags.build(_LIMITS), remote_envs=remote_config_from_flags(),
      trajectory_store=store_config_from_flags(), multihost=multihost_config_from_flags())


class _QuietLibraries:
  """A logging filter that drops INFO records from chatty libraries (Orbax logs every save)."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config = config_from_flags()
    if config.multihost is not None:  # Before any other JAX call.
      multihost.initialize(config.multihost)
    logging.info("JAX devices: %s", jax.local_devices())
    run = training.TrainingRun(config, show_progress=flags.FLAGS.progress)
  except (ValueError, PermissionError, ConnectionError) as e:
    # Bad input (flags, env id, device count, existing logdir, a secret or server that is
    # wrong or unreachable): a clear message, exit code 2.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if config.multihost is None:
    _report(run.run())
    return
  with peer_loss.AbortAsPeerLost(config.multihost.coordinator_address):
    try:
      _report(run.run())
    except peer_loss.PeerLostError as e:
      print(f"error: PeerLostError: {e}. Every process of the group stops; restart them all "
            "with --resume.", file=sys.stderr, flush=True)
      os._exit(peer_loss.EXIT_CODE)  # pylint: disable=protected-access
    multihost.shutdown()


def _report(summary: training.RunSummary) -> None:
  logging.info("Done (%s): %d env steps, %d updates, %.0f steps/s, %.1f min.",
               summary.stop_reason, summary.env_steps, summary.updates,
               summary.steps_per_second, summary.wall_seconds / 60)
