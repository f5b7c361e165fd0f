r"""An environment host: runs EnvPool here and streams to a learner's inference server (gRPC).

    # On the learner machine (the secret in a file, mode 600, on both machines):
    python experiments/atari.py --listen=0.0.0.0:50051 --token_file=secret --num_actor_threads=0
    # On each environment machine:
    python experiments/env_host.py --learner=LEARNER_HOST:50051 --token_file=secret \
        --env=Pong-v5 --num_envs=32

The environment settings (task, image size, time limit) must match the learner's; the learner
checks them on connect and rejects a host that differs. SIGINT/SIGTERM stop the host cleanly;
a lost learner is retried with backoff until it returns.
"""

import json
import os
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from impala_jax import config as config_lib
from impala_jax.distributed import auth
from impala_jax.distributed import env_host
from impala_jax.runtime import signals
# pylint: enable=g-import-not-at-top,wrong-import-position

_POLL_SECONDS = 0.5

flags.DEFINE_string("learner", "127.0.0.1:50051", "The learner's --listen address, HOST:PORT.")
flags.DEFINE_string("env", "Pong-v5", "EnvPool task id (the learner's).")
flags.DEFINE_integer("num_envs", 32, "Environments on this host (stepped in two halves).")
flags.DEFINE_integer("env_threads", 0, "EnvPool worker threads; 0 lets EnvPool decide.")
flags.DEFINE_integer("image_size", 84, "Atari frame size (the learner's).")
flags.DEFINE_integer("max_episode_steps", 0, "Time limit (the learner's); 0: the task's.")
flags.DEFINE_integer("seed", 0, "EnvPool seed; give each host its own.")
flags.DEFINE_string("token_file", None, "File with the shared secret (default: "
                    f"${auth.TOKEN_ENV_VAR}).")
flags.DEFINE_string("tls_ca_file", None, "Use TLS, trusting this CA certificate (PEM).")
flags.DEFINE_float("reply_timeout_seconds", 30.0, "Reconnect when a reply takes longer.")
flags.DEFINE_float("status_interval_seconds", 30.0, "Seconds between status log lines.")
flags.DEFINE_string("stats_file", None, "At exit, write the host's wire statistics (steps, "
                    "bytes per step, round-trip times) here as JSON.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  try:
    token = auth.read_secret(f.token_file, auth.TOKEN_ENV_VAR)
    if token is None:
      raise ValueError(f"A shared secret is needed: --token_file=PATH or ${auth.TOKEN_ENV_VAR}.")
    env_config = config_lib.EnvConfig(
        env_id=f.env, num_envs=f.num_envs, num_threads=f.env_threads, seed=f.seed,
        max_episode_steps=f.max_episode_steps or None, image_size=f.image_size)
    host = env_host.EnvHost(env_config, f.learner, token, tls_ca_file=f.tls_ca_file,
                            reply_timeout_seconds=f.reply_timeout_seconds)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  stop = threading.Event()
  last_status = time.monotonic()
  with signals.SignalStop(stop), host:
    while host.is_alive() and not stop.wait(_POLL_SECONDS):
      if time.monotonic() - last_status >= f.status_interval_seconds:
        last_status = time.monotonic()
        logging.info("%d env steps sent over %d connection(s).", host.env_steps,
                     host.connections)
  if f.stats_file:
    with open(f.stats_file, "w") as out:
      json.dump(host.stats(), out, indent=2)
  if host.error is not None:
    print(f"error: {host.error}", file=sys.stderr)
    sys.exit(1)
  logging.info("Stopped after %d env steps.", host.env_steps)


if __name__ == "__main__":
  app.run(main)
