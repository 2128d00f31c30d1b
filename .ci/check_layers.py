"""The import-layer contract of fracjax, checked over the source (no import is run).

Layers, highest first; a module may import its own layer and any lower one, never a higher one,
and siblings on one line (``a | b``) not each other. Every import counts: at the top of a module,
inside a function (a function-local import hides a cycle, it does not remove it), and
``import fracjax`` followed by ``fracjax.data...`` (the package's lazy attributes). Modules must
also form no cycle among themselves, within a layer as across.

Known breaches that the redesign (issue 32) is removing are listed in KNOWN with their reason: a
new breach fails, and so does a listed one that no longer occurs (delete its line), so the list
only shrinks.

Usage: python .ci/check_layers.py [ROOT]   (ROOT holds the fracjax/ package; default: the repo)
Exit status 1 with one line per breach.
"""

import ast
import pathlib
import sys

LAYERS = [
    "cli",
    "commands",
    "comparison",
    "train",
    "deploy",
    "evaluation",
    "inference",
    "data",
    "models",
    "ops",
    "metrics | checkpoint | hashing | hostmem | ood | caches | argparsing",
]

# Names the package's __getattr__ hands out, and the module each one loads.
FACADE = {"Classifier": "inference", "export": "deploy", "evaluate": "evaluation"}

# Known breaches, each with why it is still there: (kind, what) -> reason. Empty since issue 32 split
# the data builders into a package; a breach that must stay a while is listed here with its issue.
KNOWN = {}


def rank_of(layer):
    """The layer's position (0 = highest) and its name, for a module's first component."""
    for rank, line in enumerate(LAYERS):
        if layer in [name.strip() for name in line.split("|")]:
            return rank
    return None


def module_index(root):
    """Every module under ROOT/fracjax: dotted name -> file."""
    package = root / "fracjax"
    index = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        index[".".join(parts)] = path
    return index


def resolve(name, index):
    """The longest prefix of a dotted name that is a fracjax module (None for the bare package)."""
    parts = name.split(".")
    while len(parts) > 1:
        candidate = ".".join(parts)
        if candidate in index:
            return candidate
        parts.pop()
    return None


def _attribute_chain(node):
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
        return ".".join(reversed(names))
    return None


def imports_of(module, path, index):
    """(imported module, line) for every fracjax import in one file, function-local ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found, binds_root = [], False
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.append(alias.name)
                binds_root |= alias.name.startswith("fracjax") and alias.asname is None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base == "fracjax" or base.startswith("fracjax."):
                # `from package import submodule` imports the submodule (its package is loaded
                # first in any case); `from package import name` imports the package.
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    names.append(submodule if submodule in index else base)
        for name in names:
            target = resolve(name, index)
            if target:
                found.append((target, node.lineno))
    if binds_root:
        for node in ast.walk(tree):
            chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else None
            if chain and chain.startswith("fracjax."):
                head = chain.split(".")[1]
                target = f"fracjax.{FACADE[head]}" if head in FACADE else resolve(chain, index)
                if target:
                    found.append((target, node.lineno))
    return sorted(set(found), key=lambda item: (item[0], item[1]))


def layer_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_breaches(graph):
    """(importer, imported, line, why) for each import that goes up, or across siblings."""
    out = []
    for importer, targets in graph.items():
        low = layer_of(importer)
        for imported, line in targets:
            high = layer_of(imported)
            if low is None or high is None or low == high:
                continue
            ra, rb = rank_of(low), rank_of(high)
            if ra is None:
                out.append((importer, imported, line, f"layer '{low}' is not in LAYERS"))
            elif rb is None:
                out.append((importer, imported, line, f"layer '{high}' is not in LAYERS"))
            elif rb < ra:
                out.append((importer, imported, line, f"'{low}' may not import the higher layer '{high}'"))
            elif rb == ra:
                out.append((importer, imported, line, f"'{low}' and '{high}' are siblings: neither imports the other"))
    return out


def cycles(graph):
    """Each elementary cycle's canonical form (rotated to start at its least module), found by DFS."""
    edges = {a: sorted({b for b, _ in targets if b != a}) for a, targets in graph.items()}
    found = set()

    def walk(start, node, path, on_path):
        for nxt in edges.get(node, []):
            if nxt == start:
                found.add(tuple(path))
            elif nxt not in on_path and nxt > start:
                on_path.add(nxt)
                walk(start, nxt, path + [nxt], on_path)
                on_path.discard(nxt)

    for start in sorted(edges):
        walk(start, start, [start], {start})
    return sorted(" -> ".join(list(c) + [c[0]]) for c in found)


def check(root):
    index = module_index(root)
    graph = {module: imports_of(module, path, index) for module, path in index.items()}
    problems, seen = [], set()
    for importer, imported, line, why in layer_breaches(graph):
        key = (importer, imported)
        seen.add(key)
        if key not in KNOWN:
            problems.append(f"{index[importer].relative_to(root)}:{line}: imports {imported}: {why}")
    for cycle in cycles(graph):
        key = ("cycle", cycle)
        seen.add(key)
        if key not in KNOWN:
            problems.append(f"import cycle: {cycle}")
    for key, why in KNOWN.items():
        if key not in seen:
            problems.append(f"KNOWN lists {' '.join(key)} ({why}), which no longer occurs: delete that line")
    return problems


def main(argv):
    root = pathlib.Path(argv[1] if len(argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    problems = check(root)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} breach(es) of the import layers ({__file__})")
        return 1
    print(f"import layers: {len(module_index(root))} modules, no new breach, {len(KNOWN)} known")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
