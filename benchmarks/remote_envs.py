r"""In-process actors against remote environment hosts on loopback, at equal total env count.

    python benchmarks/remote_envs.py                       # Pong-v5, 64 envs in each layout
    python benchmarks/remote_envs.py --total_envs=32 --window_seconds=60

In one run, one after another, it trains with each layout for warm-up + window seconds:

  in-process   2 actor threads × total/2 envs (the default training layout)
  1 host       the learner with no actors, one env-host process with all the envs
  2 hosts      the learner with no actors, two env-host processes with half each

and reports agent steps/s after warm-up (from the learner's metrics.csv), where the learner's
and actors' time goes, and from the hosts: bytes per agent step each way on the wire and the
round trip of one STEP (sent → ACTIONS back, which includes waiting for the batched policy
call). Every process runs on this machine's cores, so remote layouts pay for their extra
processes here; on separate machines the hosts' EnvPool work leaves the learner's CPUs.
"""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import end_to_end
from benchmarks import report as report_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = ("in-process", "1 host", "2 hosts")

flags.DEFINE_string("env", "Pong-v5", "EnvPool task id.")
flags.DEFINE_integer("total_envs", 64, "Environments in every layout.")
flags.DEFINE_list("layouts", list(LAYOUTS), f"Layouts to measure: {', '.join(LAYOUTS)}.")
flags.DEFINE_list("train_flags", ["--batch_size=8"], "Extra flags for the learner.")
flags.DEFINE_float("warmup_seconds", 40.0, "Left out of the measurement (compilation).")
flags.DEFINE_float("window_seconds", 40.0, "Measured after warm-up.")
flags.DEFINE_string("output", "benchmarks/results/remote_envs.json", "JSON report.")


def _wait_for_port(log_path: str, timeout: float = 180.0) -> int:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with open(log_path, errors="replace") as f:
      match = re.search(r"Serving env hosts on .* \(port (\d+)\)", f.read())
    if match:
      return int(match.group(1))
    time.sleep(0.5)
  raise RuntimeError(f"The learner did not start serving; see {log_path}.")


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
      proc.wait()


def measure_layout(layout: str, workdir: str) -> Dict[str, Any]:
  """One training run in `layout`; returns throughput, time split and the hosts' wire stats."""
  f = flags.FLAGS
  hosts = {"in-process": 0, "1 host": 1, "2 hosts": 2}[layout]
  logdir = os.path.join(workdir, layout.replace(" ", "_"))
  os.makedirs(logdir)
  token_file = os.path.join(workdir, "token")
  learner_args = [os.path.join(_REPO, "experiments", "atari.py"), f"--env={f.env}",
                  f"--logdir={logdir}", "--progress=false", "--log_interval_seconds=5",
                  "--total_env_steps=100000000", *f.train_flags]
  if hosts:
    learner_args += ["--listen=127.0.0.1:0", f"--token_file={token_file}",
                     "--num_actor_threads=0"]
  else:
    learner_args += ["--num_actor_threads=2", f"--num_envs={f.total_envs // 2}"]
  procs = [_start(learner_args, os.path.join(logdir, "learner.log"))]
  try:
    if hosts:
      port = _wait_for_port(os.path.join(logdir, "learner.log"))
      for i in range(hosts):
        procs.append(_start([
            os.path.join(_REPO, "experiments", "env_host.py"), f"--learner=127.0.0.1:{port}",
            f"--token_file={token_file}", f"--env={f.env}", f"--num_envs={f.total_envs // hosts}",
            f"--seed={1000 * (i + 1)}", f"--stats_file={os.path.join(logdir, f'host{i}.json')}"],
            os.path.join(logdir, f"host{i}.log")))
    time.sleep(f.warmup_seconds + f.window_seconds)
  finally:
    _stop_all(procs)
  rows = end_to_end.read_metrics_csv(os.path.join(logdir, "metrics.csv"))
  summary = end_to_end.summarize_metrics(rows, f.warmup_seconds, f.warmup_seconds)
  result = dict(env_steps_per_second=summary["env_steps_per_second"],
                time_fractions=summary["time_fractions"],
                inference_batch_size=summary["inference_batch_size"],
                inference_latency_ms=summary["inference_latency_ms"],
                policy_lag=summary["policy_lag"])
  if hosts:
    result["hosts"] = [json.load(open(os.path.join(logdir, f"host{i}.json")))
                       for i in range(hosts)]
  return result


def format_table(report: Dict[str, Any]) -> str:
  layouts = list(report["layouts"])
  r = report["layouts"]
  base = r.get("in-process", {}).get("env_steps_per_second")

  def host_mean(name, key):
    hosts = r[name].get("hosts")
    values = [h[key] for h in hosts or [] if h.get(key) is not None]
    return sum(values) / len(values) if values else None

  rows = [("env steps/s", [r[n]["env_steps_per_second"] for n in layouts]),
          ("÷ in-process", [r[n]["env_steps_per_second"] / base if base else None
                            for n in layouts]),
          ("bytes/step host→learner", [host_mean(n, "bytes_per_step_sent") for n in layouts]),
          ("bytes/step learner→host", [host_mean(n, "bytes_per_step_received")
                                       for n in layouts]),
          ("STEP round trip ms, mean", [host_mean(n, "round_trip_ms_mean") for n in layouts]),
          ("  p50", [host_mean(n, "round_trip_ms_p50") for n in layouts]),
          ("  p95", [host_mean(n, "round_trip_ms_p95") for n in layouts]),
          ("inference batch size", [r[n]["inference_batch_size"] for n in layouts]),
          ("inference latency ms", [r[n]["inference_latency_ms"] for n in layouts]),
          ("policy lag (updates)", [r[n]["policy_lag"] for n in layouts])]
  phases = sorted({k for n in layouts for k in r[n]["time_fractions"]})
  rows += [(f"time {k}", [r[n]["time_fractions"].get(k) for n in layouts]) for k in phases]
  s = report["settings"]
  return "\n".join(report_lib.table(
      f"{s['env']}, {s['total_envs']} envs per layout, {s['window_seconds']:.0f} s after "
      f"{s['warmup_seconds']:.0f} s warm-up", layouts, rows))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  unknown = sorted(set(f.layouts) - set(LAYOUTS))
  if unknown:
    raise app.UsageError(f"Unknown --layouts {unknown}; accepted: {', '.join(LAYOUTS)}.")
  workdir = tempfile.mkdtemp(prefix="impala_jax_remote_")
  token_path = os.path.join(workdir, "token")
  with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as token:
    token.write(secrets.token_hex(16))
  report = dict(settings=dict(env=f.env, total_envs=f.total_envs, train_flags=f.train_flags,
                              warmup_seconds=f.warmup_seconds,
                              window_seconds=f.window_seconds),
                machine=report_lib.machine_info(), layouts={})
  for layout in f.layouts:
    print(f"{layout}: {f.warmup_seconds + f.window_seconds:.0f} s", flush=True)
    report["layouts"][layout] = measure_layout(layout, workdir)
  print(format_table(report))
  os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
  with open(f.output, "w") as out:
    json.dump(report, out, indent=2)
  print(f"Wrote {f.output} (runs in {workdir})")


if __name__ == "__main__":
  app.run(main)
