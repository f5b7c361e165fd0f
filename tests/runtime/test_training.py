"""End-to-end tests of the training system (impala_jax.runtime.training) on real EnvPool tasks."""

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import learning
from impala_jax import networks
from impala_jax.evaluation import policy as policy_lib
from impala_jax.runtime import checkpoint as checkpoint_lib
from impala_jax.runtime import training as runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_metrics(logdir):
  with open(os.path.join(logdir, "metrics.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _no_stray_threads():
  names = [t.name for t in threading.enumerate()]
  return not any(n.startswith("actor-") or n == "inference-server" for n in names), names


def small_pong_config(logdir, **kwargs):
  return config_lib.TrainConfig(
      env=config_lib.EnvConfig("Pong-v5", num_envs=4, seed=1),
      network=config_lib.NetworkConfig("shallow"),
      num_actor_threads=2, unroll_length=20, batch_size=8, queue_capacity=16,
      total_env_steps=2_000, logdir=str(logdir), log_interval_seconds=0.5, **kwargs)


def test_short_pong_run_writes_metrics_and_checkpoint_and_resumes(tmp_path):
  config = small_pong_config(tmp_path / "pong")
  summary = runtime.train(config, show_progress=False)
  assert summary.stop_reason == "completed"
  assert summary.env_steps >= 2_000
  rows = read_metrics(config.logdir)
  for column in ("env_steps", "episode_return", "steps_per_second", "policy_lag", "loss",
                 "policy_loss", "baseline_loss", "entropy_loss"):
    assert column in rows[0]
  assert int(rows[-1]["env_steps"]) == summary.env_steps
  assert all(np.isfinite(float(r["loss"])) for r in rows)
  checkpoints = os.listdir(os.path.join(config.logdir, "checkpoints"))
  assert str(summary.updates) in checkpoints
  assert os.listdir(os.path.join(config.logdir, "tb"))  # TensorBoard event file

  # A crash after the last checkpoint leaves rows it will not cover; the resumed run drops them.
  first_session = rows
  with open(os.path.join(config.logdir, "metrics.csv"), "a") as f:
    f.write(f"{summary.env_steps + 10_000},999999.0\n")
  with open(os.path.join(config.logdir, "episodes.csv"), "a") as f:
    f.write(f"{summary.env_steps + 10_000},999999.0,-21.0,800\n")

  # Resume: the step count and the clock continue from the checkpoint.
  resumed = runtime.train(
      dataclasses.replace(config, resume=True, total_env_steps=summary.env_steps + 800),
      show_progress=False)
  assert resumed.env_steps == summary.env_steps + 800
  assert resumed.updates == summary.updates + 800 // config.steps_per_update
  rows = read_metrics(config.logdir)
  assert int(rows[-1]["env_steps"]) == resumed.env_steps
  steps = [int(r["env_steps"]) for r in rows]
  assert steps == sorted(steps) and len(rows) > len(first_session)
  wall = [float(r["wall_seconds"]) for r in rows]
  assert wall == sorted(wall) and wall[-1] < 999999.0
  with open(os.path.join(config.logdir, "episodes.csv"), newline="") as f:
    assert all(int(r["env_steps"]) <= resumed.env_steps for r in csv.DictReader(f))
  assert _no_stray_threads()[0]


def _cartpole_popart_config(logdir, **kwargs):
  settings = dict(
      env=config_lib.EnvConfig("CartPole-v1", num_envs=8, seed=1),
      network=config_lib.NetworkConfig("mlp", mlp_hidden_sizes=(32,)),
      popart=config_lib.PopArtConfig(enabled=True, step_size=1e-3),
      num_actor_threads=1, unroll_length=10, batch_size=8, logdir=str(logdir),
      log_interval_seconds=0.5)
  return config_lib.TrainConfig(**{**settings, **kwargs})


def test_popart_statistics_are_checkpointed_and_restored_on_resume(tmp_path, monkeypatch):
  config = _cartpole_popart_config(tmp_path / "popart", total_env_steps=800)
  summary = runtime.train(config, show_progress=False)
  assert summary.updates == 10
  rows = read_metrics(config.logdir)
  assert all(np.isfinite(float(r["popart_scale"])) for r in rows)

  # The checkpoint holds the statistics, moved from their start (μ = 0, σ = 1).
  learner = runtime.make_learner(*_network_and_params(config), config)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(config.logdir, "checkpoints"))
  saved, _ = checkpointer.restore(learner.state())
  checkpointer.close()
  assert saved.popart.shift[0] > 1.0 and saved.popart.scale[0] != 1.0

  # --resume puts them back into the learner, as they were saved.
  restored = []
  original_restore = learning.Learner.restore
  monkeypatch.setattr(learning.Learner, "restore",
                      lambda self, state: (restored.append(state), original_restore(self, state)))
  resumed = runtime.train(dataclasses.replace(config, resume=True, total_env_steps=1_600),
                          show_progress=False)
  assert resumed.updates == 20
  for name in ("shift", "scale", "second_moment"):
    np.testing.assert_array_equal(getattr(restored[0].popart, name),
                                  getattr(saved.popart, name))
  # Evaluation rebuilds the per-task value head and restores around the statistics.
  policy = policy_lib.load_policy(config.logdir)
  assert policy.step == 20 and policy.network.num_tasks == 1


def _network_and_params(config):
  spec = envs.env_spec(config.env)
  network = networks.network_for_spec(config.network, spec,
                                      num_tasks=config.popart.network_tasks)
  return network, networks.init_params(network, spec, config.seed)


class _TrainStateBeforePopArt(NamedTuple):
  """`learning.TrainState` as checkpoints before PopArt wrote it."""

  params: Any
  opt_state: Any
  update_step: Any


def test_checkpoints_without_popart_keep_their_layout_and_mismatches_are_named(tmp_path):
  """A run without PopArt writes and reads what runs before PopArt did; a checkpoint with
  statistics and a run without them (or the reverse) fail, naming PopArt."""
  plain = _cartpole_popart_config(tmp_path, total_env_steps=800,
                                  popart=config_lib.PopArtConfig())
  with_popart = _cartpole_popart_config(tmp_path, total_env_steps=800)
  plain_state = runtime.make_learner(*_network_and_params(plain), plain).state()
  popart_state = runtime.make_learner(*_network_and_params(with_popart), with_popart).state()
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  # Written as before PopArt: the same three fields, by name.
  old = _TrainStateBeforePopArt(*plain_state[:3])
  checkpointer._manager.save(  # pylint: disable=protected-access
      1, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                 metadata=ocp.args.JsonSave({"env_steps": 80})))
  checkpointer._manager.wait_until_finished()  # pylint: disable=protected-access
  restored, metadata = checkpointer.restore(plain_state, step=1)
  assert restored.popart is None and metadata["env_steps"] == 80
  jax.tree.map(np.testing.assert_array_equal, restored.params, plain_state.params)
  with pytest.raises(ValueError, match="holds params, opt_state, update_step, popart"):
    checkpointer.restore(popart_state, step=1)
  # A run with PopArt: its statistics round-trip; a run without them cannot read it.
  moved = popart_state._replace(popart=popart_state.popart._replace(
      shift=np.array([2.5], np.float32), scale=np.array([4.0], np.float32)))
  checkpointer.save(2, moved, {"env_steps": 160})
  restored, _ = checkpointer.restore(popart_state, step=2)
  np.testing.assert_array_equal(restored.popart.shift, [2.5])
  np.testing.assert_array_equal(restored.popart.scale, [4.0])
  with pytest.raises(ValueError, match=r"holds params, opt_state, update_step \(`popart` only"):
    checkpointer.restore(plain_state, step=2)
  checkpointer.close()


def test_two_games_train_in_one_run_with_a_task_per_column_and_scores_per_game(
    tmp_path, monkeypatch):
  """Pong and Breakout in one run: every batch column carries its game's task id (told apart
  by the frames themselves: Pong's are far brighter), each game has its own scores, and with
  PopArt its own value statistics."""
  seen = []
  transfer = learning.Learner.transfer

  def recording_transfer(self, batch):
    brightness = batch.observation.mean(axis=(0, 2, 3, 4))  # [B]
    seen.append((np.array(batch.task), brightness,
                 learning.learner_inputs(batch, 0.99).task.shape))
    return transfer(self, batch)

  monkeypatch.setattr(learning.Learner, "transfer", recording_transfer)
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig("Pong-v5,Breakout-v5", num_envs=4, seed=1, image_size=42,
                               max_episode_steps=60),
      network=config_lib.NetworkConfig("shallow"), num_actor_threads=2, unroll_length=20,
      batch_size=8, queue_capacity=16, total_env_steps=4_000, logdir=str(tmp_path / "two"),
      log_interval_seconds=0.5,
      popart=config_lib.PopArtConfig(enabled=True, step_size=1e-3, num_tasks=2))
  summary = runtime.train(config, show_progress=False)
  assert summary.stop_reason == "completed"
  # Each game's statistics moved from their start (μ = 0, ν = 1) on its own targets.
  learner = runtime.make_learner(*_network_and_params(config), config)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(config.logdir, "checkpoints"))
  saved, _ = checkpointer.restore(learner.state())
  checkpointer.close()
  assert saved.popart.shift.shape == (2,)
  assert (saved.popart.shift != 0).all() and (saved.popart.second_moment != 1).all()
  assert saved.popart.shift[0] != saved.popart.shift[1]

  assert seen
  for task, brightness, transitions_shape in seen:
    assert task.shape == (21, 8) and task.dtype == np.int32
    assert (task == task[0]).all()  # Constant along time.
    np.testing.assert_array_equal(task[0], np.where(brightness > 75, 0, 1))  # Pong is task 0.
    assert transitions_shape == (20, 8)
  assert {int(t) for task, _, _ in seen for t in task[0]} == {0, 1}

  with open(os.path.join(config.logdir, "episodes.csv"), newline="") as f:
    games = [r["game"] for r in csv.DictReader(f)]
  assert set(games) == {"Pong-v5", "Breakout-v5"}
  last = read_metrics(config.logdir)[-1]
  for game in ("Pong-v5", "Breakout-v5"):
    assert last[f"recent_episode_return/{game}"] != ""
    assert last[f"recent_human_normalized_score/{game}"] != ""
  hns = sorted(float(last[f"recent_human_normalized_score/{game}"])
               for game in ("Pong-v5", "Breakout-v5"))
  assert float(last["recent_human_normalized_score"]) == pytest.approx(np.median(hns))
  assert _no_stray_threads()[0]


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
  config = small_pong_config(tmp_path / "pong", )
  config = dataclasses.replace(config, total_env_steps=160)
  runtime.train(config, show_progress=False)
  with pytest.raises(ValueError, match="--resume"):
    runtime.train(config, show_progress=False)


def test_dead_actor_stops_the_run_with_a_clear_error(tmp_path, monkeypatch):
  from impala_jax import envs

  real_to_env_action = envs.to_env_action
  calls = {"n": 0}

  def failing_to_env_action(actions, spec):
    calls["n"] += 1
    if calls["n"] > 30:
      raise RuntimeError("simulated environment crash")
    return real_to_env_action(actions, spec)

  monkeypatch.setattr(envs, "to_env_action", failing_to_env_action)
  config = dataclasses.replace(
      small_pong_config(tmp_path / "dead"), num_actor_threads=1, total_env_steps=10**6)
  start = time.monotonic()
  with pytest.raises(RuntimeError, match="Actor thread actor-0 died.*simulated environment"):
    runtime.train(config, show_progress=False)
  assert time.monotonic() - start < 120
  assert _no_stray_threads()[0]


def test_request_stop_exits_promptly_and_saves(tmp_path):
  config = dataclasses.replace(small_pong_config(tmp_path / "stop"), total_env_steps=10**7)
  run = runtime.TrainingRun(config, show_progress=False)
  timer = threading.Timer(10.0, run.request_stop)
  timer.start()
  summary = run.run()
  timer.cancel()
  assert summary.stop_reason == "signal"
  assert summary.updates > 0
  assert str(summary.updates) in os.listdir(os.path.join(config.logdir, "checkpoints"))
  assert _no_stray_threads()[0], _no_stray_threads()[1]


def test_sigterm_during_a_run_exits_within_seconds_with_a_checkpoint(tmp_path):
  logdir = tmp_path / "sigterm"
  cmd = [sys.executable, os.path.join(REPO, "experiments", "atari.py"), f"--logdir={logdir}",
         "--num_envs=4", "--batch_size=8", "--total_env_steps=10000000", "--progress=false",
         "--log_interval_seconds=0.5"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # Wait until training is under way (a metrics row with an update in it).
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
      path = logdir / "metrics.csv"
      if path.exists() and len(read_metrics(logdir)) >= 2:
        break
      assert proc.poll() is None, proc.stdout.read()
      time.sleep(0.5)
    else:
      pytest.fail("training did not start within 240 s")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    exit_seconds = time.monotonic() - sent
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, output[-3000:]
  assert exit_seconds < 30, exit_seconds
  assert "Received SIGTERM" in output
  assert os.listdir(logdir / "checkpoints"), "no checkpoint written at SIGTERM"


@pytest.mark.parametrize("args, message", [
    (["--env=Pongg-v5"], "Unknown EnvPool task 'Pongg-v5'. Did you mean: Pong-v5"),
    (["--batch_size=20", "--queue_capacity=10"], "queue_capacity (10) must be >= batch_size"),
    (["--network=mlp", "--use_lstm", "--num_envs=0"], "num_envs must be >= 1"),
    (["--num_actor_threads=0"], "num_actor_threads must be >= 1, got 0 (0 needs remote env "
     "hosts: --listen)"),
    (["--listen=127.0.0.1:0", "--token_file=/nonexistent/token"],
     "Secret file '/nonexistent/token' does not exist"),
    (["--listen=localhost"], "listen must be HOST:PORT, got 'localhost'"),
    # Off loopback, the token and the data would cross the network in the clear.
    (["--listen=0.0.0.0:0", "--num_actor_threads=0"],
     "--listen=0.0.0.0:0 is not a loopback address and has no TLS"),
    (["--objective=ppo"], "--objective=ppo: value should be one of <impala|appo>"),
    (["--num_minibatches=3"], "batch_size=32 is not divisible by num_minibatches=3"),
    (["--popart", "--popart_step_size=0.01"],
     "popart_step_size=0.01 times the 640 value targets of one optimizer step"),
    # Several games: each one an Atari game EnvPool knows, as many threads for each.
    (["--env=Pong-v5,Breakoutt-v5", "--num_actor_threads=2"],
     "Unknown EnvPool task 'Breakoutt-v5'. Did you mean: Breakout-v5"),
    (["--env=Pong-v5,CartPole-v1", "--num_actor_threads=2"],
     "A multi-task run takes Atari games only; 'CartPole-v1'"),
    (["--env=Pong-v5,Breakout-v5", "--num_actor_threads=3"],
     "num_actor_threads=3 does not split over the 2 games of --env=Pong-v5,Breakout-v5"),
    (["--env=Pong-v5,Breakout-v5", "--num_actor_threads=2", "--listen=127.0.0.1:0"],
     "--listen is not supported with several games yet"),
    (["--env=Pong-v5,Tetris-v5", "--num_actor_threads=2", "--stop_at_score=1"],
     "Tetris-v5 has no reference scores"),
])
def test_bad_input_exits_nonzero_with_a_clear_message(tmp_path, args, message):
  cmd = [sys.executable, os.path.join(REPO, "experiments", "atari.py"),
         f"--logdir={tmp_path / 'bad'}", "--total_env_steps=100", "--progress=false"] + args
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]


def test_a_token_file_others_can_read_is_refused_naming_the_fix(tmp_path):
  token = tmp_path / "token"
  token.write_text("a-token-of-more-than-16-characters")
  os.chmod(token, 0o644)
  cmd = [sys.executable, os.path.join(REPO, "experiments", "atari.py"),
         f"--logdir={tmp_path / 'run'}", "--listen=127.0.0.1:0", f"--token_file={token}",
         "--progress=false"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert f"has mode 644: other users can read or change it. Run `chmod 600 {token}`" in (
      out.stderr), out.stderr[-2000:]


def test_batch_not_divisible_by_devices_fails_at_start(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, os.path.join(REPO, "experiments", "atari.py"),
         f"--logdir={tmp_path / 'bad'}", "--batch_size=7", "--progress=false"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
  assert out.returncode != 0
  assert "batch_size=7 is not divisible by the 2 local devices" in out.stderr


def _assert_cartpole_solved(logdir, seed, extra_flags=()):
  """Runs experiments/control.py until the score (mean return of the last 20 episodes)
  reaches 475, CartPole-v1's threshold; asserts that happened within 300k env steps."""
  cmd = [sys.executable, os.path.join(REPO, "experiments", "control.py"), *extra_flags,
         f"--logdir={logdir}", f"--seed={seed}", "--total_env_steps=300000", "--progress=false",
         "--stop_at_score=475"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [r for r in read_metrics(logdir) if r["episode_return"]]
  best = max(float(r["recent_episode_return"]) for r in rows)
  assert "Done (score_reached)" in out.stderr, f"best score {best:.1f} < 475 within 300k steps"
  assert float(rows[-1]["recent_episode_return"]) >= 475
  assert int(rows[-1]["env_steps"]) < 300_000
  # episodes.csv holds every episode the rows counted, with the rows' step counts.
  with open(os.path.join(logdir, "episodes.csv"), newline="") as f:
    episodes = list(csv.DictReader(f))
  assert len(episodes) == sum(int(r["episodes"]) for r in read_metrics(logdir))
  assert {e["env_steps"] for e in episodes} <= {r["env_steps"] for r in rows}
  last = [float(e["episode_return"]) for e in episodes[-20:]]
  assert float(rows[-1]["recent_episode_return"]) == pytest.approx(np.mean(last))


_APPO_FLAGS = (f"--flagfile={os.path.join(REPO, 'experiments', 'configs', 'cartpole_appo.flags')}",)


@pytest.mark.parametrize("objective_flags", [(), _APPO_FLAGS], ids=["impala", "appo"])
def test_cartpole_is_solved_within_300k_steps_through_the_control_script(tmp_path,
                                                                         objective_flags):
  """The learning bar: mean return >= 475 within 300k env steps, fixed seed, this CPU."""
  _assert_cartpole_solved(tmp_path / "cartpole", seed=0, extra_flags=objective_flags)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path, monkeypatch):
  from impala_jax.learning import learner as learner_lib

  real_finish = learning.Learner.finish
  calls = {"n": 0}

  def finish_that_diverges(self, pending):
    calls["n"] += 1
    if calls["n"] < 3:
      return real_finish(self, pending)
    jax.block_until_ready(pending.metrics)
    # What the pmapped update reports for a NaN loss: the update was not applied.
    return {"finite": 0.0, "loss": float("nan"), "grad_norm": float("nan")}

  monkeypatch.setattr(learning.Learner, "finish", finish_that_diverges)
  config = dataclasses.replace(small_pong_config(tmp_path / "nan"), total_env_steps=10**6)
  with pytest.raises(FloatingPointError, match="non-finite at update 2"):
    runtime.train(config, show_progress=False)
  assert os.listdir(os.path.join(config.logdir, "checkpoints")) == ["2"]
  assert _no_stray_threads()[0]


@pytest.mark.parametrize("env_id, network", [
    ("HalfCheetah-v4", config_lib.NetworkConfig("mlp")),  # Gaussian policy, float64 obs.
    ("CartPole-v1", config_lib.NetworkConfig("mlp", use_lstm=True, lstm_size=32)),
])
def test_continuous_and_recurrent_agents_run_end_to_end(tmp_path, env_id, network):
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig(env_id, num_envs=4, batch_size=2), network=network,
      num_actor_threads=2, unroll_length=10, batch_size=4, queue_capacity=8,
      total_env_steps=1_000, logdir=str(tmp_path / "run"), log_interval_seconds=0.5)
  summary = runtime.train(config, show_progress=False)
  assert summary.stop_reason == "completed" and summary.updates == 25
  rows = read_metrics(config.logdir)
  assert all(np.isfinite(float(r["loss"])) for r in rows)
  assert _no_stray_threads()[0]


def test_the_epsilon_correction_is_refused_for_continuous_actions_before_training(tmp_path):
  # log(π + ε) needs a probability π; HalfCheetah's Gaussian policy has a density.
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig("HalfCheetah-v4", num_envs=2),
      network=config_lib.NetworkConfig("mlp"), loss=config_lib.LossConfig(correction="epsilon"),
      num_actor_threads=1, unroll_length=10, batch_size=2, logdir=str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"correction 'epsilon' .* discrete actions"):
    runtime.TrainingRun(config, show_progress=False)
  assert not os.path.exists(config.logdir)  # Refused before anything was written.


def test_default_actor_layout_follows_the_core_count():
  layouts = {cores: config_lib.default_actor_layout(cores) for cores in range(1, 129)}
  threads = [layouts[c][0] for c in sorted(layouts)]
  # At least one thread, never more threads than cores, more cores never fewer threads ...
  assert all(1 <= t <= c for c, t in zip(sorted(layouts), threads))
  assert threads == sorted(threads)
  # ... one per core on small hosts, and a bounded number on big ones.
  assert layouts[1][0] == 1 and layouts[2][0] == 2
  assert threads[-1] == threads[-20] < 128
  assert all(envs >= 1 and envs == layouts[1][1] for _, envs in layouts.values())
  assert config_lib.default_actor_layout() == layouts.get(os.cpu_count(), layouts[128])


@pytest.mark.slow
@pytest.mark.parametrize("objective_flags", [(), _APPO_FLAGS], ids=["impala", "appo"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cartpole_is_solved_with_other_seeds(tmp_path, seed, objective_flags):
  """Robustness of the CI learning test's settings (make test-all; ~30 s each)."""
  _assert_cartpole_solved(tmp_path / f"cartpole_{seed}", seed, objective_flags)
