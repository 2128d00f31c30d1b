"""Every third-party import of fracjax/, tests/ and examples/ comes from a declared requirement.

A module imported but not declared works where it happens to be installed and fails on a new
user's machine (hypothesis did: the suite passed in CI and 5 files failed to import in a fresh
virtual environment). The declared requirements are followed through what each installed
distribution requires, as pip does. The library may use an optional extra's packages only in the
modules where that extra is documented as needed (README, Deployment), and nothing else may import
those modules at its top: ``import fracjax`` and every command work without the extras.
"""

import ast
import json
import pathlib
import re
import subprocess
import sys
import tomllib
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCAL = {"fracjax", "tests"}

# The modules that need an optional extra, and so may import its packages (README, Deployment:
# `pip install -e ".[serve,onnx]"`).
EXTRA_MODULES = {
    "serve": {"fracjax/deploy/server.py", "fracjax/commands/serve.py"},
    "onnx": {"fracjax/deploy/onnx_model.py", "fracjax/deploy/onnx_graph.py"},
    "mlflow": {"fracjax/train/event_log.py"},  # --log-to mlflow only (the import is inside _MLflow and check_store)
}


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(spec):
    """(distribution, extras, marker) of one requirement string."""
    base, _, marker = spec.partition(";")
    found = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[([^\]]*)\])?", base)
    extras = [e.strip() for e in (found.group(2) or "").split(",") if e.strip()]
    return normalise(found.group(1)), extras, marker.strip()


def _wanted(marker, extras):
    """Whether a dependency's marker holds for an install asking for ``extras`` (other markers: yes)."""
    named = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
    return not named or any(normalise(e) in {normalise(x) for x in extras} for e in named)


def closure(specs, own_extras, requires=None):
    """Every distribution that installing ``specs`` brings, following installed metadata.

    ``own_extras``: this project's extras (a requirement on the project itself expands to them).
    ``requires``: distribution -> its requirement strings (default: the installed metadata).
    """
    requires = requires or (lambda dist: metadata.requires(dist) or [])
    todo = [(spec, ()) for spec in specs]
    seen, name = set(), normalise(PROJECT["name"])
    while todo:
        spec, parent_extras = todo.pop()
        dist, extras, marker = parse_requirement(spec)
        if not _wanted(marker, parent_extras):
            continue
        if dist == name:
            todo += [(s, ()) for extra in extras for s in own_extras.get(extra, [])]
            continue
        key = (dist, tuple(sorted(extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            todo += [(s, tuple(extras)) for s in requires(dist)]
        except metadata.PackageNotFoundError:
            pass
    return {dist for dist, _ in seen}


def imported_modules(source):
    """Top-level names of the absolute imports in Python source (function-local ones too), and
    of ``pytest.importorskip("name")`` calls."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def sources(folder):
    """(relative path, Python source) of every .py file and notebook code cell under ``folder``."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield str(path.relative_to(ROOT)), path.read_text()
    for path in sorted((ROOT / folder).rglob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(line for line in c["source"] if not line.lstrip().startswith(("%", "!")))
                         for c in cells if c["cell_type"] == "code")
        yield str(path.relative_to(ROOT)), code


def undeclared(files, allowed_for, module_dists):
    """'path: module (distributions)' for each import not brought by what that file may use.

    ``files``: (path, source); ``allowed_for(path)``: the distributions it may use;
    ``module_dists``: top-level module -> installed distributions (none: not installed).
    """
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for path, source in files:
        allowed = allowed_for(path)
        for module in sorted(imported_modules(source) - stdlib - LOCAL):
            dists = [normalise(d) for d in module_dists.get(module, [])]
            if not any(d in allowed for d in dists):
                problems.append(f"{path}: {module} ({', '.join(dists) or 'not installed'})")
    return problems


def test_every_import_is_brought_by_a_declared_requirement():
    extras = PROJECT["optional-dependencies"]
    core = closure(PROJECT["dependencies"], extras)
    with_test = core | closure(extras["test"], extras)
    per_extra = {extra: closure(extras[extra], extras) for extra in EXTRA_MODULES}

    def allowed_for(path):
        if not path.startswith("fracjax/"):
            return with_test
        return core.union(*(per_extra[e] for e, paths in EXTRA_MODULES.items() if path in paths))

    files = [item for folder in ("fracjax", "tests", "examples") for item in sources(folder)]
    assert len(files) > 100
    problems = undeclared(files, allowed_for, metadata.packages_distributions())
    assert not problems, "imports that no declared requirement brings:\n" + "\n".join(problems)


def test_the_check_finds_an_undeclared_import():
    requires = {"a-lib": ["b-lib>=1", "c-lib; extra == 'fast'", "d-lib; python_version >= '3'"]}.get
    assert closure(["a-lib>=2"], {}, lambda d: requires(d, [])) == {"a-lib", "b-lib", "d-lib"}
    assert closure(["a-lib[fast]"], {}, lambda d: requires(d, [])) == {"a-lib", "b-lib", "c-lib", "d-lib"}
    assert closure(["fracjax[x]"], {"x": ["b-lib"]}, lambda d: requires(d, [])) == {"b-lib"}
    files = [("tests/t.py", "import os, numpy\ndef f():\n    import scipy.stats\n    from yaml import safe_load\n"
              "pytest.importorskip('httpx')\nfrom . import sibling\n")]
    dists = {"numpy": ["numpy"], "scipy": ["scipy"], "yaml": ["PyYAML"]}
    assert undeclared(files, lambda path: {"numpy"}, dists) == [
        "tests/t.py: httpx (not installed)", "tests/t.py: scipy (scipy)", "tests/t.py: yaml (pyyaml)"]
    assert undeclared(files, lambda path: {"numpy", "scipy", "pyyaml", "httpx"}, {**dists, "httpx": ["httpx"]}) == []


# Makes every optional extra's packages fail to import, as on a machine without the extras.
BLOCK_EXTRAS = (
    "import importlib.abc, sys\n"
    "BLOCKED = set(sys.argv[1].split(','))\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in BLOCKED:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def test_without_the_extras_every_other_module_imports():
    extras = PROJECT["optional-dependencies"]
    core = closure(PROJECT["dependencies"], extras)
    extra_only = {normalise(d) for e in EXTRA_MODULES for d in closure(extras[e], extras)} - core
    blocked = sorted({module for module, dists in metadata.packages_distributions().items()
                      if all(normalise(d) in extra_only for d in dists)})
    assert {"fastapi", "onnxruntime", "onnx"} <= set(blocked)
    needing_extras = set().union(*EXTRA_MODULES.values())
    modules = []
    for path in sorted((ROOT / "fracjax").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative not in needing_extras and path.name != "__main__.py":
            modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    code = BLOCK_EXTRAS + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "import fracjax.cli\nfracjax.cli.main(['--help'])\n"
    done = subprocess.run([sys.executable, "-c", code, ",".join(blocked)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "serve" in done.stdout  # the command lists serve even where it cannot run
