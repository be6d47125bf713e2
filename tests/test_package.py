"""Package-level promises: a flat public API and a light ``import core``."""
import subprocess
import sys


def test_public_names_import_flat_from_core():
    import core

    for name in ["load_model", "onnx_source", "ImporterParams", "LoadedNet", "ScalarType",
                 "ModelLoadError", "UnsupportedOperatorError", "InputError", "MixqError"]:
        assert hasattr(core, name), name
        assert name in core.__all__


def test_import_core_stays_light():
    code = (
        "import sys, core; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'tensorflow', 'prefect', 'mlflow', 'PIL') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_core_never_imports_prefect_or_mlflow():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "core"
    offenders = [
        str(p) for p in root.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+(prefect|mlflow)\b", p.read_text(), re.M)
    ]
    assert offenders == []


# ---------------------------------------------------------------- the import graph of core/, tasks/, flows/

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
PACKAGES = ("core", "tasks", "flows")


def _modules() -> dict:
    """Module name -> its file, for every module under PACKAGES."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _module_level_imports(tree):
    """The import statements that run when the module is imported: at module level or nested in
    module-level if/try/with blocks, but not in functions, classes or ``if TYPE_CHECKING:``."""
    import ast

    def walk(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If):
                test = node.test
                if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                    yield from walk(node.orelse)
                    continue
                yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    yield from walk(block)
            elif isinstance(node, ast.With):
                yield from walk(node.body)

    yield from walk(tree.body)


def _absolute(node, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at module level (``from pkg import submodule``
    counts as importing the submodule)."""
    import ast

    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _absolute(node, module, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "core.errors" in graph["core.loaded_net"] and "core.ir.graph" in graph["core.loaded_net"]
    assert "tasks.steps" in graph["flows.search"]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def _all_imports_graph() -> dict[str, set[str]]:
    """Like :func:`import_graph` but with the imports inside functions too (the lazy ones): what
    runs at some point, only ``if TYPE_CHECKING:`` blocks left out."""
    import ast

    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                       for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


# The op registry loads the op modules on first use (import core.ops inside a function), and each
# op module imports the registry to register its ops: self-registration, the one accepted circle.
LAZY_OP_LOADING = ("core.ops.registry", "core.ops")


def test_no_import_cycles_even_through_lazy_imports():
    graph = _all_imports_graph()
    assert LAZY_OP_LOADING[1] in graph[LAZY_OP_LOADING[0]]
    graph[LAZY_OP_LOADING[0]].discard(LAZY_OP_LOADING[1])
    # the circles issue 11 named are gone: analysis -> loaded_net -> model -> analysis, ir.graph <-> ops.registry
    assert "core.loaded_net" not in graph["core.analysis.layer_error"] and "core.loaded_net" not in graph["core.model"]
    assert "core.ops.registry" not in graph["core.ir.graph"]
    assert find_cycle(graph) is None


# ---------------------------------------------------------------- no private names across modules

# Private names still imported across modules, each with its reason (none left since issue 11);
# each entry must still exist (so it is struck from here when the name is made public).
PENDING_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


def private_imports() -> set[tuple[str, str, str]]:
    """``(file, module, name)`` of every ``from module import _name`` (anywhere in the file) in
    core/, tasks/, flows/ whose module is another project module."""
    import ast

    modules = _modules()
    found = set()
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _absolute(node, module, path.name == "__init__.py")
            for a in node.names:
                private = a.name.startswith("_") and not a.name.startswith("__")
                if private and base != module and (base in modules or base.split(".")[0] in PACKAGES):
                    found.add((path.relative_to(ROOT).as_posix(), base, a.name))
    return found


def test_no_private_names_imported_across_modules():
    found = private_imports()
    assert not PENDING_PRIVATE_IMPORTS - found, "fixed: strike these from PENDING_PRIVATE_IMPORTS"
    assert found - PENDING_PRIVATE_IMPORTS == set()


def test_private_import_finder_finds_them(tmp_path, monkeypatch):
    import tests.test_package as this

    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text("def _hidden():\n    pass\n")
    (tmp_path / "core" / "b.py").write_text("def f():\n    from core.a import _hidden\n    from . import a\n")
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "PACKAGES", ("core",))
    assert private_imports() == {("core/b.py", "core.a", "_hidden")}
    assert import_graph()["core.b"] == set() and _all_imports_graph()["core.b"] == {"core.a"}
