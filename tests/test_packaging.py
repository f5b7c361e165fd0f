"""The package declares what it imports: setup.py's install_requires matches its imports."""

import ast
import importlib.metadata
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _top_level_imports(folder):
  modules = set()
  for root, _, files in os.walk(folder):
    for name in files:
      if not name.endswith(".py"):
        continue
      with open(os.path.join(root, name), encoding="utf-8") as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
          modules.add(node.module.split(".")[0])
  return modules - set(sys.stdlib_module_names) - {"impala_jax"}


def _install_requires():
  with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
    source = f.read()
  block = source[source.index("install_requires=["):source.index("],", source.index(
      "install_requires=["))]
  return {re.split(r"[<>=\[ ]", s)[0].lower().replace("_", "-")
          for s in re.findall(r'"([^"]+)"', block)}


def test_every_import_of_the_package_is_an_install_requirement():
  distributions = importlib.metadata.packages_distributions()
  required = _install_requires()
  imported = _top_level_imports(os.path.join(REPO, "impala_jax"))
  missing = {}
  for module in imported:
    names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
    if not names & required:
      missing[module] = sorted(names)
  assert not missing, f"imported by impala_jax but not in install_requires: {missing}"


def test_the_cross_checks_are_test_dependencies_not_package_ones():
  imported = _top_level_imports(os.path.join(REPO, "impala_jax"))
  assert "rlax" not in imported and "distrax" not in imported
  assert "rlax" not in _install_requires()
