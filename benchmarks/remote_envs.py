r"""In-process actors against remote environment hosts and Redis actor hosts on loopback, at
equal total env count.

    python benchmarks/remote_envs.py                       # Pong-v5, 64 envs in each layout
    python benchmarks/remote_envs.py --total_envs=32 --window_seconds=60
    python benchmarks/remote_envs.py --layouts="in-process,redis 1 host,redis 2 hosts"

In one run, one after another, it trains with each layout until the learner's metrics.csv spans
the window from its first row after warm-up (on the learner's clock, which starts after its
imports):

  in-process      2 actor threads × total/2 envs (the default training layout)
  1 host          the learner with no actors, one env-host process with all the envs
  2 hosts         the learner with no actors, two env-host processes with half each
  redis 1 host    the learner with no actors, a private redis-server, one actor host
                  (experiments/actor_host.py: actors with their own CPU policy) with 2 actor
                  threads × total/2 envs
  redis 2 hosts   the same with two actor hosts, 1 thread × total/2 envs each

and reports agent steps/s after warm-up (the learner's consumption, from its metrics.csv), where
the learner's and actors' time goes, the policy lag (the mean, and the spread of the
per-row means: metrics.csv has one mean per row), and from the env hosts: bytes per agent step
each way on the wire and the round trip of one STEP (sent → ACTIONS back, which includes
waiting for the batched policy call); from the Redis layouts (benchmarks/store_layouts.py):
the encoded bytes of one unroll, unrolls dropped by the store's bound and stale ones dropped
by the learner, and about how fast the actor hosts produce. Every process runs on this
machine's cores, so remote layouts pay for their extra processes here; on separate machines
the hosts' EnvPool (and, for actor hosts, policy) work leaves the learner's CPUs.
"""

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import end_to_end
from benchmarks import report as report_lib
from benchmarks import store_layouts
from impala_jax import envs
from impala_jax.distributed import local_redis
from impala_jax.runtime import metrics
# pylint: enable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPTS = os.path.join(_REPO, "experiments")
# Env-host layout name → env hosts.
_ENV_HOSTS = {"1 host": 1, "2 hosts": 2}
LAYOUTS = ("in-process", *_ENV_HOSTS, *store_layouts.LAYOUTS)
# The flags that shape an unroll, given to the learner and the actor hosts alike: actor_host.py's
# defaults are atari.py's, so a control.py learner's must be spelled out (its defaults).
_UNROLL_FLAGS = {"atari.py": (), "control.py": ("--network=mlp", "--unroll_length=10")}
# Imports, compilation and the first metrics row, beyond warm-up + window.
_START_TIMEOUT_SECONDS = 300.0

flags.DEFINE_string("env", "Pong-v5", "EnvPool task id.")
flags.DEFINE_enum("learner_script", "", ["", *_UNROLL_FLAGS], "The training script; empty: "
                  "atari.py for Atari tasks, control.py for the others.")
flags.DEFINE_integer("total_envs", 64, "Environments in every layout.")
flags.DEFINE_list("layouts", list(LAYOUTS), f"Layouts to measure: {', '.join(LAYOUTS)}.")
flags.DEFINE_list("train_flags", ["--batch_size=8"], "Extra training flags for the learner "
                  "(and the Redis layouts' actor hosts, which share its flags).")
flags.DEFINE_float("warmup_seconds", 40.0, "Left out of the measurement (compilation).")
flags.DEFINE_float("window_seconds", 40.0, "Measured after warm-up.")
flags.DEFINE_float("log_interval_seconds", 5.0, "Seconds between the learner's metrics rows.")
flags.DEFINE_string("output", "benchmarks/results/remote_envs.json", "JSON report.")
flags.DEFINE_string("workdir", "", "Where the runs' logdirs go; empty: a new temporary folder.")


def _learner_script() -> str:
  f = flags.FLAGS
  atari = envs.env_family(f.env) is envs.EnvFamily.ATARI
  return f.learner_script or ("atari.py" if atari else "control.py")


def _wait_for_port(log_path: str, learner: subprocess.Popen, timeout: float = 180.0) -> int:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and learner.poll() is None:
    with open(log_path, errors="replace") as f:
      match = re.search(r"Serving env hosts on .* \(port (\d+)", f.read())
    if match:
      return int(match.group(1))
    time.sleep(0.5)
  raise RuntimeError(f"The learner did not start serving; see {log_path}.")


def _wall_seconds(csv_path: str) -> List[float]:
  try:
    return [r["wall_seconds"] for r in metrics.read_csv(csv_path)]
  except (ValueError, TypeError):  # A row caught half written: read again next time.
    return []


def _wait_for_metrics(csv_path: str, warmup_seconds: float, window_seconds: float,
                      procs: Sequence[subprocess.Popen]) -> None:
  """Waits until the learner's metrics.csv spans `window_seconds` from its first row at or
  after `warmup_seconds`, on the learner's clock: a sleep from launch would let the learner's
  imports and the hosts' start eat into the window. Fails if a process ends."""
  timeout = warmup_seconds + window_seconds + _START_TIMEOUT_SECONDS
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    for proc in procs:
      if proc.poll() is not None:
        raise RuntimeError(f"{os.path.basename(proc.args[1])} exited with {proc.returncode} "
                           f"during the run; see the logs next to {csv_path}.")
    walls = _wall_seconds(csv_path)
    start = next((w for w in walls if w >= warmup_seconds), None)
    if start is not None and walls[-1] >= start + window_seconds:
      return
    time.sleep(1.0)
  raise TimeoutError(f"{csv_path} did not span {window_seconds:.0f} s after warm-up within "
                     f"{timeout:.0f} s; see the logs next to it.")


def _start(args: Sequence[str], log_path: str) -> subprocess.Popen:
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                            cwd=_REPO)


def _stop_all(procs: List[subprocess.Popen]) -> None:
  for proc in procs:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
  for proc in procs:
    try:
      proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(timeout=30)


def _over_rows(rows: Sequence[end_to_end.Row], column: str) -> Dict[str, Optional[float]]:
  """p50, p95 and max of one column's per-row values (each a mean over its interval)."""
  values = [r[column] for r in rows if r.get(column) is not None]
  if not values:
    return dict(p50=None, p95=None, max=None)
  return dict(p50=float(np.percentile(values, 50)), p95=float(np.percentile(values, 95)),
              max=float(max(values)))


def _learner_args(layout: str, logdir: str, token_file: str) -> Tuple[List[str], List[str]]:
  """The learner's arguments in `layout`, less the Redis layouts' store flags; and the flags
  that shape an unroll, which the Redis layouts' actor hosts share with it."""
  f = flags.FLAGS
  script = _learner_script()
  shared_flags = [f"--env={f.env}", *_UNROLL_FLAGS[script], *f.train_flags]
  args = [os.path.join(_SCRIPTS, script), *shared_flags, f"--logdir={logdir}",
          "--progress=false", f"--log_interval_seconds={f.log_interval_seconds}",
          "--total_env_steps=100000000"]
  if layout in store_layouts.LAYOUTS:
    args += ["--num_actor_threads=0"]
  elif layout in _ENV_HOSTS:
    # One host may bring all of the layout's environments (the default is a fair share).
    args += ["--listen=127.0.0.1:0", f"--token_file={token_file}", "--num_actor_threads=0",
             f"--remote_max_envs_per_host={f.total_envs}"]
  else:
    args += ["--num_actor_threads=2", f"--num_envs={f.total_envs // 2}"]
  return args, shared_flags


def _start_env_hosts(count: int, logdir: str, token_file: str,
                     procs: List[subprocess.Popen]) -> None:
  """Starts `count` env hosts on the learner (`procs[0]`) once it serves; appends them to
  `procs` one by one, so that a failure part way still stops the ones started."""
  f = flags.FLAGS
  port = _wait_for_port(os.path.join(logdir, "learner.log"), procs[0])
  for i in range(count):
    procs.append(_start([
        os.path.join(_SCRIPTS, "env_host.py"), f"--learner=127.0.0.1:{port}",
        f"--token_file={token_file}", f"--env={f.env}", f"--num_envs={f.total_envs // count}",
        f"--seed={1000 * (i + 1)}", f"--stats_file={os.path.join(logdir, f'host{i}.json')}"],
        os.path.join(logdir, f"host{i}.log")))


def _run(layout: str, logdir: str, token_file: str) -> Dict[str, Any]:
  """Trains in `layout` until the learner's metrics.csv spans the window, then stops every
  process it started (redis-server last); returns the Redis store's URL in the Redis layouts."""
  f = flags.FLAGS
  env_hosts = _ENV_HOSTS.get(layout, 0)
  actor_hosts = store_layouts.LAYOUTS.get(layout, 0)
  learner_args, shared_flags = _learner_args(layout, logdir, token_file)
  result: Dict[str, Any] = {}
  with contextlib.ExitStack() as stack:
    server = None
    if actor_hosts:
      server = stack.enter_context(local_redis.LocalRedisServer(logdir))
      learner_args += store_layouts.store_flags(server)
      result["trajectory_store"] = server.url
    procs: List[subprocess.Popen] = []
    stack.callback(_stop_all, procs)  # Exits first: the processes stop before redis-server.
    procs.append(_start(learner_args, os.path.join(logdir, "learner.log")))
    if env_hosts:
      _start_env_hosts(env_hosts, logdir, token_file, procs)
    for i in range(actor_hosts):
      procs.append(_start(store_layouts.actor_host_args(
          _SCRIPTS, server, actor_hosts, i, f.total_envs, shared_flags),
          os.path.join(logdir, f"host{i}.log")))
    _wait_for_metrics(os.path.join(logdir, "metrics.csv"), f.warmup_seconds, f.window_seconds,
                      procs)
  return result


def _measurements(layout: str, logdir: str) -> Dict[str, Any]:
  """Throughput, time split and policy lag from the learner's metrics.csv after warm-up, and
  the env hosts' wire stats or the Redis store's numbers."""
  f = flags.FLAGS
  rows = metrics.read_csv(os.path.join(logdir, "metrics.csv"))
  summary = end_to_end.summarize_metrics(rows, f.warmup_seconds, f.warmup_seconds)
  span = [r for r in rows if r["wall_seconds"] > summary["measured_from_seconds"]]
  result = dict(env_steps_per_second=summary["env_steps_per_second"],
                time_fractions=summary["time_fractions"],
                inference_batch_size=summary["inference_batch_size"],
                inference_latency_ms=summary["inference_latency_ms"],
                policy_lag=summary["policy_lag"],
                policy_lag_over_rows=_over_rows(span, "policy_lag"))
  if "warning" in summary:
    result["warning"] = summary["warning"]
  for i in range(_ENV_HOSTS.get(layout, 0)):
    with open(os.path.join(logdir, f"host{i}.json")) as stats:
      result.setdefault("hosts", []).append(json.load(stats))
  if layout in store_layouts.LAYOUTS:
    with open(os.path.join(logdir, "config.json")) as config:
      unroll_length = json.load(config)["unroll_length"]
    result["store"] = store_layouts.summarize(rows, summary["measured_from_seconds"],
                                              unroll_length)
  return result


def measure_layout(layout: str, workdir: str) -> Dict[str, Any]:
  """One training run in `layout`; returns throughput, time split, policy lag, and the env
  hosts' wire stats or the Redis store's numbers."""
  logdir = os.path.join(workdir, layout.replace(" ", "_"))
  os.makedirs(logdir)
  result = _run(layout, logdir, os.path.join(workdir, "token"))
  result.update(_measurements(layout, logdir))
  return result


def _host_mean(result: Mapping[str, Any], key: str) -> Optional[float]:
  """One of the env hosts' stats, averaged over a layout's hosts; None without env hosts."""
  values = [h[key] for h in result.get("hosts") or [] if h.get(key) is not None]
  return sum(values) / len(values) if values else None


def _store(result: Mapping[str, Any], key: str) -> Any:
  return result.get("store", {}).get(key)


def _count(result: Mapping[str, Any], key: str) -> Optional[str]:
  value = _store(result, key)  # As text: the table's number format would print 0 as "0.000".
  return None if value is None else f"{value:,}"


def _lag(result: Mapping[str, Any], key: str) -> Optional[float]:
  return result.get("policy_lag_over_rows", {}).get(key)


def _table_rows(r: Mapping[str, Mapping[str, Any]]) -> List[Tuple[str, List[Any]]]:
  """The table's `(label, one value per layout)` rows from the report's layouts."""
  layouts = list(r)
  base = r.get("in-process", {}).get("env_steps_per_second")
  rows = [("env steps/s", [r[n]["env_steps_per_second"] for n in layouts]),
          ("÷ in-process", [r[n]["env_steps_per_second"] / base if base else None
                            for n in layouts]),
          # Env hosts: STEP messages; actor hosts: one unroll's bytes ÷ its T new steps.
          ("bytes/step host→learner", [_host_mean(r[n], "bytes_per_step_sent")
                                       or _store(r[n], "bytes_per_step") for n in layouts]),
          ("bytes/step learner→host", [_host_mean(r[n], "bytes_per_step_received")
                                       for n in layouts]),
          ("bytes/unroll via Redis", [_store(r[n], "bytes_per_unroll") for n in layouts]),
          ("STEP round trip ms, mean", [_host_mean(r[n], "round_trip_ms_mean")
                                        for n in layouts]),
          ("  p50", [_host_mean(r[n], "round_trip_ms_p50") for n in layouts]),
          ("  p95", [_host_mean(r[n], "round_trip_ms_p95") for n in layouts]),
          ("inference batch size", [r[n]["inference_batch_size"] for n in layouts]),
          ("inference latency ms", [r[n]["inference_latency_ms"] for n in layouts]),
          ("policy lag (updates)", [r[n]["policy_lag"] for n in layouts]),
          ("  p50 of row means", [_lag(r[n], "p50") for n in layouts]),
          ("  p95 of row means", [_lag(r[n], "p95") for n in layouts]),
          ("  max of row means", [_lag(r[n], "max") for n in layouts]),
          ("actor hosts' steps/s, about", [_store(r[n], "hosts_env_steps_per_second")
                                           for n in layouts]),
          ("unrolls consumed (window)", [_count(r[n], "unrolls_consumed_window")
                                         for n in layouts]),
          ("dropped by store bound", [_count(r[n], "unrolls_dropped_by_store_window")
                                      for n in layouts]),
          ("  whole run", [_count(r[n], "unrolls_dropped_by_store_run") for n in layouts]),
          ("stale, dropped by learner", [_count(r[n], "stale_unrolls_window")
                                         for n in layouts]),
          ("  whole run", [_count(r[n], "stale_unrolls_run") for n in layouts]),
          ("rejected blobs (run)", [_count(r[n], "rejected_blobs_run") for n in layouts])]
  phases = sorted({k for n in layouts for k in r[n]["time_fractions"]})
  return rows + [(f"time {k}", [r[n]["time_fractions"].get(k) for n in layouts])
                 for k in phases]


def format_table(report: Dict[str, Any]) -> str:
  """The printed table: one column per layout."""
  r, s = report["layouts"], report["settings"]
  lines = report_lib.table(
      f"{s['env']} ({s['learner_script']}), {s['total_envs']} envs per layout, "
      f"{s['window_seconds']:.0f} s after {s['warmup_seconds']:.0f} s warm-up; counts of "
      "unrolls are in the window unless marked", list(r), _table_rows(r))
  return "\n".join(lines + [f"  warning ({n}): {r[n]['warning']}"
                            for n in r if "warning" in r[n]])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  unknown = sorted(set(f.layouts) - set(LAYOUTS))
  if unknown:
    raise app.UsageError(f"Unknown --layouts {unknown}; accepted: {', '.join(LAYOUTS)}.")
  if f.workdir:
    os.makedirs(f.workdir, exist_ok=True)
  workdir = f.workdir or tempfile.mkdtemp(prefix="impala_jax_remote_")
  token_path = os.path.join(workdir, "token")
  with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as token:
    token.write(secrets.token_hex(16))
  report = dict(settings=dict(env=f.env, learner_script=_learner_script(),
                              total_envs=f.total_envs, train_flags=f.train_flags,
                              warmup_seconds=f.warmup_seconds,
                              window_seconds=f.window_seconds,
                              log_interval_seconds=f.log_interval_seconds),
                machine=report_lib.machine_info(), layouts={})
  for layout in f.layouts:
    print(f"{layout}: at least {f.warmup_seconds + f.window_seconds:.0f} s", flush=True)
    report["layouts"][layout] = measure_layout(layout, workdir)
  print(format_table(report))
  report_lib.write_json(f.output, report)
  print(f"Wrote {f.output} (runs in {workdir})")


if __name__ == "__main__":
  app.run(main)
