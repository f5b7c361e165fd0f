"""Several learner hosts as one data-parallel learner, with JAX's multi-controller runtime.

Every process runs the same program (Sebulba's and Cleanba's layout): its own actors and
inference server on its local devices, and its share of one learner `pmap`ped over every
device of every process. What that needs beyond `jax.distributed.initialize`:

  * the same settings everywhere, checked before the first training collective
    (`check_same_config`: an all-gather of per-section fingerprints, which has the same shape
    whatever the settings, so a mismatch is reported instead of hanging a collective);
  * the same parameters everywhere: process 0's, broadcast (`broadcast_from_primary`);
  * lockstep: every process makes the same collectives in the same order, so every decision
    to stop (step budget, signal, NaN, a dead actor on any host) is collective:
    `StopAgreement` all-gathers one small code per update, and all stop together;
  * faults: a killed process ends every other one with `peer_loss.PeerLostError` and exit
    status 1 (instead of JAX's abort), within `heartbeat_timeout_seconds`;
    a process alive but stuck (e.g. in a collective no one else entered) is caught by
    `Watchdog`, which exits when no update completes within `stall_timeout_seconds`;
  * shutdown: a barrier, then `jax.distributed.shutdown()`.

CPU devices talk over gloo (loopback in tests, TCP between hosts); GPUs and TPUs use their own
interconnects with the same code.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Dict, Tuple

from absl import logging
import jax
import numpy as np

from impala_jax import config as config_lib
from impala_jax import threads

# Settings that may differ between processes (everything else must match).
_PER_PROCESS = ("process_id", "logdir", "resume", "remote_envs", "checkpoint_interval_minutes",
                "log_interval_seconds")


def initialize(config: config_lib.MultiHostConfig) -> None:
  """`jax.distributed.initialize`, with gloo for CPU collectives; before any other JAX call."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address, num_processes=config.num_processes,
      process_id=config.process_id,
      initialization_timeout=config.initialization_timeout_seconds,
      heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
      coordinator_bind_address=config.bind_address)
  if config.process_id == 0 and config.bind_address is None:
    logging.warning("The jax.distributed coordination service listens on every interface "
                    "(port %s) and has no authentication or encryption: whoever reaches it "
                    "can join or disrupt the group. Keep it on a private network "
                    "(docs/distributed.md, \"Trust\").",
                    config.coordinator_address.rpartition(":")[2])
  logging.info("Process %d of %d joined %s: %d local of %d devices.", jax.process_index(),
               jax.process_count(), config.coordinator_address, jax.local_device_count(),
               jax.device_count())


def is_primary() -> bool:
  return jax.process_index() == 0


def _sections(config: config_lib.TrainConfig) -> Dict[str, Any]:
  """The settings every process must share, by section (a mismatch names its section)."""
  values = dataclasses.asdict(config)
  for name in _PER_PROCESS:
    values.pop(name, None)
  multihost = values.pop("multihost") or {}
  values["num_processes"] = multihost.get("num_processes")
  values["local_devices"] = jax.local_device_count()
  sections = {k: v for k, v in values.items() if isinstance(v, dict)}
  sections["run"] = {k: v for k, v in values.items() if not isinstance(v, dict)}
  return sections


def _fingerprint(value: Any) -> int:
  text = json.dumps(value, sort_keys=True, default=str).encode()
  return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF


def check_same_config(config: config_lib.TrainConfig) -> None:
  """Raises ValueError on every process if any two processes were given different settings."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sections = _sections(config)
  names = sorted(sections)
  mine = np.array([_fingerprint(sections[n]) for n in names], np.int32)
  everyone = np.asarray(multihost_utils.process_allgather(mine))  # [processes, sections]
  differ = [n for i, n in enumerate(names) if len(set(everyone[:, i].tolist())) > 1]
  if differ:
    raise ValueError(
        f"The {jax.process_count()} processes were given different settings in: "
        f"{', '.join(differ)} (this is process {jax.process_index()}: "
        f"{ {n: sections[n] for n in differ} }). Give every process the same flags.")


def broadcast_from_primary(tree: Any) -> Any:
  """Process 0's values of `tree` (numpy leaves) on every process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


class StopAgreement:
  """`agree(code) -> (code, process)`: the most severe code any process reported, and which.

  One all-gather of one integer per update: cheap next to the update's own all-reduce, and
  what keeps every process making the same collectives in the same order.
  """

  def __call__(self, code: int) -> Tuple[int, int]:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    codes = np.asarray(multihost_utils.process_allgather(np.array([code], np.int32)))[:, 0]
    origin = int(np.argmax(codes))
    return int(codes[origin]), origin


class Watchdog(threads.Worker):
  """Exits the process when the learner completes no update for `stall_seconds`.

  A process stuck in a collective cannot be interrupted from Python, and its peers may be
  waiting on it without a heartbeat ever failing: this turns "stuck" into "dead", which the
  others' coordination service then reports. `beat()` after every update.
  """

  def __init__(self, stall_seconds: float, exit_code: int = 3):
    super().__init__(name="learner-watchdog", description="The learner watchdog")
    self._stall_seconds = stall_seconds
    self._exit_code = exit_code
    self._last_beat = time.monotonic()

  def beat(self) -> None:
    self._last_beat = time.monotonic()

  def _run(self) -> None:
    while not self._stop.wait(1.0):
      stalled = time.monotonic() - self._last_beat
      if stalled > self._stall_seconds:
        logging.error("Process %d: no learner update for %.0f s (the limit is %.0f s): stuck, "
                      "probably in a collective another process never joined. Exiting.",
                      jax.process_index(), stalled, self._stall_seconds)
        logging.flush()
        os._exit(self._exit_code)  # pylint: disable=protected-access


def shutdown() -> None:
  """A barrier (every process got here), then leave the group."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  logging.info("Process %d: waiting for the others to finish.", jax.process_index())
  multihost_utils.sync_global_devices("impala_jax: training done")
  jax.distributed.shutdown()
  logging.info("Process %d: left the group.", jax.process_index())
