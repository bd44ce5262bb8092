"""The README and the pages in docs/ say only what is true: every ```python block runs, and
every command, path, link and op name they mention exists.

- Each ```python block of README.md and docs/*.md runs as written, one by one, each in a
  fresh namespace, in a temporary working directory (a block that writes files writes them
  there, or in a temporary directory of its own). Tracebacks point at the page's line. A
  block that starts ``# run with: python -m dyngrad.distributed.run -n N script.py`` is a
  data-parallel script: it runs as that command says, on N ranks (skipped without the
  ``dist`` extra).
- ```sh and ```text blocks are not executed: they are shell commands (which install, train
  for seconds to minutes, or depend on your own script) and sample output. Instead each
  command they show — and each command quoted inline (`make …`, `python …`, `bash …`) — is
  checked: a `make` target must be in the Makefile; `python path/to/script.py` must name a
  file (a bare `your_script.py` is a placeholder) and `python -m module` a module, with
  every `--option` the line passes present in its source; a `pip install` extra must be in
  pyproject.toml; `bash path` must name a file.
- Relative links must reach a file (and a heading, for `#anchor`s); source paths quoted in
  backticks must exist; the op table the README lists must be dyngrad's.
- `docs/draw_pipeline.py`, which draws the docs' figures, must run.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def fenced(lang: str) -> list:
    """(page, first line number of the code, code) of every block in ``lang``."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                out.append((page, text.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return out


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def label(page: Path, line: int) -> str:
    return f"{page.relative_to(ROOT)}:{line}"


PYTHON = fenced("python")


def test_pages_have_python_examples():
    assert sum(1 for page, _, _ in PYTHON if page.name == "README.md") >= 15
    assert sum(1 for page, _, _ in PYTHON if page.parent.name == "docs") >= 5


@pytest.mark.parametrize("page, line, code", PYTHON,
                         ids=[label(p, n) for p, n, _ in PYTHON])
def test_python_block_runs(page, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = "\n" * (line - 1) + code  # (so a traceback names the page's own line)
    launched = LAUNCHED.match(code)
    if launched:
        run_on_ranks(int(launched.group(1)), launched.group(2), source, tmp_path)
        return
    exec(compile(source, str(page), "exec"), {"__name__": "readme"})


LAUNCHED = re.compile(r"# run with: python -m dyngrad\.distributed\.run -n (\d+) (\S+\.py)\n")


def run_on_ranks(n: int, name: str, source: str, where: Path) -> None:
    """A data-parallel block, saved as ``name`` and run on ``n`` ranks by the launcher."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("the dist extra (mpi4py, mpich) is not installed: pip install -e '.[dist]'")
    (where / name).write_text(source)
    proc = subprocess.run([sys.executable, "-m", "dyngrad.distributed.run", "-n", str(n), name],
                          cwd=where, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


# ---------------------------------------------------------------------- commands
def make_targets() -> set:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, flags=re.M))


def extras() -> set:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def module_source(name: str) -> Path | None:
    """The file that runs for ``python -m name``, if it is in the repository."""
    for candidate in (ROOT / name / "__main__.py", ROOT / f"{name}.py"):
        if candidate.exists():
            return candidate
    return None


def check_command(words: list) -> str | None:
    """What is wrong with one shell command (None if nothing is)."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return None
    program, args = os.path.basename(words[0]), words[1:]
    options = [a.split("=")[0] for a in args if a.startswith("--")]
    if program == "make":
        missing = [t for t in args if not t.startswith("-") and t not in make_targets()]
        return f"no Makefile target {missing}" if missing else None
    if program == "bash":
        return None if (ROOT / args[0]).exists() else f"no file {args[0]}"
    if program == "pip":
        wanted = {e for a in args for group in re.findall(r"\[([\w,]+)\]", a)
                  for e in group.split(",")}
        return f"no extras {wanted - extras()}" if wanted - extras() else None
    if program in ("python", "python3"):
        if args[:1] == ["-m"]:
            name = args[1]
            source = module_source(name)
            if source is None:
                return None if importlib.util.find_spec(name) else f"no module {name}"
        else:
            script = next((a for a in args if not a.startswith("-")), None)
            if script is None or "/" not in script:
                return None  # `python your_script.py`: a placeholder
            source = ROOT / script
            if not source.exists():
                return f"no file {script}"
        text = source.read_text(encoding="utf-8")
        unknown = [o for o in options if o not in text]
        return f"{source.relative_to(ROOT)} has no option {unknown}" if unknown else None
    return f"the test does not know how to check {program!r}"


def shown_commands() -> list:
    """(where, command words) of every command in ```sh blocks and in inline code."""
    out = []
    for page, line, code in fenced("sh"):
        for k, text in enumerate(code.splitlines()):
            text = re.split(r"\s#", text)[0].strip()
            for part in filter(None, (p.strip() for p in text.split("&&"))):
                out.append((label(page, line + k), shlex.split(part)))
    for page in PAGES:
        for text in re.findall(r"`((?:make|python3?|bash) [^`]+)`", prose(page)):
            out.append((f"{page.relative_to(ROOT)} (inline)", shlex.split(text)))
    return out


def test_every_command_shown_exists():
    commands = shown_commands()
    assert any(w[:2] == ["make", "demo"] for _, w in commands)
    problems = [f"{where}: {' '.join(words)}: {why}" for where, words in commands
                if (why := check_command(words))]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- links and paths
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(page), flags=re.M)}


def test_links_reach_files_and_headings():
    problems = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{page.name}: link to missing {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{page.name}: no heading for #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


SEARCHED = ("", "compiler", "compiler/backends", "compiler/backends/llvm", "dyngrad", "tests",
            "examples", "docs")


def test_source_paths_in_backticks_exist():
    problems = []
    for page in PAGES:
        for path in re.findall(r"`([\w./*-]+\.(?:py|md|png))`", prose(page)):
            if "/" not in path and path.startswith("your_"):
                continue  # a placeholder for the reader's own script
            if not any(glob.glob(str(ROOT / base / path)) for base in SEARCHED):
                problems.append(f"{page.name}: {path}")
    assert not problems, "no such file:\n" + "\n".join(problems)


def test_op_table_in_the_readme_is_dyngrads():
    from dyngrad.ops import REGISTRY
    m = re.search(r"\*\*One op table\.\*\* (\d+) primitives — `([^`]+)`",
                  (ROOT / "README.md").read_text(encoding="utf-8"))
    assert m, "the README's op table paragraph moved"
    assert set(m.group(2).split()) == set(REGISTRY)
    assert int(m.group(1)) == len(REGISTRY)


# ---------------------------------------------------------------------- figures
def test_draw_pipeline_script_draws_both_figures(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("networkx")
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "docs/draw_pipeline.py"), "--out",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("pipeline.png", "fused_graph.png"):
        assert (tmp_path / name).stat().st_size > 10_000
        assert (ROOT / "docs" / name).exists()  # the committed copy the page shows
