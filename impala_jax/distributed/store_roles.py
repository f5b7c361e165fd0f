"""Who may do what in the Redis trajectory store: one ACL user per role, each with its secret.

  actor    (experiments/actor_host.py) appends unrolls and episode records, counts what the
           store's bound drops, and reads the parameters, the learner's settings, whether a
           learner holds the keys and whether the run has ended. It cannot write parameters,
           settings or the learner key, nor read or delete what other hosts pushed.
  learner  (the training run) everything on the store's keys: pops unrolls and episodes,
           publishes parameters and settings, holds the learner key (its lease), marks the
           run's end. Not the server's administration (CONFIG, SHUTDOWN, ...).

Keys are matched by their suffix, `*:unrolls` and so on, so one pair of users serves every
`--redis_key_prefix` on a server. `acl_lines` are redis.conf `user` directives; an operator
of a shared Redis gives the same rules with `ACL SETUSER` (docs/distributed.md).
"""

import hashlib
from typing import List, Mapping

ACTOR, LEARNER = "actor", "learner"

# Keys, by what the actor role may do with them (suffixes after "<prefix>:").
ACTOR_WRITES = ("unrolls", "episodes", "dropped")
ACTOR_READS = ("params", "params_version", "settings", "done", "learner")
# What a pusher and a poller send: transactions of RPUSH + LTRIM and INCRBY; bounded reads.
ACTOR_COMMANDS = ("ping", "rpush", "ltrim", "incrby", "multi", "exec", "discard", "getrange",
                  "exists")


def _rule_keys(permission: str, suffixes) -> List[str]:
  return [f"{permission}~*:{suffix}" for suffix in suffixes]


def actor_rules() -> List[str]:
  """The actor user's ACL rules (after `on` and its password).

  RPUSH and LTRIM read the list they change (its length), so the written keys are open to
  read and write (`~`); what keeps an actor from reading them is that it has no command
  that returns their content (no LRANGE, LPOP, GET).
  """
  return (["resetkeys", "resetchannels", "-@all"] + [f"+{c}" for c in ACTOR_COMMANDS] +
          _rule_keys("", ACTOR_WRITES) + _rule_keys("%R", ACTOR_READS))


def learner_rules() -> List[str]:
  """The learner user's ACL rules: every command but administration, on every key."""
  return ["resetkeys", "resetchannels", "~*", "+@all", "-@admin", "-@dangerous", "+info"]


def acl_lines(passwords: Mapping[str, str]) -> List[str]:
  """redis.conf `user` lines for the roles in `passwords` (role → password), written as their
  SHA-256 (`#<hex>`), so the config file holds no password. (Switch the default user off, or
  keep it as the administrator's, with a password of its own.)"""
  rules = {ACTOR: actor_rules(), LEARNER: learner_rules()}
  lines = []
  for role, password in passwords.items():
    digest = hashlib.sha256(password.encode()).hexdigest()
    lines.append(" ".join(["user", role, "on", f"#{digest}"] + rules[role]))
  return lines
