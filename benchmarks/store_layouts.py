"""The Redis layouts of benchmarks/remote_envs.py: actor hosts' flags and the store's summary.

  redis 1 host    the learner with no actors (--trajectory_store), one actor host
                  (experiments/actor_host.py) with 2 actor threads × total/2 envs
  redis 2 hosts   the same with two actor hosts, 1 thread × total/2 envs each

Both have the in-process layout's 2 actor threads and total env count; the actor hosts act
with their own CPU copy of the policy and push unrolls to a private redis-server
(impala_jax/distributed/local_redis.py), which the learner pops from.

From the learner's metrics.csv (`summarize`): the encoded size of one unroll as it crosses
Redis (the `bytes_per_unroll` the learner measures on the blobs it pops), the unrolls the
store's bound dropped (RPUSH + LTRIM, oldest first) and the stale ones the learner dropped
(older than --max_policy_lag), and about how fast the actor hosts produce: consumed + dropped
+ stale + rejected + the store's growth, per second. Production well above consumption with
drops means the learner is the limit; the learner waiting for batches means the hosts are.
"""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from impala_jax.distributed import local_redis

# Layout name → actor hosts.
LAYOUTS = {"redis 1 host": 1, "redis 2 hosts": 2}
# Actor threads over all hosts: the in-process layout's.
TOTAL_ACTOR_THREADS = 2


def store_flags(server: local_redis.LocalRedisServer, role: str = "learner") -> List[str]:
  """What the learner (or, with role "actor", an actor host) needs to reach `server`: its
  Redis user and that user's password, by file."""
  return [f"--trajectory_store={server.url}", f"--redis_username={role}",
          f"--redis_password_file={getattr(server, f'{role}_password_file')}"]


def actor_host_args(script_dir: str, server: local_redis.LocalRedisServer, hosts: int,
                    index: int, total_envs: int, shared_flags: Sequence[str]) -> List[str]:
  """experiments/actor_host.py's arguments for host `index` of `hosts`.

  `shared_flags` are the learner's flags that shape an unroll (env, network, T and the
  benchmark's extra training flags): the host takes them from the learner anyway, and
  refuses to start if they differ.
  """
  threads = max(1, TOTAL_ACTOR_THREADS // hosts)
  return [os.path.join(script_dir, "actor_host.py"), *shared_flags,
          *store_flags(server, role="actor"),
          f"--num_actor_threads={threads}", f"--num_envs={total_envs // (hosts * threads)}",
          f"--seed={1000 * (index + 1)}", "--status_interval_seconds=10"]


def _count(row: Mapping[str, Optional[float]], column: str) -> Optional[int]:
  value = row.get(column)  # metrics.csv's cells are read as floats; these count unrolls.
  return None if value is None else int(value)


def _delta(first: Mapping[str, Optional[float]], last: Mapping[str, Optional[float]],
           column: str) -> Optional[int]:
  a, b = _count(first, column), _count(last, column)
  return None if a is None or b is None else b - a


def summarize(rows: Sequence[Mapping[str, Optional[float]]], measured_from_seconds: float,
              unroll_length: int) -> Dict[str, Any]:
  """The store's numbers from the learner's metrics.csv rows.

  Window counts run from the row at `measured_from_seconds` (the throughput span's first) to
  the last row; `*_run` counts cover the whole run, warm-up included (while the learner
  compiles, the hosts fill the store and its bound drops the overflow).

  Args:
    rows: the learner's metrics.csv rows (`runtime.metrics.read_csv`).
    measured_from_seconds: `wall_seconds` of the span's first row.
    unroll_length: T; an unroll carries T new agent steps (and one to bootstrap from).
  """
  first = next(r for r in rows if r["wall_seconds"] >= measured_from_seconds)
  last = rows[-1]
  seconds = last["wall_seconds"] - first["wall_seconds"]
  consumed = int(last["env_steps"] - first["env_steps"]) // unroll_length
  dropped, stale = _delta(first, last, "store_dropped"), _delta(first, last, "stale_unrolls")
  rejected = _delta(first, last, "rejected_blobs")
  growth = _delta(first, last, "store_length")
  parts = (dropped, stale, rejected, growth)
  produced = None if None in parts or seconds <= 0 else consumed + sum(parts)
  bytes_per_unroll = last.get("bytes_per_unroll")
  return dict(
      bytes_per_unroll=bytes_per_unroll,
      bytes_per_step=bytes_per_unroll / unroll_length if bytes_per_unroll else None,
      unroll_length=unroll_length,
      unrolls_consumed_window=consumed,
      unrolls_dropped_by_store_window=dropped,
      stale_unrolls_window=stale,
      rejected_blobs_window=rejected,
      unrolls_dropped_by_store_run=_count(last, "store_dropped"),
      stale_unrolls_run=_count(last, "stale_unrolls"),
      rejected_blobs_run=_count(last, "rejected_blobs"),
      store_length_last=_count(last, "store_length"),
      # About: a batch the learner has half popped at a row is in neither count.
      hosts_env_steps_per_second=(produced * unroll_length / seconds
                                  if produced is not None else None))
