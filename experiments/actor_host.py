r"""A decoupled actor host: actors with a local copy of the policy, linked to a learner by Redis.

    # The learner (no actors of its own), then any number of actor hosts, anywhere:
    REDIS_PASSWORD=... python experiments/atari.py --trajectory_store=redis://HOST:6379/0 \
        --num_actor_threads=0
    REDIS_PASSWORD=... python experiments/actor_host.py --trajectory_store=redis://HOST:6379/0 \
        --env=Pong-v5 --seed=1

It takes the training scripts' flags (pass the same flagfile), so the environment, network and
unroll length match the learner's; the learner rejects unrolls that do not fit its schema. The
actors run on this host's CPU, with the newest parameters read from Redis whenever their
version changes. SIGINT/SIGTERM stop it cleanly; Redis going away is retried with backoff.
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
from impala_jax.distributed import trajectory_store
from impala_jax.runtime import signals
# pylint: enable=g-import-not-at-top,wrong-import-position

_POLL_SECONDS = 0.5

num_actor_threads, num_envs = config_lib.default_actor_layout()
common.define_flags(dict(env="Pong-v5", total_env_steps=1, logdir="", num_envs=num_envs,
                         num_actor_threads=num_actor_threads, unroll_length=20, batch_size=32,
                         learning_rate=6e-4, network="shallow"))
flags.DEFINE_float("params_timeout_seconds", 600.0, "Give up when the learner has published no "
                   "parameters for this long after start.")
flags.DEFINE_float("status_interval_seconds", 30.0, "Seconds between status lines.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  try:
    store_config = common.store_config_from_flags()
    if store_config is None:
      raise ValueError("--trajectory_store=redis://HOST:PORT/DB is required.")
    # The learner's own store setting would require no actors here: this host is the actors.
    config = dataclasses.replace(common.config_from_flags_without_store(), logdir="unused")
    store = trajectory_store.RedisStore(store_config)
    store.check()
    host = actor_host.ActorHost(config, store,
                                params_poll_seconds=store_config.publish_interval_seconds)
  except (ValueError, PermissionError, ConnectionError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  stop = threading.Event()
  with signals.SignalStop(stop):
    params = host.wait_for_params(stop.is_set, f.params_timeout_seconds)
    if params is None:
      return
    logging.info("Acting with parameters v%d from %s.", params[1], store.url)
    host.start(*params)
    try:
      _watch(host, stop, f.status_interval_seconds)
    except RuntimeError as e:  # A thread of the host died: its error, then a clean exit.
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    finally:
      host.close()
      store.close()


def _watch(host: actor_host.ActorHost, stop: threading.Event, interval: float) -> None:
  last_status = time.monotonic()
  while not stop.wait(_POLL_SECONDS):
    host.check()  # A dead actor, pusher or poller ends the host with its error.
    if time.monotonic() - last_status >= interval:
      last_status = time.monotonic()
      recent = [e.episode_return for e in list(host.pusher.recent_episodes)[-20:]]
      logging.info("%d unrolls pushed (%d dropped by the store), parameters v%d, score %.2f "
                   "(last %d episodes).", host.pusher.pushed, host.pusher.dropped_by_store,
                   host.poller.version, sum(recent) / max(len(recent), 1), len(recent))


if __name__ == "__main__":
  app.run(main)
