"""The package's layout rules: which subsystem folder may import which, no import circle, PyAV kept
out of shard reading and the data stack out of weight conversion, every method citation resolving
to a heading of docs/METHOD.md inside the clone."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tc_keras"
METHOD = ROOT / "docs" / "METHOD.md"
FOLDERS = ("model", "data", "propagation", "export", "convert", "train")
# What each folder may import besides itself (tc_keras.<name>: a top-level module or a folder).
ALLOWED = {
    "model": {"ops"},
    "data": {"ops", "atomic"},
    "propagation": {"ops", "flag_fields", "model", "data"},
    "export": {"ops", "atomic", "model", "propagation"},
    "convert": {"ops", "atomic", "model", "export"},
    "train": {"ops", "atomic", "cli", "flag_fields", "model", "data", "propagation", "export",
              "convert"},
}
TOP_LEVEL = {"ops": set(), "atomic": set(), "cli": set(), "flag_fields": set()}


def _modules():
    """{module name: path} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path):
    """tc_keras modules a file imports (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tc_keras")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tc_keras"):
            # `from tc_keras.data import video` imports tc_keras.data.video
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return found


def _unit(module):
    """The folder or top-level module a module belongs to: tc_keras.model.encoder -> model."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_folder_says_what_it_holds_and_may_import():
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, f"tc_keras/{folder}/__init__.py needs its docstring"
    assert {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"} == {
        "__init__.py", *(f"{name}.py" for name in TOP_LEVEL)}


def test_folders_import_only_what_their_docstrings_allow():
    modules = _modules()
    broken = []
    for name, path in modules.items():
        unit = _unit(name)
        allowed = ALLOWED.get(unit, TOP_LEVEL.get(unit, set())) | {unit}
        for target in _imports(path):
            if target in modules or target.rsplit(".", 1)[0] in modules:
                if _unit(target) not in allowed and _unit(target) is not None:
                    broken.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not broken, "\n".join(broken)


def test_no_import_circle():
    modules = _modules()
    graph = {name: {t if t in modules else t.rsplit(".", 1)[0] for t in _imports(path)
                    if t in modules or t.rsplit(".", 1)[0] in modules} - {name}
             for name, path in modules.items()}
    # Packages' __init__ files import nothing; drop the edges to them (a parent package).
    graph = {k: {t for t in v if modules[t].name != "__init__.py"} for k, v in graph.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module,forbidden", [
    ("tc_keras.data.pipeline", ("av",)),  # reading shards never imports PyAV
    ("tc_keras.data.shard_files", ("av",)),
    ("tc_keras.convert.releases", ("tc_keras.data", "av", "tc_keras.train")),
    ("tc_keras.propagation.propagate", ("tc_keras.train", "tc_keras.export")),
    ("tc_keras.export.runtimes", ("tc_keras.train", "tc_keras.data")),
])
def test_what_an_import_pulls_in(module, forbidden):
    code = (f"import sys, {module}; "
            f"print([m for m in sorted(sys.modules) if m == 'av' or m.startswith({forbidden!r})])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"{module} pulls in {out}"


def _headings():
    return {m.group(1).strip() for m in re.finditer(r"^#{1,4} (.+)$", METHOD.read_text(), re.M)}


def test_every_method_citation_resolves_to_a_heading():
    headings = _headings()
    cited, broken = 0, []
    files = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".flags")
             and ".git" not in p.parts and p != METHOD]
    for path in files:
        text = re.sub(r"\"\s*\n\s*\"", "", path.read_text())  # join implicitly concatenated strings
        text = re.sub(r"\s*\n\s*(#\s*)?", " ", text)  # citations broken over comment lines
        for m in re.finditer(r"docs/METHOD\.md, [\"']([^\"']+)[\"']", text):
            cited += 1
            if m.group(1) not in headings:
                broken.append(f"{path.relative_to(ROOT)}: {m.group(1)!r}")
    assert cited > 30
    assert not broken, f"headings missing from docs/METHOD.md: {broken}"


def test_nothing_cites_a_document_outside_the_clone():
    for path in ROOT.rglob("*"):
        if path.suffix in (".py", ".md", ".flags", ".cfg", ".txt") and ".git" not in path.parts \
                and path != pathlib.Path(__file__):
            assert "PAPER.md" not in path.read_text(), path
