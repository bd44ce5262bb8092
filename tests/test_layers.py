"""The compiler's structure, read from its source (nothing is run): primitives are never
switched on by name, passes never import backends, no module imports another's private
names, and no import cycle exists inside compiler/ (counting imports anywhere in a file)."""

from __future__ import annotations

import ast
from pathlib import Path

from dyngrad.ops import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
COMPILER = ROOT / "compiler"

def _modules() -> dict[str, Path]:
    out = {}
    for p in COMPILER.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mod: str, path: Path, known: dict) -> set:
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            if node.level:
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        for t in names:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != mod:
                found.add(t)
    return found


def _cycles(graph: dict) -> list[set]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _graph() -> dict:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def test_no_import_cycle_inside_the_compiler():
    assert not _cycles(_graph()), "import cycles (strongly connected modules)"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_passes_never_import_backends():
    for m, deps in _graph().items():
        if m.startswith("compiler.passes"):
            assert not [d for d in deps if d.startswith("compiler.backends")], m


USER_SIDE = ("compiler.api", "compiler.capture", "compiler.trace", "compiler.guards",
             "compiler.effects", "compiler.pipeline", "compiler.debug", "compiler.profile",
             "compiler.verify", "compiler.results", "compiler.scalars")


def test_backends_take_ir_and_never_the_user_side():
    """Backends are given graphs: they never import what deals with user functions and
    their Python state (the call path, the capture, the tracer, guards, effects, the
    pipeline that feeds them)."""
    for m, deps in _graph().items():
        if m.startswith("compiler.backends"):
            bad = [d for d in deps if d.startswith(USER_SIDE)]
            assert not bad, (m, bad)


def _prim_name(node) -> bool:
    """``<x>.prim.name`` or ``prim.name``."""
    return isinstance(node, ast.Attribute) and node.attr == "name" and (
        isinstance(node.value, ast.Attribute) and node.value.attr == "prim"
        or isinstance(node.value, ast.Name) and node.value.id == "prim")


def test_no_switch_on_primitive_names_in_the_compiler():
    """Passes ask a primitive's traits (compiler/prims.py); backends look rules up by the
    record. No compare, lookup or registry access by a primitive's name."""
    names = set(REGISTRY)
    bad = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Compare) and any(
                    _prim_name(x) for x in [node.left, *node.comparators]):
                bad.append(f"{where}: compares a primitive's name")
            if isinstance(node, ast.Subscript) and _prim_name(node.slice):
                bad.append(f"{where}: looks up by a primitive's name")
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                    node.value.id in ("REGISTRY", "_P", "P") and \
                    isinstance(node.slice, ast.Constant) and node.slice.value in names:
                bad.append(f"{where}: REGISTRY[{node.slice.value!r}]")
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and \
                    node.left.id == "name" and any(
                        isinstance(c, ast.Constant) and c.value in names
                        or isinstance(c, (ast.Tuple, ast.Set, ast.List)) and any(
                            isinstance(e, ast.Constant) and e.value in names for e in c.elts)
                        for c in node.comparators):
                bad.append(f"{where}: compares `name` with a primitive's name")
    assert not bad, "\n".join(bad)


def test_the_switch_test_catches_a_name_compare():
    """(The AST rule above is not vacuous.)"""
    tree = ast.parse("if n.prim.name == 'exp':\n    pass\n")
    cmp = next(x for x in ast.walk(tree) if isinstance(x, ast.Compare))
    assert _prim_name(cmp.left)


def test_a_new_elementwise_primitive_is_its_record_and_one_llvm_rule():
    """``round`` and ``ceil`` were added to show what a new elementwise primitive costs: its
    record (dyngrad/ops/elementwise.py) and, in compiler/, its name where prims.py
    re-exports the records plus one entry in the LLVM backend's rule table (loops.py). The
    interpreter runs the record's own impl; no trait was needed (elementwise is what a
    record's kind says)."""
    import re
    for name in ("ROUND", "CEIL"):
        files = {p.relative_to(ROOT).as_posix() for p in COMPILER.rglob("*.py")
                 if re.search(rf"\b{name}\b", p.read_text())}
        assert files == {"compiler/prims.py", "compiler/backends/llvm/loops.py"}, files


def test_every_registered_primitive_has_traits():
    from compiler import prims
    assert set(prims.TRAITS) >= set(REGISTRY.values())
    for p in REGISTRY.values():
        assert getattr(prims, p.name.upper()) is p, f"compiler.prims.{p.name.upper()}"


def test_no_private_name_is_imported_across_compiler_modules():
    mods = _modules()
    bad = []
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = m.split(".") if is_pkg else m.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                base = ".".join(base + ([node.module] if node.module else []))
                bad += [f"{m} <- {base}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                        and base in mods]
    assert not bad, bad


# ------------------------------------------------------------------ dyngrad's own layers

DYNGRAD = ROOT / "dyngrad"
# dyngrad/ has no import inside a function but these: the lazy `compile` re-export,
# mpmath, a development-time dependency of `python -m dyngrad.special`, and mpi4py, the
# optional `dist` extra, imported by `init_process_group` (importing it starts MPI, which
# `import dyngrad` must not) (was 81 before the layering; the tensor core's upward calls go
# through tensor.UPWARD instead).
MAX_FUNCTION_LEVEL_IMPORTS = 4


def _package_modules(pkg: Path) -> dict[str, Path]:
    out = {}
    for p in pkg.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _import_sites(path: Path):
    """(import node, whether it runs at import time) for every import in the file; one
    inside a function body (or lambda) runs later."""
    def walk(node, nested):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.Import, ast.ImportFrom)):
                yield ch, nested
            yield from walk(ch, nested or isinstance(
                ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(ast.parse(path.read_text()), False)


def _dyngrad_graph() -> tuple[dict, list]:
    """Module-level import edges between dyngrad's modules, and the function-level imports
    (module, line, source) anywhere in dyngrad/."""
    known = _package_modules(DYNGRAD) | _modules()
    graph, late = {}, []
    for m, path in _package_modules(DYNGRAD).items():
        graph[m] = set()
        for node, nested in _import_sites(path):
            if nested:
                late.append((m, node.lineno, ast.unparse(node)))
                continue
            graph[m] |= {t for t in _targets(m, path, node, known) if t.startswith("dyngrad")}
    return graph, late


def _targets(mod: str, path: Path, node, known: dict) -> set:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        if node.level:
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names]
    out = set()
    for t in names:
        while t and t not in known:
            t = t.rpartition(".")[0]
        if t and t != mod:
            out.add(t)
    return out


def test_dyngrad_has_no_import_cycle_and_few_function_level_imports():
    """tensor core -> primitives -> composites -> methods: no cycle between dyngrad's modules
    (module-level imports), and an import inside a function is a reviewed exception."""
    graph, late = _dyngrad_graph()
    assert not _cycles(graph), f"import cycles in dyngrad/: {_cycles(graph)}"
    assert len(late) <= MAX_FUNCTION_LEVEL_IMPORTS, "function-level imports in dyngrad/:\n" + \
        "\n".join(f"  {m}:{line}: {src}" for m, line, src in late)


def test_the_tensor_core_imports_no_layer_above_it():
    """Note [calls up from the tensor core] (dyngrad/tensor.py): the core calls up only
    through tensor.UPWARD."""
    graph, _ = _dyngrad_graph()
    core = {"dyngrad.dtypes", "dyngrad.dispatch", "dyngrad.autograd.graph",
            "dyngrad.autograd.grad_mode", "dyngrad.tensor"}
    for m in core:
        assert graph[m] <= core, f"{m} imports {sorted(graph[m] - core)}"


def test_dyngrad_imports_the_compiler_only_in_the_lazy_compile_re_export():
    known = _package_modules(DYNGRAD) | _modules()
    sites = []
    for m, path in _package_modules(DYNGRAD).items():
        tree = ast.parse(path.read_text())
        for node, nested in _import_sites(path):
            if any(t.startswith("compiler") for t in _targets(m, path, node, known)):
                fn = next(f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                          and f.lineno <= node.lineno <= f.end_lineno) if nested else None
                sites.append((m, fn))
    assert sites == [("dyngrad", "compile")], sites


def test_the_dyngrad_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    """(Not vacuous: a module-level import back up the layers is a cycle.)"""
    pkg = tmp_path / "dyngrad"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tensor.py").write_text("from .ops.creation import tensor\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "creation.py").write_text(
        "from ..tensor import Tensor\n\ndef f():\n    import numpy\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "DYNGRAD", pkg)
    monkeypatch.setitem(globals(), "COMPILER", tmp_path / "compiler")
    graph, late = _dyngrad_graph()
    assert _cycles(graph) == [{"dyngrad.tensor", "dyngrad.ops.creation"}]
    assert [(m, src) for m, _, src in late] == [("dyngrad.ops.creation", "import numpy")]
