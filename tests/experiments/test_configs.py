"""Every named configuration in experiments/configs/ builds a valid `TrainConfig`.

A flagfile is only read when someone runs it; a renamed flag or a value a config now rejects
would otherwise surface in a user's first command. Each file is parsed by the script its
header names, through the same flags → config path as a real run (experiments/common.py).
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "experiments", "configs", "*.flags")))
_COMMAND = re.compile(r"^#\s+python (experiments/\w+\.py) --flagfile=(experiments/configs/\S+)$")

# Parses each flagfile with the named script's flags, builds the config, and prints what the
# test checks. One process for all files: importing JAX dominates; flags are reset in between.
_PARSE_ALL = r"""
import importlib, json, sys
import envpool
from absl import flags
sys.path.insert(0, sys.argv[1])
from experiments import common
from impala_jax.envs import custom_copies

def known_env(env_id):  # An EnvPool task, or a `module.path:factory` that imports.
  if custom_copies.SEPARATOR in env_id:
    return callable(custom_copies.load_factory(env_id))
  return env_id in envpool.list_all_envs()

results = {}
for script, flagfile in json.loads(sys.argv[2]):
  before = set(flags.FLAGS)
  module = sys.modules.get("experiments." + script)
  if module is None:  # Importing (or reloading) the script defines its flags and defaults.
    importlib.import_module("experiments." + script)
  else:
    importlib.reload(module)
  flags.FLAGS(["prog", "--flagfile=" + flagfile])
  config = common.config_from_flags()
  # A multi-task config lists several games (`EnvConfig.tasks`): each must be EnvPool's.
  results[flagfile] = dict(script=script, env_id=config.env.env_id,
                           known_env=all(known_env(task) for task in config.env.tasks),
                           use_lstm=config.network.use_lstm,
                           objective=config.loss.objective, total_env_steps=config.total_env_steps,
                           reward_clip=config.env.reward_clip, popart=config.popart.enabled,
                           popart_tasks=config.popart.num_tasks)
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)  # The next script defines them again with its own defaults.
print(json.dumps(results))
"""


def _header_command(path):
  with open(path) as f:
    for line in f:
      match = _COMMAND.match(line.strip())
      if match:
        return match.groups()
  return None


def test_there_are_named_configurations():
  names = {os.path.basename(c) for c in CONFIGS}
  assert {"atari_paper.flags", "pong_impala.flags", "cartpole_appo.flags"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_header_names_the_command_that_runs_the_file(path):
  command = _header_command(path)
  assert command is not None, f"{path}: no '#   python experiments/<script>.py --flagfile=...'"
  script, flagfile = command
  assert os.path.exists(os.path.join(REPO, script))
  assert os.path.join(REPO, flagfile) == path


def test_every_configuration_builds_a_valid_config():
  jobs = []
  for path in CONFIGS:
    script, _ = _header_command(path)
    jobs.append((os.path.splitext(os.path.basename(script))[0], path))
  result = subprocess.run([sys.executable, "-c", _PARSE_ALL, REPO, json.dumps(jobs)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  parsed = json.loads(result.stdout.strip().splitlines()[-1])
  assert sorted(parsed) == CONFIGS
  for path, summary in parsed.items():
    assert summary["known_env"], f"{path}: unknown environment {summary['env_id']}"
    assert summary["total_env_steps"] > 0
  assert parsed[os.path.join(REPO, "experiments", "configs", "pong_appo.flags")][
      "objective"] == "appo"
  memory = {name: parsed[os.path.join(REPO, "experiments", "configs", f"memory_{name}.flags")]
            for name in ("lstm", "ff")}
  assert memory["lstm"]["use_lstm"] and not memory["ff"]["use_lstm"]
  multitask = {variant: parsed[os.path.join(REPO, "experiments", "configs",
                                            f"multitask_{variant}.flags")]
               for variant in ("clipped", "unclipped", "popart")}
  assert {(m["reward_clip"], m["popart"]) for m in multitask.values()} == {
      (True, False), (False, False), (False, True)}
  assert multitask["popart"]["popart_tasks"] == 3  # One set of statistics per game.


def test_the_multitask_variants_differ_only_in_reward_clipping_and_popart():
  # benchmarks/multitask.py compares them at equal budgets: nothing else may differ.
  variant_flags = re.compile(r"^--(no)?(reward_clip|popart)(_step_size=.*)?$|^--logdir=")
  settings = []
  for variant in ("clipped", "unclipped", "popart"):
    with open(os.path.join(REPO, "experiments", "configs", f"multitask_{variant}.flags")) as f:
      lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    settings.append([line for line in lines if not variant_flags.match(line)])
  assert settings[0] == settings[1] == settings[2]
  assert "--env=Pong-v5,Breakout-v5,SpaceInvaders-v5" in settings[0]


def test_the_preset_follows_the_backend():
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  try:
    import presets  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  gpu = os.path.join("experiments", "configs", "pong_gpu.flags")
  assert presets.preset_for_backend("gpu") == presets.preset_for_backend("tpu") == gpu
  assert presets.preset_for_backend("cpu") == os.path.join("experiments", "configs",
                                                           "pong_impala.flags")
  assert all(os.path.exists(os.path.join(REPO, p)) for p in presets.PRESETS.values())


def _make_train(**variables):
  """`make train` with `--helpshort` (prints the script's help, trains nothing)."""
  args = [f"{k}={v}" for k, v in variables.items()]
  env = {k: v for k, v in os.environ.items() if k != "TRAIN_FLAGS"}
  out = subprocess.run(["make", "--no-print-directory", "train", "ARGS=--helpshort", *args],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  return out.stdout + out.stderr


def test_make_train_says_which_preset_it_chose_and_runs_it():
  output = _make_train()  # The tests run on the CPU backend.
  assert "JAX's default backend is cpu" in output
  assert "make train runs experiments/configs/pong_impala.flags" in output
  assert "experiments/atari.py --flagfile=experiments/configs/pong_impala.flags" in output
  assert "IMPALA on Atari" in output  # The script itself ran (its help).
  chosen = _make_train(TRAIN_FLAGS="experiments/configs/atari_paper.flags")
  assert "experiments/atari.py --flagfile=experiments/configs/atari_paper.flags" in chosen
  assert "default backend" not in chosen  # An explicit choice asks no one.
