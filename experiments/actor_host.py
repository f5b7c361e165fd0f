r"""A decoupled actor host: actors with a local copy of the policy, linked to a learner by Redis.

    # The learner (no actors of its own), then any number of actor hosts, anywhere; each role
    # has its Redis user and password (impala_jax/distributed/store_roles.py):
    REDIS_PASSWORD=... python experiments/atari.py --trajectory_store=rediss://HOST:6379/0 \
        --redis_username=learner --redis_tls_ca_file=ca.pem --num_actor_threads=0
    REDIS_PASSWORD=... python experiments/actor_host.py --trajectory_store=rediss://HOST:6379/0 \
        --redis_username=actor --redis_tls_ca_file=ca.pem --seed=1

Everything that must match the learner (environment and its options, network, LSTM, unroll
length, discount, frame size) comes from the learner through the store; this host's flags
choose only its layout (--num_actor_threads, --num_envs, --env_batch_size, --env_threads) and
--seed. One of the learner's settings given here explicitly (on the command line or in a
flagfile) must equal the learner's, or the host refuses to start, naming every difference.
The actors run on this host's CPU, with the newest parameters read from Redis whenever their
version changes. SIGINT/SIGTERM stop it cleanly. Exit status: 0 when stopped or when the
learner's run has ended; 1 when the learner or Redis is gone for --learner_timeout_seconds, or
a thread failed; 2 for bad flags, secrets or settings.
"""

import dataclasses
import os
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import common
from impala_jax import config as config_lib
from impala_jax.distributed import actor_host
from impala_jax.distributed import learner_settings
from impala_jax.distributed import trajectory_store
from impala_jax.runtime import signals
# pylint: enable=g-import-not-at-top,wrong-import-position

_POLL_SECONDS = 0.5

num_actor_threads, num_envs = config_lib.default_actor_layout()
common.define_flags(dict(total_env_steps=1, logdir="", num_envs=num_envs,
                         num_actor_threads=num_actor_threads))
flags.DEFINE_float("learner_timeout_seconds", 600.0, "Give up (exit 1) after this long "
                   "without a learner on the store's keys or without Redis: at start (no "
                   "settings or parameters yet), and after losing them.")
flags.DEFINE_float("status_interval_seconds", 30.0, "Seconds between status lines.")

# The learner's settings (`learner_settings` names) each flag sets, where given explicitly.
_SETTING_FLAGS = dict(env="env_id", image_size="image_size",
                      max_episode_steps="max_episode_steps", network="torso",
                      use_lstm="use_lstm", mlp_hidden_sizes="mlp_hidden_sizes",
                      unroll_length="unroll_length", discount="discount")


def _explicit_settings(config: config_lib.TrainConfig) -> dict:
  """The learner's settings this host was given explicitly, with the values they gave."""
  values = dict(learner_settings.of_config(config))
  return {setting: values[setting] for name, setting in _SETTING_FLAGS.items()
          if flags.FLAGS[name].present}


def _connect(stop: threading.Event):
  """(store, host), built from the learner's settings; exits 2 on bad input."""
  f = flags.FLAGS
  try:
    store_config = common.store_config_from_flags()
    if store_config is None:
      raise ValueError("--trajectory_store=redis[s]://HOST:PORT/DB is required.")
    # The learner's store setting would require no actors here: this host is the actors.
    base = dataclasses.replace(common.config_from_flags_without_store(), logdir="unused")
    store = trajectory_store.RedisStore(store_config)
    store.check()
    settings = actor_host.wait_for_settings(store, stop.is_set, f.learner_timeout_seconds)
    if settings is None:
      sys.exit(0)  # Stopped while waiting.
    config = learner_settings.train_config(settings, base, _explicit_settings(base))
    logging.info("The learner's settings: %s", settings)
    return store, actor_host.ActorHost(
        config, store, params_poll_seconds=store_config.publish_interval_seconds,
        learner_timeout_seconds=f.learner_timeout_seconds)
  except (ValueError, PermissionError, ConnectionError, TimeoutError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  stop = threading.Event()
  with signals.SignalStop(stop):
    store, host = _connect(stop)
    try:
      params = host.wait_for_params(stop.is_set, f.learner_timeout_seconds)
      if params is None:
        return
      logging.info("Acting with parameters v%d from %s.", params[1], store.url)
      host.start(*params)
      _watch(host, stop, f.status_interval_seconds)
    except (RuntimeError, TimeoutError, ConnectionError) as e:
      # A thread of the host died, or the learner or Redis is gone: its error, then exit 1.
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    finally:
      host.close()
      store.close()
  logging.info("Stopped%s after pushing %d unrolls.",
               " (the learner's run has ended)" if host.run_ended else "",
               host.pusher.pushed if host.pusher else 0)


def _watch(host: actor_host.ActorHost, stop: threading.Event, interval: float) -> None:
  last_status = time.monotonic()
  while not host.run_ended and not stop.wait(_POLL_SECONDS):
    host.check()  # A dead actor, pusher or poller ends the host with its error.
    if time.monotonic() - last_status >= interval:
      last_status = time.monotonic()
      recent = [e.episode_return for e in list(host.pusher.recent_episodes)[-20:]]
      logging.info("%d unrolls pushed (%d dropped by the store), parameters v%d, score %.2f "
                   "(last %d episodes).", host.pusher.pushed, host.pusher.dropped_by_store,
                   host.poller.version, sum(recent) / max(len(recent), 1), len(recent))


if __name__ == "__main__":
  app.run(main)
