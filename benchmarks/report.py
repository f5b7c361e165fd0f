"""The report: the machine's description, the ratios between measurements, the printed table.

`format_report` prints absolute numbers and ratios (end-to-end ÷ raw EnvPool, end-to-end ÷
learner-only capacity, project learner ÷ reference learner). Frames = env steps ×
frame_skip (4) on Atari only.
"""

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import psutil


def machine_info() -> Dict[str, Any]:
  """What the numbers were measured on, and how busy the machine was."""
  return dict(
      cpu_count=os.cpu_count(),
      memory_gb=psutil.virtual_memory().total / 2**30,
      load_average_1min_at_start=os.getloadavg()[0],
      platform=platform.platform(),
      python=platform.python_version(),
      jax_backend=jax.default_backend(),
      jax_devices=[str(d) for d in jax.devices()],
      versions={name: _version(name)
                for name in ("jax", "jaxlib", "flax", "optax", "envpool", "numpy")},
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=shlex.join([sys.executable] + sys.argv))


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
  if numerator is None or not denominator:
    return None
  return numerator / denominator


def ratios(report: Mapping[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
  """The report's `ratios` entry, from its `raw`, `e2e` and `learner` results (any may be
  missing: a ratio whose denominator was not measured is None)."""
  raw_speed = report.get("raw", {}).get("env_steps_per_second")
  e2e = report.get("e2e", {})
  learner = report.get("learner", {})
  return dict(
      end_to_end_over_raw_envpool={
          n: _ratio(r["env_steps_per_second"], raw_speed) for n, r in e2e.items()},
      # How close training gets to what the learner alone could consume (> 1 is impossible
      # in the steady state; ≪ 1 means the actors or the CPU share are the limit).
      end_to_end_over_learner_only={
          n: _ratio(r["env_steps_per_second"],
                    learner.get(n, {}).get("project", {}).get("samples_per_second"))
          for n, r in e2e.items()},
      learner_project_over_reference={
          n: r["project_over_reference"] for n, r in learner.items()})


def format_value(value: Any) -> str:
  """A table cell: "-" for none, text as it is, a number to three significant places or so."""
  if value is None:
    return "-"
  if isinstance(value, str):
    return value
  if not math.isfinite(value):
    return str(value)
  if abs(value) >= 100:
    return f"{value:,.0f}"
  if abs(value) >= 1:
    return f"{value:.2f}"
  return f"{value:.3f}"


def table(title: str, columns: Sequence[str], rows: Sequence[Tuple[str, Sequence[Any]]]
           ) -> List[str]:
  """A plain-text table: a title, a header of `columns`, then `(label, values)` rows."""
  width = max([len(label) for label, _ in rows] + [0])
  lines = [title, "  " + " " * width + "".join(f"{c:>14}" for c in columns)]
  for label, values in rows:
    lines.append("  " + label.ljust(width) + "".join(f"{format_value(v):>14}" for v in values))
  return lines


def format_report(report: Mapping[str, Any]) -> str:
  """The printed summary of a `run_benchmarks` report."""
  s, m = report["settings"], report["machine"]
  lines = [
      f"impala_jax throughput: {s['env']}, {s['num_actor_threads']} actor thread(s) × "
      f"{s['num_envs']} envs, T={s['unroll_length']}, B={s['batch_size']}",
      f"{m['cpu_count']} CPUs (load {m['load_average_1min_at_start']:.1f} at start), "
      f"jax {m['versions']['jax']} on {', '.join(m['jax_devices'])}, envpool "
      f"{m['versions']['envpool']}, {m['date']}", ""]
  raw = report.get("raw")
  if raw:
    lines += table("Raw EnvPool (random actions, async send/recv)", ["env steps/s", "frames/s"],
                   [("", [raw["env_steps_per_second"], raw["frames_per_second"]])])
    lines.append("")
  sections = (("e2e", _e2e_table), ("learner", _learner_table), ("inference", _inference_table),
              ("pipeline", _pipeline_table))
  for key, section_table in sections:
    if report.get(key):
      lines += section_table(report, s)
      lines.append("")
  return "\n".join(lines)


def _e2e_table(report: Mapping[str, Any], s: Mapping[str, Any]) -> List[str]:
  e2e = report["e2e"]
  names = list(e2e)
  phases = sorted({k for r in e2e.values() for k in r["time_fractions"]},
                  key=lambda k: (not k.startswith("actor_"), k))
  rows = [("env steps/s", [e2e[n]["env_steps_per_second"] for n in names]),
          ("frames/s", [e2e[n]["frames_per_second"] for n in names]),
          ("÷ raw EnvPool", [report["ratios"]["end_to_end_over_raw_envpool"].get(n)
                             for n in names]),
          ("÷ learner-only capacity",
           [report["ratios"]["end_to_end_over_learner_only"].get(n) for n in names]),
          ("updates (whole run)", [e2e[n]["updates"] for n in names]),
          ("where the time goes:", [""] * len(names))]
  rows += [(f"  {k}", [e2e[n]["time_fractions"].get(k) for n in names]) for k in phases]
  rows += [(f"  {role} total", [e2e[n]["time_fraction_totals"][role] for n in names])
           for role in ("actor", "learner")]
  rows += [("inference batch size", [e2e[n]["inference_batch_size"] for n in names]),
           ("inference latency ms", [e2e[n]["inference_latency_ms"] for n in names]),
           ("policy lag (updates)", [e2e[n]["policy_lag"] for n in names]),
           ("peak RSS MB", [e2e[n]["memory"]["peak_rss_mb"] for n in names]),
           ("RSS growth % (means)", [e2e[n]["memory"]["growth_percent"] for n in names]),
           ("RSS growth % (peaks)",
            [e2e[n]["memory"]["peak_growth_percent"] for n in names]),
           ("  from minute", [e2e[n]["memory"]["from_seconds"] / 60 for n in names]),
           ("  to minute", [e2e[n]["memory"]["to_seconds"] / 60 for n in names])]
  lines = table(f"End-to-end training ({s['e2e_window_seconds']:.0f} s after "
                 f"{s['warmup_seconds']:.0f} s warm-up)", names, rows)
  return lines + [f"  warning ({n}): {e2e[n]['warning']}" for n in names if "warning" in e2e[n]]


def _learner_table(report: Mapping[str, Any], s: Mapping[str, Any]) -> List[str]:
  learner = report["learner"]
  names = list(learner)
  split_keys = list(next(iter(learner.values()))["project"]["ms_per_update_split"])
  rows = [("project samples/s", [learner[n]["project"]["samples_per_second"] for n in names]),
          ("reference samples/s", [learner[n]["reference"]["samples_per_second"] for n in names]),
          ("project ÷ reference", [learner[n]["project_over_reference"] for n in names]),
          ("project ms/update", [learner[n]["project"]["ms_per_update"] for n in names])]
  rows += [(f"  {k}", [learner[n]["project"]["ms_per_update_split"][k] for n in names])
           for k in split_keys]
  rows += [("reference ms/update", [learner[n]["reference"]["ms_per_update"] for n in names]),
           ("first loss, project", [learner[n]["first_loss"]["project"] for n in names]),
           ("first loss, reference", [learner[n]["first_loss"]["reference"] for n in names]),
           ("  relative difference",
            [f"{learner[n]['first_loss']['relative_difference']:.1e}" for n in names])]
  return table(f"Learner only ({s['batch_size']} unrolls × {s['unroll_length']} steps, "
                f"{s['learner_iters']} timed updates)", names, rows)


def _inference_table(report: Mapping[str, Any], s: Mapping[str, Any]) -> List[str]:
  infer = report["inference"]
  names = list(infer)
  rows = []
  for size in s["inference_batch_sizes"]:
    per = [infer[n]["batch_sizes"][str(size)] for n in names]
    rows += [(f"batch {size}: samples/s", [p["samples_per_second"] for p in per]),
             ("  latency ms (client)", [p["latency_ms"] for p in per]),
             ("  latency ms (server)", [p["server_latency_ms"] for p in per])]
  return table(f"Inference only (one client thread, {s['inference_calls']} calls per "
                "size)", names, rows)


def _pipeline_table(report: Mapping[str, Any], s: Mapping[str, Any]) -> List[str]:
  p = report["pipeline"]
  rows = [("agent steps/s", [p["env_steps_per_second"]]),
          ("host CPU µs per agent step", [p["host_us_per_step"]]),
          ("inference: envs per call", [p.get("inference_batch_size")]),
          ("  requests per call", [p.get("inference_requests_per_batch")]),
          ("  ms per call", [p.get("inference_latency_ms")]),
          ("  by stage (CPU µs per step):", [""])]
  rows += [(f"    {k}", [v]) for k, v in p["stage_us_per_step"].items()]
  rows += [("  wall fraction per thread:", [""])]
  rows += [(f"    {k}", [v]) for k, v in p["wall_fractions"].items()]
  return table(f"Host pipeline (synthetic envs, nearly free network, {p['num_actor_threads']} "
               f"threads × {p['envs_per_thread']} envs, recv {p['recv_batch_size']}, "
               f"{s['window_seconds']:.0f} s after {s['pipeline_warmup_seconds']:.0f} s)",
               [""], rows)


def write_json(path: str, report: Any) -> None:
  """Writes `report` as indented JSON to `path`, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as out:
    json.dump(report, out, indent=2)
