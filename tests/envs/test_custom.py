"""Tests for impala_jax.envs.custom: your own environment behind EnvPool's interface.

The adapter must reproduce EnvPool's semantics exactly (next-step autoreset, terminated vs
truncated, elapsed_step), which these tests check step by step against a scripted environment,
in the calling thread and in worker processes; then the example corridor trains to solved
through experiments/control.py.
"""

import csv
import json
import os
import subprocess
import sys

import dm_env
from dm_env import specs as dm_specs
import gymnasium
from gymnasium import spaces
import numpy as np
import pytest

from impala_jax import envs
from impala_jax import networks
from impala_jax.config import EnvConfig
from impala_jax.config import NetworkConfig
from impala_jax.envs import custom
from impala_jax.envs import examples
import scripted_envs  # tests/envs/, on sys.path under pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORRIDOR = "impala_jax.envs.examples:make_corridor"
CORRIDOR_DM = "impala_jax.envs.examples:make_corridor_dm_env"
# The scripted environments' module by the name the worker processes import it by (pytest
# puts tests/envs on sys.path, and the workers get the pool's sys.path).
SCRIPTED = scripted_envs.__name__
SCRIPT = scripted_envs.SCRIPT
HERE = __name__


def _pool(factory, **kwargs):
  kwargs.setdefault("num_envs", 2)
  kwargs.setdefault("seed", 10)
  return custom.CustomEnvPool(f"{SCRIPTED}:{factory}", **kwargs)


def _expected_end(episode):
  return SCRIPT[episode % len(SCRIPT)]


def _expected_trace(num_steps, max_episode_steps=None, dm=False):
  """(episode, t, reward, terminated, truncated, elapsed) per recv, for one copy."""
  trace = [(0, 0, 0.0, False, False, 0)]
  episode, t = 0, 0
  ended = False
  for _ in range(num_steps):
    if ended:
      episode, t, ended = episode + 1, 0, False
      trace.append((episode, 0, 0.0, False, False, 0))
      continue
    t += 1
    length, end = _expected_end(episode)
    terminated = t == length and end in ("terminated", "both")
    truncated = t == length and end in ("truncated", "both")
    if dm and end == "both":  # dm_env has one flag: discount 0 is terminated.
      truncated = False
    if max_episode_steps is not None and t >= max_episode_steps:
      truncated = True
    terminated = terminated and not truncated
    ended = terminated or truncated
    trace.append((episode, t, t + 0.5, terminated, truncated, t))
  return trace


# ------------------------------------------------------------------------------------------
# EnvPool's semantics, step by step.


@pytest.mark.parametrize("num_workers", [0, 2], ids=["in_thread", "processes"])
@pytest.mark.parametrize("factory, dm", [("make_scripted", False), ("make_scripted_dm", True)],
                         ids=["gymnasium", "dm_env"])
def test_autoreset_terminated_truncated_and_elapsed_step_step_by_step(factory, dm,
                                                                      num_workers):
  num_steps = 16
  expected = _expected_trace(num_steps, dm=dm)
  with _pool(factory, num_workers=num_workers) as pool:
    pool.async_reset()
    actions = np.array([3, 1], np.int32)
    for step in range(num_steps + 1):
      obs, reward, terminated, truncated, info = pool.recv()
      np.testing.assert_array_equal(info["env_id"], [0, 1])
      assert obs.dtype == np.float32 and obs.shape == (2, 4)
      assert reward.dtype == np.float32
      assert not (terminated & truncated).any()  # Kept apart, never both.
      for i in range(2):
        episode, t, r, term, trunc, elapsed = expected[step]
        assert obs[i, 0] == 10 + i  # Copy i was seeded seed + i.
        assert (obs[i, 1], obs[i, 2]) == (episode, t), (step, obs[i])
        # The first observation of an episode saw no action: autoreset ignored the one sent.
        assert obs[i, 3] == (-1 if t == 0 else actions[i]), (step, obs[i])
        assert (reward[i], terminated[i], truncated[i]) == (r, term, trunc), step
        assert info["elapsed_step"][i] == elapsed
      pool.send(actions, info["env_id"])


def test_gymnasium_terminated_and_truncated_together_is_truncated_as_in_envpool():
  with _pool("make_scripted", num_envs=1) as pool:
    pool.async_reset()
    flags = []
    for _ in range(10):
      _, _, terminated, truncated, info = pool.recv()
      flags.append((bool(terminated[0]), bool(truncated[0]), int(info["elapsed_step"][0])))
      pool.send(np.zeros(1, np.int32), info["env_id"])
  # Episodes 0 (3 steps, terminated) and 1 (2 steps, truncated), then episode 2 ends at its
  # first step with both flags from gymnasium: EnvPool's rule reports truncated only.
  assert flags == [(False, False, 0), (False, False, 1), (False, False, 2), (True, False, 3),
                   (False, False, 0), (False, False, 1), (False, True, 2),
                   (False, False, 0), (False, True, 1), (False, False, 0)]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_max_episode_steps_truncates_and_wins_over_termination(num_workers):
  num_steps = 14
  expected = _expected_trace(num_steps, max_episode_steps=3)
  with _pool("make_scripted", num_envs=1, max_episode_steps=3,
             num_workers=num_workers) as pool:
    pool.async_reset()
    for step in range(num_steps + 1):
      obs, reward, terminated, truncated, info = pool.recv()
      episode, t, r, term, trunc, elapsed = expected[step]
      assert (obs[0, 1], obs[0, 2], reward[0]) == (episode, t, r)
      assert (terminated[0], truncated[0], info["elapsed_step"][0]) == (term, trunc, elapsed)
      pool.send(np.zeros(1, np.int32), info["env_id"])
  # Episode 0 terminates at step 3 = the limit: reported truncated, as EnvPool does.
  assert expected[3][3:5] == (False, True)
  # Episode 3 (4 steps) is cut at 3.
  assert [e for e in expected if e[0] == 3][-1][1] == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_send_accepts_any_subset_and_recv_returns_batch_size_results(num_workers):
  with _pool("make_scripted", num_envs=4, batch_size=2, num_workers=num_workers) as pool:
    pool.async_reset()
    _, _, _, _, info = pool.recv()
    np.testing.assert_array_equal(info["env_id"], [0, 1])
    _, _, _, _, info = pool.recv()
    np.testing.assert_array_equal(info["env_id"], [2, 3])
    pool.send(np.array([4], np.int32), np.array([3]))
    pool.send(np.array([2], np.int32), [0])
    obs, _, _, _, info = pool.recv()
    np.testing.assert_array_equal(info["env_id"], [0, 3])  # Rows sorted by id.
    np.testing.assert_array_equal(obs[:, 3], [2, 4])  # Each copy got its own action.
    np.testing.assert_array_equal(info["elapsed_step"], [1, 1])
    # Copies 1 and 2 were never sent an action: nothing more to receive.
    with pytest.raises(RuntimeError, match="send"):
      pool.recv()
    # A copy whose step was not received yet cannot be sent again.
    pool.send(np.array([1], np.int32), [1])
    with pytest.raises(ValueError, match="not waiting for an action"):
      pool.send(np.array([1], np.int32), [1])
    with pytest.raises(ValueError, match="shape"):
      pool.send(np.array([1, 2], np.int32), [2])
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
      pool.send(np.array([1], np.int32), [7])


def test_reset_and_step_are_the_synchronous_api_and_close_closes_every_copy():
  pool = _pool("make_scripted", num_envs=3)
  obs, info = pool.reset()
  np.testing.assert_array_equal(info["env_id"], [0, 1, 2])
  np.testing.assert_array_equal(info["elapsed_step"], [0, 0, 0])
  np.testing.assert_array_equal(obs[:, 0], [10, 11, 12])
  obs, reward, _, _, info = pool.step(np.array([1, 2, 3], np.int32))
  np.testing.assert_array_equal(obs[:, 3], [1, 2, 3])
  np.testing.assert_array_equal(reward, [1.5, 1.5, 1.5])
  copies = [copy.env for copy in pool._copies._copies]  # pylint: disable=protected-access
  pool.close()
  pool.close()  # Idempotent.
  assert all(env.closed for env in copies)
  with pytest.raises(RuntimeError, match="closed"):
    pool.recv()


def test_episode_tracker_scores_the_adapter_like_envpool():
  """What the actor does with the results: real returns and lengths of whole episodes."""
  tracker = envs.EpisodeTracker(2, envs.EnvFamily.CUSTOM)
  finished = []
  with _pool("make_scripted") as pool:
    pool.async_reset()
    for _ in range(13):
      _, reward, terminated, truncated, info = pool.recv()
      finished += tracker.update(info["env_id"], reward, terminated, truncated, info)
      pool.send(np.zeros(2, np.int32), info["env_id"])
  # Lengths 3, 2, 1 (the both-flags episode), 4: returns sum t + 0.5 over each episode.
  lengths = [e.episode_length for e in finished]
  returns = [e.episode_return for e in finished]
  assert lengths == [3, 3, 2, 2, 1, 1]
  assert returns == [7.5, 7.5, 4.0, 4.0, 1.5, 1.5]


# ------------------------------------------------------------------------------------------
# The example: gymnasium and dm_env agree; seeds; processes and threads agree.


def _play(factory, num_workers, steps=300, seed=5):
  rng = np.random.default_rng(0)
  trace = []
  with custom.CustomEnvPool(factory, num_envs=4, seed=seed, num_workers=num_workers) as pool:
    pool.async_reset()
    for _ in range(steps):
      obs, reward, terminated, truncated, info = pool.recv()
      trace.append((obs.copy(), reward.copy(), terminated.copy(), truncated.copy(),
                    info["elapsed_step"].copy()))
      pool.send(rng.integers(0, 2, 4).astype(np.int32), info["env_id"])
  return trace


def test_corridor_gymnasium_and_dm_env_agree_step_by_step_in_thread_and_in_processes():
  reference = _play(CORRIDOR, 0)
  for factory, workers in ((CORRIDOR_DM, 0), (CORRIDOR_DM, 2)):
    trace = _play(factory, workers)
    for step, (a, b) in enumerate(zip(reference, trace)):
      for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=f"{factory} workers={workers} step {step}")
  # Both kinds of episode end occur, and copies start differently (seed + i).
  terminated = np.stack([t[2] for t in reference])
  truncated = np.stack([t[3] for t in reference])
  assert terminated.sum() > 5 and truncated.sum() > 5
  first = reference[0][0].argmax(axis=1)
  assert len(set(first.tolist())) > 1
  # Another seed, other episodes.
  assert not np.array_equal(np.stack([t[0] for t in _play(CORRIDOR, 0, 50, seed=6)]),
                            np.stack([t[0] for t in reference[:50]]))


def test_corridor_returns_of_the_best_and_a_cut_off_path():
  env = examples.CorridorEnv()
  env.reset(seed=0)
  env._corridor.position = 0  # pylint: disable=protected-access
  total, terminated = 0.0, False
  while not terminated:
    _, reward, terminated, truncated, _ = env.step(1)
    total += reward
    assert not truncated
  assert total == pytest.approx(1 - examples.STEP_COST * (examples.LENGTH - 2))
  env.reset(seed=0)
  total = 0.0
  for _ in range(examples.TIME_LIMIT):
    _, reward, terminated, truncated, _ = env.step(0)
    total += reward
  assert truncated and not terminated
  assert total == pytest.approx(-examples.STEP_COST * examples.TIME_LIMIT)
  frame = env.render()
  assert frame.shape == (16, 16 * examples.LENGTH, 3) and frame.dtype == np.uint8


# ------------------------------------------------------------------------------------------
# Wiring: make_env, env_spec, env_family; specs of the supported spaces.


def test_make_env_env_spec_and_env_family_dispatch_on_the_colon():
  config = EnvConfig(CORRIDOR, num_envs=3, seed=2)
  spec = envs.env_spec(config)
  # Its Box(0, 1) observations are what it declares (envs.value_checks holds it to them).
  declared = envs.DeclaredRanges(np.zeros(examples.LENGTH, np.float32),
                                 np.ones(examples.LENGTH, np.float32))
  assert spec == envs.EnvSpec((examples.LENGTH,), np.dtype(np.float32), True, 2, None, None,
                              None, np.dtype(np.int32), envs.EnvFamily.CUSTOM,
                              declared)
  assert envs.env_family(CORRIDOR) is envs.EnvFamily.CUSTOM
  env = envs.make_env(config)
  try:
    assert isinstance(env, custom.CustomEnvPool)
    assert envs.env_spec(env) == spec
    assert (env.num_envs, env.batch_size, env.num_workers) == (3, 3, 0)
  finally:
    env.close()
  # num_threads is the number of worker processes.
  env = envs.make_env(EnvConfig(f"{SCRIPTED}:make_scripted", num_envs=4, batch_size=2,
                                num_threads=2))
  try:
    assert (env.batch_size, env.num_workers) == (2, 2)
  finally:
    env.close()
  # EnvPool ids are untouched: the unknown-id error stays.
  with pytest.raises(ValueError, match="Unknown EnvPool task 'Pongg-v5'"):
    envs.make_env(EnvConfig("Pongg-v5"))


class _Images(gymnasium.Env):
  """uint8 [H, W, C] frames whose pixel (h, w, c) is 100·c + 10·h + w."""

  observation_space = spaces.Box(0, 255, (6, 5, 3), np.uint8)
  action_space = spaces.Box(-2.0, 2.0, (2,), np.float64)
  frame = (100 * np.arange(3)[None, None] + 10 * np.arange(6)[:, None, None] +
           np.arange(5)[None, :, None]).astype(np.uint8)

  def reset(self, *, seed=None, options=None):
    return self.frame, {}

  def step(self, action):
    assert action.dtype == np.float64 and action.shape == (2,)
    return self.frame, float(action.sum()), False, False, {}


class _ChannelFirstImages(_Images):
  channel_first = True
  observation_space = spaces.Box(0, 255, (3, 6, 5), np.uint8)
  frame = np.transpose(_Images.frame, (2, 0, 1))


def test_images_become_channel_first_and_box_actions_gaussian():
  for cls in (_Images, _ChannelFirstImages):
    with custom.CustomEnvPool(cls, num_envs=2) as pool:
      spec = pool.spec
      assert spec.observation_shape == (3, 6, 5) and spec.observation_dtype == np.uint8
      assert not spec.discrete and spec.action_dim == 2
      np.testing.assert_array_equal(spec.action_low, [-2, -2])
      assert spec.action_dtype == np.float32
      obs, _ = pool.reset()
      np.testing.assert_array_equal(obs[0], np.transpose(_Images.frame, (2, 0, 1)))
      actions = envs.to_env_action(np.array([[5.0, 0.5], [-5.0, 0.0]]), spec)
      _, reward, _, _, _ = pool.step(actions)
      np.testing.assert_allclose(reward, [2.5, -2.0])  # Clipped to the Box.
  # The image torsos take them; an image torso for vectors fails early, naming the shape.
  networks.network_for_spec(NetworkConfig("deep"), spec)
  with pytest.raises(ValueError, match=r"'shallow' torso needs images of at least 20"):
    networks.network_for_spec(NetworkConfig("shallow"), spec)
  with pytest.raises(ValueError, match=r"'nature' torso needs images of at least 36×36 pixels; "
                     r"this environment observes \[C, H, W\] = \(3, 6, 5\)"):
    networks.network_for_spec(NetworkConfig("nature"), spec)
  vector_spec = envs.env_spec(EnvConfig(CORRIDOR))
  with pytest.raises(ValueError, match=r"'deep' torso takes image observations \[C, H, W\]; "
                     r"this environment observes shape \(8,\)\. Use --network=mlp"):
    networks.network_for_spec(NetworkConfig("deep"), vector_spec)


def _gym_env(observation_space, action_space):
  env = gymnasium.Env()
  env.observation_space, env.action_space = observation_space, action_space
  return env


_BOX = spaces.Box(-1, 1, (3,), np.float32)


@pytest.mark.parametrize("observation_space, action_space, message", [
    (spaces.Dict({"a": _BOX}), spaces.Discrete(2),
     r"Unsupported observation space Dict\(.*accepted: Box observations of any shape, float "
     r"or uint8.*FlattenObservation"),
    (spaces.Tuple((_BOX, _BOX)), spaces.Discrete(2), r"observation space Tuple\("),
    (spaces.Discrete(4), spaces.Discrete(2), r"observation space Discrete\(4\)"),
    (_BOX, spaces.MultiDiscrete([2, 3]),
     r"Unsupported action space MultiDiscrete\(\[2 3\]\) \(MultiDiscrete\); accepted: "
     r"Discrete or 1-D float Box actions"),
    (_BOX, spaces.MultiBinary(3), r"action space MultiBinary\(3\)"),
    (_BOX, spaces.Box(-1, 1, (2, 2), np.float32), r"action space Box\(-1.0, 1.0, \(2, 2\)"),
    (_BOX, spaces.Box(0, 3, (2,), np.int64), r"action space Box\(0, 3, \(2,\), int64\)"),
    (_BOX, spaces.Dict({"move": spaces.Discrete(2)}), r"action space Dict\("),
])
def test_unsupported_gymnasium_spaces_fail_naming_the_space_and_what_is_accepted(
    observation_space, action_space, message):
  env = _gym_env(observation_space, action_space)
  with pytest.raises(ValueError, match=message):
    custom.CustomEnvPool(lambda: env, num_envs=1)


class _DmEnv(dm_env.Environment):

  def __init__(self, observation_spec, action_spec):
    self._specs = observation_spec, action_spec

  def reset(self):
    raise NotImplementedError

  def step(self, action):
    raise NotImplementedError

  def observation_spec(self):
    return self._specs[0]

  def action_spec(self):
    return self._specs[1]


_ARRAY = dm_specs.Array((3,), np.float32)


@pytest.mark.parametrize("observation_spec, action_spec, message", [
    ({"a": _ARRAY}, dm_specs.DiscreteArray(2),
     r"Unsupported observation spec \{'a'.*\(dict\); accepted: Box observations"),
    (_ARRAY, (dm_specs.DiscreteArray(2), dm_specs.DiscreteArray(2)),
     r"Unsupported action spec \(DiscreteArray.*\(tuple\); accepted: Discrete or 1-D"),
    (_ARRAY, dm_specs.Array((2, 2), np.float32), r"Unsupported action spec Array\("),
    (dm_specs.Array((3,), np.str_), dm_specs.DiscreteArray(2), "observation dtype <U"),
])
def test_unsupported_dm_env_specs_fail_naming_the_spec_and_what_is_accepted(
    observation_spec, action_spec, message):
  with pytest.raises(ValueError, match=message):
    custom.CustomEnvPool(lambda: _DmEnv(observation_spec, action_spec), num_envs=1)


def test_supported_dm_env_specs():
  bounded = dm_specs.BoundedArray((), np.int32, minimum=3, maximum=7)
  spec = custom.spec_of(lambda: _DmEnv(dm_specs.Array((2, 3), np.int64), bounded))
  assert spec.discrete and spec.num_actions == 5
  assert spec.observation_shape == (2, 3) and spec.observation_dtype == np.float32
  spec = custom.spec_of(lambda: _DmEnv(_ARRAY, dm_specs.Array((4,), np.float32)))
  assert spec.action_dim == 4 and np.isinf(spec.action_high).all()


@pytest.mark.parametrize("env_id, message", [
    ("no_such_module_xyz:make", "Cannot import module 'no_such_module_xyz'"),
    ("impala_jax.envs.examples:nothing_here", "has no attribute 'nothing_here'"),
    ("impala_jax.envs.examples:LENGTH", "is not callable"),
    (":make", "'module.path:factory'"),
    (f"{HERE}:_needs_two_arguments", r"must take no argument or one named 'seed'; it "
     r"requires \['a', 'b'\]"),
    (f"{HERE}:_not_an_env", r"returned dict; expected a gymnasium.Env or a dm_env.Environment"),
])
def test_bad_factories_fail_with_a_clear_message(env_id, message):
  with pytest.raises(ValueError, match=message):
    envs.env_spec(EnvConfig(env_id))


def _needs_two_arguments(a, b):
  return (a, b)


def _not_an_env():
  return {}


def test_a_failing_worker_raises_its_error_in_the_pool_and_workers_exit():
  pool = _pool("make_failing", num_envs=2, num_workers=2)
  processes = [w.process for w in pool._workers]  # pylint: disable=protected-access
  pool.async_reset()
  with pytest.raises(RuntimeError, match=r"(?s)Environment worker 0 .*copies 0-0.*failed.*"
                     "the simulator exploded"):
    for _ in range(5):
      _, _, _, _, info = pool.recv()
      pool.send(np.zeros(2, np.int32), info["env_id"])
  pool.close()
  assert all(p.poll() is not None for p in processes)


def test_worker_processes_do_not_import_jax():
  """A worker loads only the per-copy code and the factory's module: fast to start, small."""
  factory = "gymnasium.envs.classic_control.cartpole:CartPoleEnv"
  with custom.CustomEnvPool(factory, num_envs=2, num_workers=1) as pool:
    pid = pool._workers[0].process.pid  # pylint: disable=protected-access
    with open(f"/proc/{pid}/maps") as f:
      maps = f.read()
    assert pool.spec.observation_shape == (4,) and pool.spec.num_actions == 2
    pool.async_reset()
    obs, _, _, _, _ = pool.recv()
    assert obs.shape == (2, 4)
  assert "jaxlib" not in maps and "envpool" not in maps


# ------------------------------------------------------------------------------------------
# End to end: the example corridor is solved through experiments/control.py.

# Walking straight right returns 0.94-0.97 (0.955 on average over the start cells) and a
# cut-off episode -0.24, so a mean return >= 0.9 needs >= 95% of episodes to reach the goal
# on an almost shortest path; a random policy scores about 0.14 (tests above).
SOLVED = 0.9


@pytest.mark.parametrize("factory, extra_flags", [
    (CORRIDOR, ()),
    (CORRIDOR_DM, ("--env_threads=2",)),  # Two worker processes.
], ids=["gymnasium_in_thread", "dm_env_in_processes"])
def test_the_corridor_is_solved_through_the_control_script(tmp_path, factory, extra_flags):
  logdir = tmp_path / "corridor"
  cmd = [sys.executable, os.path.join(REPO, "experiments", "control.py"), f"--env={factory}",
         *extra_flags, f"--logdir={logdir}", "--seed=0", "--total_env_steps=60000",
         "--progress=false", "--log_interval_seconds=1"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(logdir / "metrics.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["episode_return"]]
  solved = [int(r["env_steps"]) for r in rows
            if float(r["episode_return"]) >= SOLVED and int(r["episodes"]) >= 20]
  best = max(float(r["episode_return"]) for r in rows)
  assert solved, f"best mean return {best:.3f} < {SOLVED} within 60k steps"
  assert float(rows[-1]["episode_return"]) >= SOLVED
  with open(logdir / "episodes.csv", newline="") as f:
    lengths = [int(e["episode_length"]) for e in csv.DictReader(f)]
  # Both kinds of end were seen: cut off at the time limit, and goals reached sooner.
  assert examples.TIME_LIMIT in lengths and min(lengths) < examples.LENGTH

  if factory != CORRIDOR:
    return
  # evaluate.py plays the custom environment too, and films it through its render().
  video, summary = tmp_path / "corridor.mp4", tmp_path / "evaluation.json"
  cmd = [sys.executable, os.path.join(REPO, "experiments", "evaluate.py"), f"--logdir={logdir}",
         "--episodes=8", f"--video={video}", f"--output={summary}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(summary) as f:
    report = json.load(f)
  assert report["num_episodes"] == 8 and report["score"]["mean"] >= SOLVED
  assert report["video_frames"] >= 4 and video.stat().st_size > 0
