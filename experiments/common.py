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


def define_flags(defaults: Dict[str, Any]) -> None:
  """Defines the common flags with per-script `defaults` (keyed by flag name)."""
  _define_env_flags(defaults)
  _define_learner_flags(defaults)
  _define_objective_flags(defaults)
  _define_optimizer_flags(defaults)
  _define_run_flags(defaults)
  _define_remote_flags()
  _define_value_flags()
  _define_store_flags()
  _define_multihost_flags()


def _define_env_flags(d: Dict[str, Any]) -> None:
  flags.DEFINE_string("env", d["env"], "EnvPool task id, e.g. Pong-v5, CartPole-v1, "
                      "HalfCheetah-v4; or module.path:factory for your own gymnasium/dm_env "
                      "environment (docs/custom_envs.md).")
  flags.DEFINE_integer("num_envs", d["num_envs"], "Environments per actor thread.")
  flags.DEFINE_integer("env_batch_size", d.get("env_batch_size", 0),
                       "Environments per EnvPool recv(); 0 means num_envs (all of them). "
                       "Smaller values let EnvPool step the rest asynchronously.")
  flags.DEFINE_integer("env_threads", 0, "EnvPool worker threads per actor; 0 lets EnvPool "
                       "decide. Custom environments: worker processes; 0 steps them in the "
                       "actor thread.")
  flags.DEFINE_integer("num_actor_threads", d["num_actor_threads"], "Actor threads.")
  flags.DEFINE_integer("image_size", 84, "Atari: frames are resized to image_size × "
                       "image_size grayscale (the paper's 84).")
  flags.DEFINE_integer("max_episode_steps", 0, "Time limit per episode (truncation); 0 keeps "
                       "the task's default.")
  flags.DEFINE_float("inference_batch_wait_ms", 1.0, "How long the inference server waits "
                     "for more actors' requests before running a batch.")


def _define_learner_flags(d: Dict[str, Any]) -> None:
  flags.DEFINE_integer("unroll_length", d["unroll_length"], "T, agent steps per unroll.")
  flags.DEFINE_integer("batch_size", d["batch_size"], "Unrolls per learner update; must be "
                       "divisible by the number of local devices.")
  flags.DEFINE_integer("queue_capacity", d.get("queue_capacity", 0),
                       "Unrolls the actor→learner queue holds; 0 means batch_size (the "
                       "lowest policy lag).")
  flags.DEFINE_integer("num_epochs", d.get("num_epochs", 1), "Passes over each batch.")
  flags.DEFINE_integer("num_minibatches", d.get("num_minibatches", 1),
                       "Optimizer steps per pass, each on a disjoint set of whole unrolls.")
  flags.DEFINE_enum("network", d["network"], config_lib.TORSOS, "Torso.")
  flags.DEFINE_bool("use_lstm", False, "Add an LSTM core (state kept by the inference "
                    "server).")
  flags.DEFINE_list("mlp_hidden_sizes", d.get("mlp_hidden_sizes", ["64", "64"]),
                    "Hidden layer sizes of the MLP torso.")


def _define_objective_flags(d: Dict[str, Any]) -> None:
  flags.DEFINE_enum("objective", d.get("objective", "impala"), config_lib.OBJECTIVES,
                    "impala: the V-trace policy gradient (paper §4.2); appo: the PPO clipped "
                    "surrogate on V-trace advantages, with epochs and minibatches.")
  flags.DEFINE_float("discount", d.get("discount", 0.99), "γ.")
  flags.DEFINE_float("entropy_cost", d.get("entropy_cost", 0.01), "Entropy bonus weight.")
  flags.DEFINE_float("baseline_cost", d.get("baseline_cost", 0.5), "Value loss weight.")
  flags.DEFINE_enum("loss_reduction", d.get("loss_reduction", "sum"), config_lib.REDUCTIONS,
                    "Sum over time and batch (the paper) or mean over transitions.")
  flags.DEFINE_float("vtrace_lambda", 1.0, "V-trace's λ (c_i = λ min(c̄, π/μ)).")
  flags.DEFINE_float("clip_epsilon", 0.2, "APPO: ε of the clip range [1 − ε, 1 + ε] of the "
                     "ratio.")
  flags.DEFINE_enum("ppo_ratio", "behaviour", config_lib.PPO_RATIOS, "APPO's ratio: π/μ "
                    "against the behaviour policy (Sample Factory), or π/π_prox against the "
                    "policy at the start of each update, with V-trace correcting π_prox/μ "
                    "(proximal: decoupled PPO, Hilton et al. 2021).")
  flags.DEFINE_bool("normalize_advantages", True, "APPO: standardise each minibatch's "
                    "advantages.")


def _define_optimizer_flags(d: Dict[str, Any]) -> None:
  flags.DEFINE_enum("optimizer", d.get("optimizer", "rmsprop"), config_lib.OPTIMIZERS,
                    "Optimizer (the paper uses RMSProp).")
  flags.DEFINE_float("learning_rate", d["learning_rate"], "Initial learning rate.")
  flags.DEFINE_float("rmsprop_epsilon", 0.01, "RMSProp's ε (the paper's 0.01).")
  flags.DEFINE_bool("rmsprop_eps_in_sqrt", False, "RMSProp divides by √(ms + ε) "
                    "(TensorFlow's, the paper's) instead of √ms + ε (PyTorch's, torchbeast's "
                    "and Cleanba's).")
  flags.DEFINE_float("adam_epsilon", 1e-5, "Adam's ε.")
  flags.DEFINE_bool("anneal_learning_rate", True, "Decay the learning rate linearly to 0 ...")
  flags.DEFINE_integer("anneal_env_steps", 50_000_000, "... over this many agent steps (the "
                       "training budget the schedule is written for, not this run's length; "
                       "the paper's 200M frames by default).")
  flags.DEFINE_float("max_grad_norm", 40.0, "Global gradient norm clip; <= 0 disables.")


def _define_run_flags(d: Dict[str, Any]) -> None:
  flags.DEFINE_integer("total_env_steps", d["total_env_steps"],
                       "Agent steps (not frames) for the learner to consume.")
  flags.DEFINE_float("stop_at_score", None, "End the run (with a checkpoint) once the mean "
                     "real return of the last 20 games reaches this: of the local actors' "
                     "games, or of each of two remote hosts' confirmed by 20 games the learner plays "
                     "itself (one host's alone never counts); "
                     "unset: run to --total_env_steps.")
  flags.DEFINE_integer("seed", 0, "Seeds parameters, action sampling and environments.")
  flags.DEFINE_string("logdir", d["logdir"], "Run directory: metrics.csv, TensorBoard events, "
                      "checkpoints/.")
  flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --logdir.")
  flags.DEFINE_float("checkpoint_interval_minutes", 10.0, "Minutes between checkpoints "
                     "(one is always written at exit).")
  flags.DEFINE_float("log_interval_seconds", d.get("log_interval_seconds", 10.0),
                     "Seconds between metric rows.")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _define_remote_flags() -> None:
  flags.DEFINE_string("listen", "", "Serve remote env hosts (experiments/env_host.py) on "
                      "HOST:PORT, e.g. 127.0.0.1:50051 (0.0.0.0:PORT for other machines); "
                      "empty: none.")
  flags.DEFINE_string("token_file", None, "File with the env hosts' shared secret (default: "
                      "$IMPALA_JAX_TOKEN). Never pass the secret itself on a command line.")
  flags.DEFINE_integer("remote_max_envs", 256, "Environments reserved for all remote hosts.")
  flags.DEFINE_integer("remote_max_envs_per_host", 0, "The most environments one host may "
                       "bring; 0: a fair share, remote_max_envs // max_hosts.")
  flags.DEFINE_integer("max_hosts", 8, "Concurrent env hosts.")
  flags.DEFINE_float("host_lease_seconds", 30.0, "A host silent for this long is evicted (it "
                     "may reconnect, and starts clean).")
  flags.DEFINE_float("hello_timeout_seconds", 10.0, "A host's stream that has not said HELLO "
                     "this long after opening is closed.")
  flags.DEFINE_string("tls_cert_file", None, "Serve TLS: certificate chain (PEM).")
  flags.DEFINE_string("tls_key_file", None, "Serve TLS: private key (PEM).")
  flags.DEFINE_bool("insecure_listen", False, "Serve a non-loopback --listen address without "
                    "TLS: the token and all data cross the network in the clear.")
  flags.DEFINE_float("max_batch_wait_minutes", 10.0, "Stop with an error when no unroll "
                     "arrives for this long (all actors and hosts gone).")


def _define_value_flags() -> None:
  flags.DEFINE_float("max_abs_reward", 1e6, "The largest reward (per step) accepted from env "
                     "hosts and actor hosts; larger ones reject their message.")
  flags.DEFINE_float("max_abs_value", 1e6, "The largest float observation, continuous action "
                     "or recurrent state magnitude accepted from env hosts and actor hosts.")
  flags.DEFINE_integer("violations_to_evict", 3, "A host whose messages break the value "
                       "checks this many times is evicted.")


def _define_store_flags() -> None:
  flags.DEFINE_string("trajectory_store", "", "Learn from (or, in actor_host.py, feed) a Redis "
                      "trajectory store: redis://HOST:PORT/DB, rediss://... for TLS; empty: "
                      "none. The password comes from $REDIS_PASSWORD or --redis_password_file, "
                      "never the URL.")
  flags.DEFINE_string("redis_username", None, "The Redis ACL user: learner (the training "
                      "run) or actor (actor hosts); unset: the default user.")
  flags.DEFINE_string("redis_password_file", None, "File holding that user's password.")
  flags.DEFINE_string("redis_tls_ca_file", None, "rediss://: trust this CA certificate (PEM).")
  flags.DEFINE_string("redis_tls_cert_file", None, "rediss://: this client's certificate "
                      "(PEM), for servers that verify clients.")
  flags.DEFINE_string("redis_tls_key_file", None, "rediss://: this client's private key (PEM).")
  flags.DEFINE_bool("insecure_redis", False, "Allow redis:// (no TLS) to a non-loopback host: "
                    "the password and all data cross the network in the clear.")
  flags.DEFINE_string("redis_key_prefix", "impala_jax", "Namespace of this run's Redis keys.")
  flags.DEFINE_integer("store_capacity", 256, "Unrolls the store keeps; older ones are "
                       "dropped and counted.")
  flags.DEFINE_integer("max_policy_lag", 20, "The learner drops unrolls acted more than this "
                       "many updates ago.")
  flags.DEFINE_float("params_publish_interval_seconds", 0.2, "Publish parameters to the store "
                     "at most this often.")


def _define_multihost_flags() -> None:
  # The usual environment variables as defaults, so a launcher can set them per process.
  env = os.environ
  flags.DEFINE_string("coordinator_address", env.get("JAX_COORDINATOR_ADDRESS", ""),
                      "Multi-host learner: HOST:PORT of process 0's coordination service "
                      "(default $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", int(env.get("JAX_NUM_PROCESSES", "1")),
                       "Processes in the multi-host learner (default $JAX_NUM_PROCESSES, 1).")
  flags.DEFINE_integer("process_id", int(env.get("JAX_PROCESS_ID", "0")),
                       "This process's index, 0 writes metrics and checkpoints (default "
                       "$JAX_PROCESS_ID).")
  flags.DEFINE_string("coordinator_bind_address", "", "Where process 0's coordination service "
                      "listens, HOST:PORT; empty: loopback for a loopback "
                      "--coordinator_address, else every interface.")
  flags.DEFINE_integer("initialization_timeout_seconds", 300, "Give up when the process "
                       "group has not formed by then.")
  flags.DEFINE_integer("heartbeat_timeout_seconds", 30, "A process silent this long is "
                       "declared dead and every other exits naming it.")
  flags.DEFINE_float("stall_timeout_seconds", 600.0, "A process whose learner completes no "
                     "update for this long exits (stuck, e.g. in a collective).")


def multihost_config_from_flags() -> Optional[config_lib.MultiHostConfig]:
  f = flags.FLAGS
  if f.num_processes <= 1:
    return None
  if not f.coordinator_address:
    raise ValueError(f"--num_processes={f.num_processes} needs --coordinator_address=HOST:PORT "
                     "(process 0's host) or $JAX_COORDINATOR_ADDRESS.")
  return config_lib.MultiHostConfig(
      coordinator_address=f.coordinator_address, num_processes=f.num_processes,
      process_id=f.process_id, initialization_timeout_seconds=f.initialization_timeout_seconds,
      heartbeat_timeout_seconds=f.heartbeat_timeout_seconds,
      stall_timeout_seconds=f.stall_timeout_seconds,
      coordinator_bind_address=f.coordinator_bind_address or None)


def store_config_from_flags() -> Optional[config_lib.TrajectoryStoreConfig]:
  f = flags.FLAGS
  if not f.trajectory_store:
    return None
  return config_lib.TrajectoryStoreConfig(
      url=f.trajectory_store, username=f.redis_username, password_file=f.redis_password_file,
      tls_ca_file=f.redis_tls_ca_file, tls_cert_file=f.redis_tls_cert_file,
      tls_key_file=f.redis_tls_key_file, insecure_redis=f.insecure_redis,
      key_prefix=f.redis_key_prefix, capacity=f.store_capacity,
      max_policy_lag=f.max_policy_lag,
      publish_interval_seconds=f.params_publish_interval_seconds)


def remote_config_from_flags() -> Optional[config_lib.RemoteEnvConfig]:
  f = flags.FLAGS
  if not f.listen:
    return None
  return config_lib.RemoteEnvConfig(
      listen=f.listen, token_file=f.token_file, max_envs=f.remote_max_envs,
      max_envs_per_host=f.remote_max_envs_per_host or None, max_hosts=f.max_hosts,
      lease_seconds=f.host_lease_seconds, hello_timeout_seconds=f.hello_timeout_seconds,
      tls_cert_file=f.tls_cert_file, tls_key_file=f.tls_key_file,
      insecure_listen=f.insecure_listen)


def env_config_from_flags() -> config_lib.EnvConfig:
  f = flags.FLAGS
  return config_lib.EnvConfig(
      env_id=f.env, num_envs=f.num_envs, batch_size=f.env_batch_size or None,
      num_threads=f.env_threads, seed=f.seed, max_episode_steps=f.max_episode_steps or None,
      image_size=f.image_size)


def config_from_flags_without_store() -> config_lib.TrainConfig:
  """The training config with the store left out (an actor host's: it *is* the actors)."""
  saved = flags.FLAGS.trajectory_store
  flags.FLAGS.trajectory_store = ""
  try:
    return config_from_flags()
  finally:
    flags.FLAGS.trajectory_store = saved


def config_from_flags() -> config_lib.TrainConfig:
  """Builds the frozen config; invalid values raise ValueError naming the flag to change."""
  f = flags.FLAGS
  env = env_config_from_flags()
  network = config_lib.NetworkConfig(
      torso=f.network, use_lstm=f.use_lstm,
      mlp_hidden_sizes=tuple(int(s) for s in f.mlp_hidden_sizes))
  loss = config_lib.LossConfig(
      objective=f.objective, discount=f.discount, baseline_cost=f.baseline_cost,
      entropy_cost=f.entropy_cost, lambda_=f.vtrace_lambda, reduction=f.loss_reduction,
      clip_epsilon=f.clip_epsilon, normalize_advantages=f.normalize_advantages,
      ppo_ratio=f.ppo_ratio)
  optimizer = config_lib.OptimizerConfig(
      optimizer=f.optimizer, learning_rate=f.learning_rate,
      rmsprop_epsilon=f.rmsprop_epsilon, rmsprop_eps_in_sqrt=f.rmsprop_eps_in_sqrt,
      adam_epsilon=f.adam_epsilon, anneal_learning_rate=f.anneal_learning_rate,
      anneal_env_steps=f.anneal_env_steps,
      max_grad_norm=f.max_grad_norm if f.max_grad_norm > 0 else None)
  return config_lib.TrainConfig(
      env=env, network=network, loss=loss, optimizer=optimizer,
      num_actor_threads=f.num_actor_threads, unroll_length=f.unroll_length,
      batch_size=f.batch_size, num_epochs=f.num_epochs, num_minibatches=f.num_minibatches,
      queue_capacity=f.queue_capacity or None,
      inference_batch_wait_ms=f.inference_batch_wait_ms, total_env_steps=f.total_env_steps,
      stop_at_score=f.stop_at_score, seed=f.seed, logdir=f.logdir, resume=f.resume,
      checkpoint_interval_minutes=f.checkpoint_interval_minutes,
      log_interval_seconds=f.log_interval_seconds, remote_envs=remote_config_from_flags(),
      max_batch_wait_minutes=f.max_batch_wait_minutes,
      trajectory_store=store_config_from_flags(),
      value_limits=config_lib.ValueLimits(
          max_abs_reward=f.max_abs_reward, max_abs_value=f.max_abs_value,
          violations_to_evict=f.violations_to_evict),
      multihost=multihost_config_from_flags())


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
