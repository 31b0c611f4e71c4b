"""The package layout's rules (docs/design.md#import-rule): imports follow the flow of stages (no module imports
one of a stage above its own), and no private name (``_name``) is used outside its package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ray_ser"
DESIGN = ROOT / "docs" / "design.md"

LEVELS: list[tuple[str, ...]] = [
    # 0: top-level helpers every stage may use; they import only each other
    ("", "errors", "redaction", "settings", "names", "metrics", "storage", "inputs", "console", "runtime",
     "cluster_resources", "audio", "public", "section"),
    ("corpora",),  # manifests, labels, adapters, folds
    ("store",),  # the LanceDB store, shared by every later stage; holds the manifests corpora describe
    ("fm",),  # the models
    ("extract",),  # manifest -> audio -> conditions -> model -> store
    ("analysis",),  # saliency, layer selection, probes, clusters, pruned frames
    ("train",),  # fold plans from the analyses, the loop, Ray Train and Tune
    ("evaluate",),  # predictions of trained folds, tables, reports, the cross-corpus matrix and its probe
    ("serve",),  # new audio outside the store: model bundles, their cards, the in-process predictor
    ("config", "config_reference"),  # the experiment config, which composes every stage's options
    ("jobs",),  # one module per stage: flags and main()
    ("cli",),  # the `ray-ser` command
]
"""Stages from the bottom up, each named by its module or package under ray_ser ("" is ray_ser itself): a module
may import its own stage and those below, never one above."""
LEVEL = {name: i for i, names in enumerate(LEVELS) for name in names}

ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    # (importing module, imported module): why it stays.
    ("ray_ser", "ray_ser.serve.model"): "`from ray_ser import load_model` is the notebook API the users ask for; "
                                         "ray_ser/__init__.py imports it lazily, on the first call, so importing "
                                         "ray_ser itself loads no stage",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _stage(module: str) -> str:
    """The stage name of a ray_ser module: its first part below ray_ser ("" for ray_ser itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _package(module: str) -> str:
    """The package a private name may be shared within: ray_ser.<sub> for modules of a subpackage, ray_ser for the
    top-level modules."""
    stage = _stage(module)
    return f"ray_ser.{stage}" if stage and (PACKAGE / stage).is_dir() else "ray_ser"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (getattr(node.test, "id", None) == "TYPE_CHECKING"
                                         or getattr(node.test, "attr", None) == "TYPE_CHECKING"):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(module: str, path: Path):
    """(line, imported module, names) of every import of a ray_ser module, at any depth; ``from ray_ser.x import y``
    counts as an import of ray_ser.x.y when y is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ray_ser":
                    yield node.lineno, alias.name, [], alias.asname
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "ray_ser":
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in MODULES:
                    yield node.lineno, target, [], alias.asname or alias.name
                else:
                    yield node.lineno, source, [alias.name], None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_every_module_has_a_stage():
    assert sorted({_stage(m) for m in MODULES} - set(LEVEL)) == [], "add the new module or package to LEVELS"


def test_imports_follow_the_flow_of_stages():
    upward = set()
    for module, path in MODULES.items():
        for line, target, _, _ in _imports(module, path):
            if LEVEL[_stage(target)] > LEVEL[_stage(module)] and (module, target) not in ALLOWED_UPWARD:
                upward.add(f"{path.relative_to(ROOT)}:{line}: {module} ({_stage(module) or 'ray_ser'}, level "
                           f"{LEVEL[_stage(module)]}) imports {target} (level {LEVEL[_stage(target)]})")
    assert not upward, "imports against the flow of stages:\n" + "\n".join(sorted(upward))


def test_allowlist_holds_only_live_exceptions():
    live = {(module, target) for module, path in MODULES.items() for _, target, _, _ in _imports(module, path)}
    assert set(ALLOWED_UPWARD) <= live


def test_no_private_name_crosses_a_package():
    found = []
    for module, path in MODULES.items():
        aliases = {}
        for line, target, names, alias in _imports(module, path):
            for name in names:
                if _private(name) and _package(target) != _package(module):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}.{name}")
            if alias:
                aliases[alias] = target
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # module._name on an imported module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr) and _package(aliases[node.value.id]) != _package(module)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} uses "
                             f"{aliases[node.value.id]}.{node.attr}")
    assert found == [], "private names used outside their package:\n" + "\n".join(found)


def test_design_notes_list_the_same_stages():
    """docs/design.md's table of stages (one row per level: `name.py` or `name/` in backticks) is LEVELS."""
    section = DESIGN.read_text(encoding="utf-8").split("\n## Import rule\n", 1)[1].split("\n## ", 1)[0]
    rows = [[n.removesuffix("/").removesuffix(".py") for n in re.findall(r"`([^`]+)`", m.group(2))]
            for m in re.finditer(r"^\| (\d+) \| (.*) \|$", section, re.M)]
    assert rows == [[n or "__init__" for n in names] for names in LEVELS]


def test_every_package_names_what_others_import_from_it():
    """A package's ``__all__`` (its public face, ray_ser.public.lazy_api) lists every name another package imports
    from one of its modules, and each listed name resolves."""
    import importlib

    missing = []
    for module, path in MODULES.items():
        for line, target, names, _ in _imports(module, path):
            package = _package(target)
            if package == "ray_ser" or package == _package(module) or target == package:
                continue
            face = importlib.import_module(package)
            for name in names:
                if name not in getattr(face, "__all__", ()):
                    missing.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}.{name}, "
                                   f"not in {package}.__all__")
    assert missing == [], "\n".join(missing)
    for package in sorted({_package(m) for m in MODULES} - {"ray_ser", "ray_ser.jobs"}):
        face = importlib.import_module(package)
        assert [n for n in getattr(face, "__all__", ()) if getattr(face, n, None) is None] == [], package
