"""A learner and actor hosts as real processes through a real redis-server on loopback.

One run goes through everything that can go wrong around it: an actor host killed with -9, the
Redis server restarted (empty), and the learner stopped and resumed from its checkpoint, and
still solves CartPole-v1, within 600k agent steps: the in-process test's 300k, plus room for
what the faults cost (unrolls lost with the killed host and the emptied Redis, stale ones
dropped after the learner's restart) and for the actor hosts' policy lag of ~6 updates (with
400k, one fresh-clone run in two on 2026-12-02 had not solved it: its APPO policy's entropy
was down to 0.14 at 375k steps, and its last rows averaged 124 to 241).
"""

import os
import signal
import time

import pytest

from impala_jax.distributed import local_redis
from tests.distributed.processes import metrics as _metrics
from tests.distributed.processes import Processes
from tests.distributed.processes import REPO
from tests.distributed.processes import wait_for as _wait_for
CAPACITY = 128
BUDGET = 600_000
# Learner and actor hosts take the same flagfile, as users would run them. APPO: its clipped
# ratio is robust to the data's age here (parameters up to a poll interval old).
FLAGFILE = os.path.join(REPO, "experiments", "configs", "cartpole_appo.flags")


def _steps(logdir):
  rows = _metrics(logdir)
  return int(rows[-1]["env_steps"]) if rows else 0


@pytest.fixture(name="redis")
def fixture_redis(tmp_path):
  with local_redis.LocalRedisServer(str(tmp_path)) as server:
    yield server


def test_actor_hosts_and_a_learner_solve_cartpole_through_kills_and_restarts(tmp_path, redis):
  processes = Processes(tmp_path, os.environ)
  logdir = str(tmp_path / "learner")
  # Parameters every 0.05 s, read as often: at ~15K agent steps/s (90 updates/s) the default
  # 0.2 s left the actors' data ~10 updates old, and APPO's entropy collapsed before 600k.
  store_flags = [f"--trajectory_store={redis.url}", "--params_publish_interval_seconds=0.05"]
  # Each role its Redis user and password (store_roles).
  learner_args = [os.path.join(REPO, "experiments", "control.py"), f"--flagfile={FLAGFILE}",
                  *store_flags, "--redis_username=learner",
                  f"--redis_password_file={redis.learner_password_file}",
                  "--num_actor_threads=0",
                  f"--logdir={logdir}", f"--total_env_steps={BUDGET}", "--seed=0",
                  "--progress=false", "--log_interval_seconds=2", f"--store_capacity={CAPACITY}",
                  "--checkpoint_interval_minutes=0.25"]
  host_args = [os.path.join(REPO, "experiments", "actor_host.py"), f"--flagfile={FLAGFILE}",
               *store_flags, "--redis_username=actor",
               f"--redis_password_file={redis.actor_password_file}", "--network=mlp",
               "--unroll_length=10", "--batch_size=16", "--num_actor_threads=1", "--num_envs=8",
               "--status_interval_seconds=5", f"--store_capacity={CAPACITY}"]
  try:
    learner = processes.start("learner", learner_args)
    killed = processes.start("host_a", host_args + ["--seed=100"])
    processes.start("host_b", host_args + ["--seed=200"])

    # An actor host dies without a word: the learner goes on with the other.
    _wait_for(lambda: _steps(logdir) > 40_000, 300, "40k env steps")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    at_kill = _steps(logdir)
    _wait_for(lambda: _steps(logdir) > at_kill + 15_000, 120, "progress after the kill")

    # Redis restarts, empty: both sides reconnect, the learner publishes again.
    redis.stop()
    time.sleep(2)
    redis.start()
    at_restart = _steps(logdir)
    _wait_for(lambda: _steps(logdir) > at_restart + 15_000, 180, "progress after Redis")

    # The learner stops (SIGTERM: checkpoint) and resumes from its checkpoint.
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(timeout=60) == 0
    at_stop = _steps(logdir)
    learner = processes.start("learner_resumed", learner_args + ["--resume"])
    assert learner.wait(timeout=600) == 0, open(learner.log_path).read()[-3000:]
  finally:
    processes.close()

  rows = _metrics(logdir)
  assert int(rows[-1]["env_steps"]) >= BUDGET and at_stop > at_restart
  assert int(rows[-1]["updates"]) == BUDGET // 160  # The resumed run continued its count.
  solved = [r for r in rows if r["episode_return"] and float(r["episode_return"]) >= 475 and
            int(r["episodes"]) >= 5]
  assert solved, f"not solved; last rows {rows[-3:]}"
  # The actors outrun the learner: the store stays bounded and the drops are counted.
  assert all(int(r["store_length"]) <= CAPACITY for r in rows if r.get("store_length"))
  assert max(int(r["store_dropped"] or 0) for r in rows) > 0
