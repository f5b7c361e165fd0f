"""Random and human reference scores of the 57 Atari games, and human-normalised scores.

    hns = (score - random) / (human - random)

0 is a uniformly random policy, 1 a professional human games tester. The reference scores are
the ones every Atari-57 paper normalises by: Mnih et al. 2015 ("Human-level control through
deep reinforcement learning", Nature, Extended Data Table 2) for 49 games, completed to 57 by
the later papers (van Hasselt et al. 2016; Badia et al. 2020, "Agent57", arXiv:2003.13350,
Appendix H, Table of random and human scores). The numbers below are copied from DeepMind's DQN
Zoo, `dqn_zoo/atari_data.py` (github.com/google-deepmind/dqn_zoo, Apache 2.0), which is the
table that the IMPALA paper, Agent57 and rliable also use. They were measured with up to 30
no-op actions at the start of each episode and episodes capped at 108,000 frames (30 minutes),
which is how `experiments/evaluate.py` plays.

Game names here are EnvPool's (the task id without its `-v5` suffix: `MontezumaRevenge-v5` →
`MontezumaRevenge`); DQN Zoo's snake_case name is kept beside each for checking against the
source.
"""

import re
from typing import Callable, Dict, NamedTuple, Optional, Tuple


class ReferenceScores(NamedTuple):
  """Attributes:
    game: EnvPool's game name, e.g. "Pong".
    random: the mean score of a uniformly random policy.
    human: the mean score of a professional human games tester.
  """

  game: str
  random: float
  human: float


# (EnvPool game name, DQN Zoo name, random, human), as in dqn_zoo/atari_data.py.
_TABLE: Tuple[Tuple[str, str, float, float], ...] = (
    ("Alien", "alien", 227.8, 7127.7),
    ("Amidar", "amidar", 5.8, 1719.5),
    ("Assault", "assault", 222.4, 742.0),
    ("Asterix", "asterix", 210.0, 8503.3),
    ("Asteroids", "asteroids", 719.1, 47388.7),
    ("Atlantis", "atlantis", 12850.0, 29028.1),
    ("BankHeist", "bank_heist", 14.2, 753.1),
    ("BattleZone", "battle_zone", 2360.0, 37187.5),
    ("BeamRider", "beam_rider", 363.9, 16926.5),
    ("Berzerk", "berzerk", 123.7, 2630.4),
    ("Bowling", "bowling", 23.1, 160.7),
    ("Boxing", "boxing", 0.1, 12.1),
    ("Breakout", "breakout", 1.7, 30.5),
    ("Centipede", "centipede", 2090.9, 12017.0),
    ("ChopperCommand", "chopper_command", 811.0, 7387.8),
    ("CrazyClimber", "crazy_climber", 10780.5, 35829.4),
    ("Defender", "defender", 2874.5, 18688.9),
    ("DemonAttack", "demon_attack", 152.1, 1971.0),
    ("DoubleDunk", "double_dunk", -18.6, -16.4),
    ("Enduro", "enduro", 0.0, 860.5),
    ("FishingDerby", "fishing_derby", -91.7, -38.7),
    ("Freeway", "freeway", 0.0, 29.6),
    ("Frostbite", "frostbite", 65.2, 4334.7),
    ("Gopher", "gopher", 257.6, 2412.5),
    ("Gravitar", "gravitar", 173.0, 3351.4),
    ("Hero", "hero", 1027.0, 30826.4),
    ("IceHockey", "ice_hockey", -11.2, 0.9),
    ("Jamesbond", "jamesbond", 29.0, 302.8),
    ("Kangaroo", "kangaroo", 52.0, 3035.0),
    ("Krull", "krull", 1598.0, 2665.5),
    ("KungFuMaster", "kung_fu_master", 258.5, 22736.3),
    ("MontezumaRevenge", "montezuma_revenge", 0.0, 4753.3),
    ("MsPacman", "ms_pacman", 307.3, 6951.6),
    ("NameThisGame", "name_this_game", 2292.3, 8049.0),
    ("Phoenix", "phoenix", 761.4, 7242.6),
    ("Pitfall", "pitfall", -229.4, 6463.7),
    ("Pong", "pong", -20.7, 14.6),
    ("PrivateEye", "private_eye", 24.9, 69571.3),
    ("Qbert", "qbert", 163.9, 13455.0),
    ("Riverraid", "riverraid", 1338.5, 17118.0),
    ("RoadRunner", "road_runner", 11.5, 7845.0),
    ("Robotank", "robotank", 2.2, 11.9),
    ("Seaquest", "seaquest", 68.4, 42054.7),
    ("Skiing", "skiing", -17098.1, -4336.9),
    ("Solaris", "solaris", 1236.3, 12326.7),
    ("SpaceInvaders", "space_invaders", 148.0, 1668.7),
    ("StarGunner", "star_gunner", 664.0, 10250.0),
    ("Surround", "surround", -10.0, 6.5),
    ("Tennis", "tennis", -23.8, -8.3),
    ("TimePilot", "time_pilot", 3568.0, 5229.2),
    ("Tutankham", "tutankham", 11.4, 167.6),
    ("UpNDown", "up_n_down", 533.4, 11693.2),
    ("Venture", "venture", 0.0, 1187.5),
    # DQN Zoo: "the random agent score on Video Pinball is sometimes greater than the human
    # score under other evaluation methods".
    ("VideoPinball", "video_pinball", 16256.9, 17667.9),
    ("WizardOfWor", "wizard_of_wor", 563.5, 4756.5),
    ("YarsRevenge", "yars_revenge", 3092.9, 54576.9),
    ("Zaxxon", "zaxxon", 32.5, 9173.3),
)

_SCORES: Dict[str, ReferenceScores] = {
    game: ReferenceScores(game, random, human) for game, _, random, human in _TABLE}

# The 57 games of the Atari-57 benchmark, EnvPool's names, sorted.
ATARI_57: Tuple[str, ...] = tuple(sorted(_SCORES))

# EnvPool's (and Gymnasium's) spellings: "Pong-v5", "ALE/Pong-v5", "PongNoFrameskip-v4".
_ENV_ID = re.compile(r"^(?:ALE/)?(?P<game>[A-Za-z0-9]+?)(?:NoFrameskip|Deterministic)?-v\d+$")


def game_name(env_id: str) -> Optional[str]:
  """The Atari-57 game of a task id (`"Pong-v5"` → `"Pong"`), or None for any other task."""
  if not isinstance(env_id, str):
    return None
  match = _ENV_ID.match(env_id)
  if match is None:
    return None
  game = match.group("game")
  return game if game in _SCORES else None


def env_id_of(game: str) -> str:
  """EnvPool's task id of an Atari-57 game name (`"Pong"` → `"Pong-v5"`)."""
  if game not in _SCORES:
    raise ValueError(f"{game!r} is not one of the 57 Atari games.")
  return f"{game}-v5"


def reference_scores(env_id: str) -> Optional[ReferenceScores]:
  """The random and human scores of `env_id`'s game; None if it is not an Atari-57 game."""
  game = game_name(env_id)
  return None if game is None else _SCORES[game]


def human_normalized_score(env_id: str, score: Optional[float]) -> Optional[float]:
  """`(score - random) / (human - random)` for `env_id`'s game.

  Returns None when `env_id` is not one of the 57 Atari games (CartPole, MuJoCo, an Atari game
  without reference scores), or when `score` is None.
  """
  scores = reference_scores(env_id)
  if scores is None or score is None:
    return None
  return (float(score) - scores.random) / (scores.human - scores.random)


def normalizer(env_id: str) -> Optional[Callable[[float], Optional[float]]]:
  """`score ↦ human_normalized_score(env_id, score)` for an Atari-57 game, else None.

  What `runtime.telemetry.Telemetry` scores Atari rows with: None leaves the column out.
  """
  if reference_scores(env_id) is None:
    return None
  return lambda score: human_normalized_score(env_id, score)
