"""The flags of experiments/ and the configs of impala_jax/config.py stay one set of settings.

Every config field has a flag or a stated reason for none (experiments/config_flags.py); every
flag's default is its field's, unless a script chooses another; and parsing no flags gives the
config's defaults. Each script defines its flags when imported (absl's global FLAGS), so each is
checked in a process of its own.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from experiments import config_flags
from impala_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Flags whose default is not their field's, and why.
SWITCHES = {
    "listen": "unset: no env host server (the config's default is where one would listen)",
    "trajectory_store": "unset: no store",
    "coordinator_address": "$JAX_COORDINATOR_ADDRESS",
    "num_processes": "$JAX_NUM_PROCESSES",
    "process_id": "$JAX_PROCESS_ID",
}

_DEFAULTS_OF = r"""
import dataclasses, importlib, json, sys
sys.path.insert(0, sys.argv[1])
from absl import flags
importlib.import_module("experiments." + sys.argv[2])
flags.FLAGS(["prog"] + sys.argv[3:])
from experiments import common
config = common.config_from_flags()
values = {name: flags.FLAGS[name].value for name in flags.FLAGS}
print(json.dumps(dict(flags=values, config=dataclasses.asdict(config)), default=str))
"""


def _config_classes(cls=config_lib.TrainConfig, seen=None):
  """Every config dataclass reachable from `cls`'s fields, `cls` first."""
  seen = [] if seen is None else seen
  seen.append(cls)
  hints = {f.name: f.type for f in dataclasses.fields(cls)}
  for f in dataclasses.fields(cls):
    default = f.default
    nested = type(default) if dataclasses.is_dataclass(default) else None
    for candidate in (config_lib.RemoteEnvConfig, config_lib.TrajectoryStoreConfig,
                      config_lib.MultiHostConfig):
      if candidate.__name__ in str(hints[f.name]):
        nested = candidate
    if nested is not None and nested not in seen:
      _config_classes(nested, seen)
  return seen


def test_every_config_field_has_a_flag_or_a_reason_for_none():
  classes = _config_classes()
  assert set(classes) == set(config_flags.FIELD_FLAGS)
  for cls in classes:
    fields = {f.name for f in dataclasses.fields(cls)}
    with_flag = set(config_flags.FIELD_FLAGS[cls])
    without = set(config_flags.NOT_FLAGS.get(cls, {}))
    assert not with_flag & without, (cls.__name__, with_flag & without)
    assert with_flag | without == fields, (
        f"{cls.__name__}: fields {sorted(fields - with_flag - without)} have neither a flag "
        "nor a reason in experiments/config_flags.py; names there that are not fields: "
        f"{sorted((with_flag | without) - fields)}")


def _parse_defaults(script, *args):
  result = subprocess.run([sys.executable, "-c", _DEFAULTS_OF, REPO, script, *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def atari():
  return _parse_defaults("atari")


def test_each_flags_default_is_its_fields_unless_the_script_chose_one(atari):
  chosen = {"logdir", "num_envs", "num_actor_threads"}  # experiments/atari.py's own.
  for cls, fields in config_flags.FIELD_FLAGS.items():
    for field, flag in fields.items():
      if flag in SWITCHES or flag in chosen:
        continue
      expected = config_flags.default(cls, field)
      if isinstance(expected, tuple):
        expected = [str(v) for v in expected]
      assert atari["flags"][flag] == expected, (flag, cls.__name__, field)


def test_no_flags_give_the_configs_defaults(atari):
  defaults = dataclasses.asdict(config_lib.TrainConfig())
  parsed = atari["config"]
  for section in ("loss", "optimizer", "network", "popart", "value_limits"):
    assert parsed[section] == json.loads(json.dumps(defaults[section], default=str)), section
  assert parsed["remote_envs"] is None and parsed["trajectory_store"] is None
  assert parsed["batch_size"] == defaults["batch_size"]
  assert parsed["logdir"] == "runs/atari"
  env = dict(defaults["env"], num_envs=parsed["env"]["num_envs"])
  assert parsed["env"] == env


def test_off_is_unset_in_flags_as_none_in_configs(atari):
  for flag in ("env_batch_size", "max_episode_steps", "queue_capacity",
               "remote_max_envs_per_host", "coordinator_bind_address", "stop_at_score"):
    assert atari["flags"][flag] is None, flag
  assert atari["config"]["env"]["batch_size"] is None
  assert atari["config"]["queue_capacity"] is None


def test_a_script_default_for_an_unknown_flag_is_refused():
  from experiments import common  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"unknown flags: \['entropy_bonus'\]"):
    common._Defaults(dict(entropy_bonus=0.1))  # pylint: disable=protected-access


def test_a_list_of_games_and_unclipped_rewards_parse_into_the_env_config():
  parsed = _parse_defaults("atari", "--env=Pong-v5,Breakout-v5", "--num_actor_threads=4",
                           "--noreward_clip")
  env = parsed["config"]["env"]
  assert env["env_id"] == "Pong-v5,Breakout-v5" and env["reward_clip"] is False
  assert env["full_action_space"] is False  # Set per game, by EnvConfig.task_config.
  assert config_lib.EnvConfig(env["env_id"]).tasks == ("Pong-v5", "Breakout-v5")


def _two_games(**kwargs):
  return config_lib.TrainConfig(env=config_lib.EnvConfig("Pong-v5,Breakout-v5"), **kwargs)


def test_a_multi_task_run_needs_as_many_threads_for_every_game():
  assert _two_games(num_actor_threads=4).env.num_tasks == 2
  for threads in (1, 3):
    with pytest.raises(ValueError) as error:
      _two_games(num_actor_threads=threads)
    assert str(error.value) == (
        f"num_actor_threads={threads} does not split over the 2 games of "
        "--env=Pong-v5,Breakout-v5: thread k plays game k mod 2, so use a multiple of 2 (e.g. "
        "--num_actor_threads=2).")


@pytest.mark.parametrize("kwargs, flag", [
    (dict(remote_envs=config_lib.RemoteEnvConfig(listen="127.0.0.1:0")), "--listen"),
    (dict(num_actor_threads=0, trajectory_store=config_lib.TrajectoryStoreConfig(
        url="redis://127.0.0.1:6379/0")), "--trajectory_store"),
    (dict(multihost=config_lib.MultiHostConfig(coordinator_address="127.0.0.1:1234",
                                               num_processes=2, process_id=0)),
     "--num_processes > 1"),
])
def test_a_multi_task_run_refuses_remote_data_for_now(kwargs, flag):
  with pytest.raises(ValueError) as error:
    _two_games(**kwargs)
  assert str(error.value) == (
      "A multi-task run (--env=Pong-v5,Breakout-v5) plays on this process's own actor threads "
      f"only; {flag} is not supported with several games yet.")
