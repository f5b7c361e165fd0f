"""Environment factories: `module.path:factory` ids, and one environment from a factory."""

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Union

import dm_env
import gymnasium

# What separates the module from the factory in an id; its presence makes an id custom.
SEPARATOR = ":"

Factory = Callable[..., Any]


def load_factory(env_id: str) -> Factory:
  """Imports the factory named by `module.path:attribute` (dots in the attribute descend).

  The current directory is added to the end of `sys.path` first, so that a script run from
  the directory of `my_sim.py` finds `my_sim:make_env`.

  Raises:
    ValueError: a malformed id, a module that cannot be imported, a missing attribute, or
      one that is not callable.
  """
  module_name, _, attribute = env_id.partition(SEPARATOR)
  if not module_name or not attribute or SEPARATOR in attribute:
    raise ValueError(f"A custom environment id is 'module.path:factory', got {env_id!r}.")
  cwd = os.getcwd()
  if cwd not in sys.path:
    sys.path.append(cwd)
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"Cannot import module {module_name!r} of environment {env_id!r}: {e}. "
                     "It must be importable (installed, on PYTHONPATH, or in the current "
                     "directory).") from e
  target = module
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise ValueError(f"Module {module_name!r} has no attribute {attribute!r} (environment "
                       f"{env_id!r}).")
    target = getattr(target, part)
  if not callable(target):
    raise ValueError(f"{env_id!r} is not callable: the environment factory must be a function "
                     "or class returning a gymnasium.Env or a dm_env.Environment.")
  return target


def resolve(factory: Union[str, Factory]) -> Factory:
  return load_factory(factory) if isinstance(factory, str) else factory


def name_of(factory: Factory) -> str:
  return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', factory)}"


def _takes_seed(factory: Factory) -> bool:
  try:
    parameters = inspect.signature(factory).parameters
  except (TypeError, ValueError):  # No signature to read (some builtins): call it bare.
    return False
  if "seed" in parameters:
    return True
  required = [p.name for p in parameters.values() if p.default is p.empty and
              p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  if required:
    raise ValueError(f"The environment factory {name_of(factory)} must take no argument or one "
                     f"named 'seed'; it requires {required}.")
  return False


def make_one(factory: Union[str, Factory], seed: int) -> Any:
  """One environment from `factory`, passing `seed=seed` if it takes a `seed`."""
  factory = resolve(factory)
  env = factory(seed=seed) if _takes_seed(factory) else factory()
  if not isinstance(env, (gymnasium.Env, dm_env.Environment)):
    raise ValueError(f"The environment factory {name_of(factory)} returned "
                     f"{type(env).__name__}; expected a gymnasium.Env or a dm_env.Environment "
                     "(an old `gym` environment needs porting to gymnasium).")
  return env
