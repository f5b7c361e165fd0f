r"""Evaluates a trained run: whole games with the evaluation settings, a JSON summary, a video.

    python experiments/evaluate.py --logdir=runs/pong --episodes=30
    python experiments/evaluate.py --logdir=runs/pong --checkpoint=2400 --greedy \
        --video=/tmp/pong.mp4 --frame_png=/tmp/pong.png

Loads the run's configuration and checkpoint (the latest unless --checkpoint), rebuilds the
network as training did, and plays --episodes whole games: on Atari without life-loss episode
ends, with unclipped rewards and up to 30 no-ops at the start (the paper's evaluation), with the
frame stack, action repeat and frame size of training. Prints and writes
`<logdir>/evaluation_<checkpoint>.json`: the real scores (mean, median, min, max) and, on the
Atari-57 games, human-normalised scores.

A multi-task run (`--env=Pong-v5,Breakout-v5`) plays --episodes games of each of its games, in
the full action space it was trained with, and reports each game's summary under `games` and
the median over the games of their mean human-normalised score; --video and --frame_png record
its first game.

--video writes environment 0's first game as mp4 (H.264, plays in browsers) or gif, from
EnvPool's RGB rendering (Atari: the 210×160 screen, upscaled by --video_scale); --frame_png
writes its middle frame.

Bad input (no such run, no checkpoint, bad flags) prints one line naming the problem and
exits with status 2.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List, NamedTuple

from absl import app
from absl import flags
from absl import logging

from impala_jax import envs
from impala_jax.evaluation import episodes as episodes_lib
from impala_jax.evaluation import policy as policy_lib
from impala_jax.evaluation import video as video_lib

flags.DEFINE_string("logdir", None, "The run directory (holding checkpoints/ and config.json).")
flags.DEFINE_integer("checkpoint", None, "Checkpoint number (learner updates, the name of its "
                     "directory under checkpoints/); default the latest.")
flags.DEFINE_integer("episodes", 10, "Whole games to play.")
flags.DEFINE_bool("greedy", False, "Take the policy's most likely action instead of sampling.")
flags.DEFINE_integer("seed", 0, "Seeds the environments (environment i: seed + i) and action "
                     "sampling.")
flags.DEFINE_integer("num_envs", 0, "Environments playing at once; 0: min(episodes, 8).")
flags.DEFINE_integer("noop_max", episodes_lib.EVAL_NOOP_MAX, "Atari: up to this many no-ops "
                     "at the start of each game.")
flags.DEFINE_string("video", None, "Write environment 0's first game here (.mp4 or .gif).")
flags.DEFINE_string("frame_png", None, "Write the middle frame of that game here (.png).")
flags.DEFINE_integer("video_scale", 0, "Integer upscaling of the video frames; 0: 2 on Atari "
                     "(the 160×210 screen), 1 elsewhere.")
flags.DEFINE_string("output", None, "JSON summary; default <logdir>/evaluation_<checkpoint>.json.")

_DEFAULT_MAX_ENVS = 8


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _check_flags(f) -> None:
  if not f.logdir:
    _fail("--logdir is required: the run directory to evaluate.")
  if f.episodes < 1:
    _fail(f"--episodes must be >= 1, got {f.episodes}.")
  if f.num_envs < 0:
    _fail(f"--num_envs must be >= 0, got {f.num_envs}.")
  if f.noop_max < 0:
    _fail(f"--noop_max must be >= 0, got {f.noop_max}.")
  if f.video_scale < 0:
    _fail(f"--video_scale must be >= 0, got {f.video_scale}.")
  if f.video:
    try:
      video_lib.check_video_path(f.video)
    except ValueError as e:
      _fail(str(e))
  if f.frame_png and not f.frame_png.lower().endswith(".png"):
    _fail(f"--frame_png must end in .png, got {f.frame_png!r}.")


def video_fps(env_config, spec) -> float:
  """Real time: Atari runs at 60 frames/s and one agent step is `frame_skip` frames."""
  if spec.family is envs.EnvFamily.ATARI:
    return 60.0 / env_config.frame_skip
  return 30.0


def _play(f, policy, env_config, record: bool):
  """Plays the games, feeding the video writer and the middle-frame picker when asked for
  (and `record`: a multi-task run records its first game only)."""
  scale = f.video_scale or (2 if policy.spec.family is envs.EnvFamily.ATARI else 1)
  fps = video_fps(env_config, policy.spec)
  try:
    writer = video_lib.VideoWriter(f.video, fps, scale) if f.video and record else None
  except ImportError as e:
    _fail(str(e))
  middle = video_lib.MiddleFrame() if f.frame_png and record else None

  def on_frame(frame):
    if writer is not None:
      writer.append(frame)
    if middle is not None:
      middle.add(frame)

  result = episodes_lib.play_episodes(
      policy.network, policy.params, env_config, f.episodes, greedy=f.greedy, seed=f.seed,
      on_frame=None if writer is None and middle is None else on_frame)
  video_frames = writer.close() if writer is not None else None
  if middle is not None:
    video_lib.write_png(f.frame_png, middle.middle(), scale)
  return result, video_frames


class _Game(NamedTuple):
  """One game's evaluation: its config, what `play_episodes` returned, `summarize`'s summary."""
  env_config: Any
  result: episodes_lib.EvaluationResult
  summary: Dict[str, Any]


def _game_report(game: _Game) -> Dict[str, Any]:
  return dict(
      env_id=game.env_config.env_id,
      num_episodes=len(game.result.episodes),
      num_envs=game.env_config.num_envs,
      env_settings=dataclasses.asdict(game.env_config),
      **game.summary,
      episodes=[e._asdict() for e in game.result.episodes],
      agent_steps=game.result.agent_steps)


def _report(f, policy, games: List[_Game], video_frames, wall_seconds):
  """The JSON summary written beside the run: one game's report, or a multi-task run's median
  over its games with each game's report under `games`."""
  atari = policy.spec.family is envs.EnvFamily.ATARI
  frames_per_step = games[0].env_config.frame_skip if atari else 1
  if len(games) == 1:
    body = _game_report(games[0])
  else:
    body = dict(env_id=policy.config.env.env_id,
                **episodes_lib.summarize_games({g.env_config.env_id: g.summary for g in games}),
                games={g.env_config.env_id: _game_report(g) for g in games})
  return dict(
      logdir=os.path.abspath(f.logdir),
      checkpoint=policy.step,
      env_steps=policy.env_steps,
      frames=None if policy.env_steps is None else policy.env_steps * frames_per_step,
      greedy=f.greedy,
      seed=f.seed,
      **body,
      wall_seconds=wall_seconds,
      video=os.path.abspath(f.video) if f.video else None,
      video_frames=video_frames,
      frame_png=os.path.abspath(f.frame_png) if f.frame_png else None,
  )


def _print_summary(f, policy, games: List[_Game], output, video_frames):
  steps = "" if policy.env_steps is None else f", {policy.env_steps:,} agent steps"
  for game in games:
    score = game.summary["score"]
    print(f"{game.env_config.env_id}, checkpoint {policy.step}{steps}: "
          f"{len(game.result.episodes)} games, {'greedy' if f.greedy else 'sampled'} actions, "
          f"seed {f.seed}")
    print(f"  score  mean {score['mean']:.2f}  median {score['median']:.2f}  "
          f"min {score['min']:.2f}  max {score['max']:.2f}")
    hns = game.summary["human_normalized_score"]
    if hns is not None:
      print(f"  human-normalised  mean {hns['mean']:.3f}  median {hns['median']:.3f}")
  if len(games) > 1:
    median = episodes_lib.summarize_games(
        {g.env_config.env_id: g.summary for g in games})["median_human_normalized_score"]
    if median is not None:
      print(f"{len(games)} games: median human-normalised score {median:.3f}")
  print(f"wrote {output}")
  if f.video:
    print(f"wrote {f.video} ({video_frames} frames)")
  if f.frame_png:
    print(f"wrote {f.frame_png}")


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a restore at INFO.
  f = flags.FLAGS
  _check_flags(f)
  start = time.monotonic()
  try:
    policy = policy_lib.load_policy(f.logdir, f.checkpoint)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  num_envs = min(f.num_envs or _DEFAULT_MAX_ENVS, f.episodes)
  games, video_frames = [], None
  # Each game of a multi-task run in turn; --video and --frame_png record the first.
  for task, env_config in enumerate(episodes_lib.task_configs(
      policy.config.env, num_envs=num_envs, seed=f.seed, noop_max=f.noop_max)):
    result, frames = _play(f, policy, env_config, record=task == 0)
    video_frames = frames if task == 0 else video_frames
    games.append(_Game(env_config, result, episodes_lib.summarize(
        env_config.env_id, [e.episode_return for e in result.episodes])))
  report = _report(f, policy, games, video_frames, time.monotonic() - start)
  output = f.output or os.path.join(f.logdir, f"evaluation_{policy.step}.json")
  with open(output, "w", encoding="utf-8") as out:
    json.dump(report, out, indent=2)
  _print_summary(f, policy, games, output, video_frames)


if __name__ == "__main__":
  app.run(main)
