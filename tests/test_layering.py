"""The package's import graph: no cycle between modules, and subpackages import only downward.

Every import counts, at module level or inside a function: an import inside a function still
ties the two modules together, and is the usual hiding place of a cycle. The graph is read from
the source with `ast`, so this test imports nothing of the package (no JAX).
"""

import ast
import functools
import pathlib
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

PACKAGE = "impala_jax"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# The layers, bottom to top. A unit (a top-level module or a subpackage; PACKAGE itself is the
# package's __init__.py) may import its own modules and any unit of a lower layer; units of
# one layer do not import each other.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    # The ground floor: imports nothing of the package.
    ("types", "stage_clock", "threads", "queues", "config_checks"),
    ("rl",),  # Pure math.
    # The scale-out designs' and the learner's settings, re-exported by config.
    ("config_scale_out", "config_learning"),
    ("config",),
    ("envs", "networks"),
    ("learning", "acting"),
    ("distributed", "evaluation"),
    ("runtime",),
    (PACKAGE,),  # The public API.
)

# Upward imports allowed for now, (importer, imported) → why. An entry that no import needs any
# more fails `test_every_allowance_is_still_needed`: delete it with the import.
ALLOWED_UPWARD: Dict[Tuple[str, str], str] = {
}

Graph = Dict[str, FrozenSet[str]]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def _modules() -> Dict[str, pathlib.Path]:
  return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve(name: str, modules: Dict[str, pathlib.Path]) -> Optional[str]:
  """The package module `name` loads: itself, or its closest enclosing package."""
  if name != PACKAGE and not name.startswith(PACKAGE + "."):
    return None
  while name not in modules:
    name = name.rpartition(".")[0]
  return name


def imports_of(source: str, module: str, is_package: bool,
               modules: Dict[str, pathlib.Path]) -> Set[str]:
  """The package modules that `source` (module `module`) imports, anywhere in the file."""
  package = module if is_package else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from a import b` loads module a.b where there is one, else a (b is a name in it).
      names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
               for alias in node.names]
    else:
      continue
    resolved = (_resolve(name, modules) for name in names)
    found.update(m for m in resolved if m is not None and m != module)
  return found


@functools.lru_cache(maxsize=None)
def import_graph() -> Graph:
  modules = _modules()
  return {module: frozenset(imports_of(path.read_text(), module, path.name == "__init__.py",
                                       modules))
          for module, path in modules.items()}


def unit_of(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else PACKAGE


def _layer_of() -> Dict[str, int]:
  return {unit: level for level, units in enumerate(LAYERS) for unit in units}


def find_cycle(graph: Graph) -> Optional[List[str]]:
  """One import cycle of `graph` as [m0, m1, ..., m0], or None."""
  done: Set[str] = set()
  path: List[str] = []
  on_path: Set[str] = set()

  def visit(module: str) -> Optional[List[str]]:
    path.append(module)
    on_path.add(module)
    for imported in sorted(graph.get(module, ())):
      if imported in on_path:
        return path[path.index(imported):] + [imported]
      if imported not in done:
        cycle = visit(imported)
        if cycle:
          return cycle
    path.pop()
    on_path.discard(module)
    done.add(module)
    return None

  for module in sorted(graph):
    if module not in done:
      cycle = visit(module)
      if cycle:
        return cycle
  return None


def upward_imports(graph: Graph) -> List[Tuple[str, str]]:
  """(importer, imported) modules whose units break `LAYERS`, less `ALLOWED_UPWARD`."""
  layer = _layer_of()
  found = []
  for module, imported_modules in sorted(graph.items()):
    for imported in sorted(imported_modules):
      units = (unit_of(module), unit_of(imported))
      if units[0] != units[1] and units not in ALLOWED_UPWARD and (
          layer[units[1]] >= layer[units[0]]):
        found.append((module, imported))
  return found


def test_the_graph_sees_every_import():
  modules = dict.fromkeys(["impala_jax", "impala_jax.envs", "impala_jax.envs.specs",
                           "impala_jax.envs.custom", "impala_jax.config"])
  source = ("import numpy\n"
            "from impala_jax import config as config_lib\n"
            "from impala_jax.envs import EnvSpec\n"
            "from . import specs\n"
            "def make():\n"
            "  import impala_jax\n")
  assert imports_of(source, "impala_jax.envs.custom", False, modules) == {
      "impala_jax.config", "impala_jax.envs", "impala_jax.envs.specs", "impala_jax"}
  assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
      "a", "b", "c", "a"]
  graph = import_graph()
  assert "impala_jax.envs.custom" in graph["impala_jax.envs.building"]
  assert "impala_jax.threads" in graph["impala_jax.acting.actor"]


def test_no_import_cycle_between_modules():
  cycle = find_cycle(import_graph())
  assert cycle is None, "Import cycle: " + " → ".join(cycle)


def test_every_unit_has_a_layer():
  layer = _layer_of()
  missing = sorted({unit_of(module) for module in import_graph()} - set(layer))
  assert not missing, f"Place these in LAYERS: {missing}."


def test_subpackages_import_only_downward():
  upward = upward_imports(import_graph())
  assert not upward, "Imports up or sideways in LAYERS:\n" + "\n".join(
      f"  {module} → {imported}" for module, imported in upward)


def test_every_allowance_is_still_needed():
  used = {(unit_of(module), unit_of(imported))
          for module, imported_modules in import_graph().items()
          for imported in imported_modules}
  stale = sorted(set(ALLOWED_UPWARD) - used)
  assert not stale, f"No import needs these ALLOWED_UPWARD entries any more: {stale}."
