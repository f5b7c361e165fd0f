r"""An environment host: runs EnvPool here and streams to a learner's inference server (gRPC).

    # On the learner machine (the secret in a file, mode 600, on both machines; TLS, since
    # the learner listens beyond loopback):
    python experiments/atari.py --listen=0.0.0.0:50051 --token_file=secret \
        --tls_cert_file=cert.pem --tls_key_file=key.pem --num_actor_threads=0
    # On each environment machine:
    python experiments/env_host.py --learner=LEARNER_HOST:50051 --token_file=secret \
        --tls_ca_file=ca.pem --num_envs=32 --seed=1

The environment settings (task, frame size, time limit, Atari options) come from the learner;
this host chooses only how many environments it runs, with how many threads, and its seed.
`--env`, `--image_size` or `--max_episode_steps`, if given, must equal the learner's: a host
that differs is refused at connect time, naming the difference. SIGINT/SIGTERM stop the host
cleanly. Exit status: 0 when stopped or when the learner's run has ended (GOODBYE); 1 when the
learner refused the host or could not be reached for --learner_timeout_seconds; 2 for bad
flags or secrets.
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
flags.DEFINE_integer("num_envs", 32, "Environments on this host (stepped in two halves); at "
                     "most the learner's --remote_max_envs_per_host.")
flags.DEFINE_integer("env_threads", 0, "EnvPool worker threads; 0 lets EnvPool decide.")
flags.DEFINE_integer("seed", 0, "EnvPool seed; give each host its own.")
# Taken from the learner; given here, they must match it (a check, not a choice).
flags.DEFINE_string("env", None, "EnvPool task id: the learner's (checked if given).")
flags.DEFINE_integer("image_size", None, "Atari frame size: the learner's (checked if given).")
flags.DEFINE_integer("max_episode_steps", None, "Time limit: the learner's (checked if given; "
                     "0: the task's own).")
flags.DEFINE_float("learner_timeout_seconds", 600.0, "Give up (exit 1) after this long "
                   "without an answer from the learner: at start, and after losing it.")
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
    env_config = config_lib.EnvConfig(num_envs=f.num_envs, num_threads=f.env_threads,
                                      seed=f.seed)
    host = env_host.EnvHost(env_config, f.learner, token, explicit=_explicit_settings(f),
                            tls_ca_file=f.tls_ca_file,
                            reply_timeout_seconds=f.reply_timeout_seconds,
                            learner_timeout_seconds=f.learner_timeout_seconds)
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
  logging.info("Stopped after %d env steps%s.", host.env_steps,
               " (the learner's run has ended)" if host.run_ended else "")


def _explicit_settings(f) -> dict:
  """The learner's settings this host was given (each must equal the learner's)."""
  explicit = {}
  if f.env is not None:
    explicit["env_id"] = f.env
  if f.image_size is not None:
    explicit["image_size"] = f.image_size
  if f.max_episode_steps is not None:
    explicit["max_episode_steps"] = f.max_episode_steps or None
  return explicit


if __name__ == "__main__":
  app.run(main)
