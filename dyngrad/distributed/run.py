"""The launcher: start a training script as N ranks under MPI.

    python -m dyngrad.distributed.run -n 2 train.py --epochs 3
    python -m dyngrad.distributed.run -n 8 --hostfile hosts train.py

It runs ``mpiexec -n N [-hostfile FILE] PYTHON train.py ...`` with the ``mpiexec`` that sits
beside this Python (MPICH's wheel, from the ``dist`` extra, installs one into the venv's
``bin``), else the first on ``PATH``; ``PYTHON`` is this interpreter, so every rank runs in
the same environment. The environment is passed through, plus ``PYTHONUNBUFFERED=1`` (so
what a rank printed is not lost when the job is aborted) and, with more than one rank on
this machine and no value set, ``OMP_NUM_THREADS=1`` (as ``torchrun`` does: N ranks each
with a thread per core would oversubscribe it). The exit status is ``mpiexec``'s: nonzero
when any rank failed.

MPICH's ``mpiexec`` passes the environment to ranks on other hosts too; with Open MPI's,
export variables with its ``-x NAME`` option (``--mpiexec-args``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["find_mpiexec", "build_command", "child_environment", "main"]


def find_mpiexec(python: str = sys.executable) -> str:
    """The ``mpiexec`` beside ``python`` (a venv's ``bin``), else the first on ``PATH``."""
    beside = Path(python).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError(
            f"dyngrad.distributed.run: no mpiexec beside {python} nor on PATH: install the "
            f"'dist' extra (pip install -e '.[dist]', which brings MPICH's wheel and its "
            f"mpiexec) or an MPI implementation")
    return found


def build_command(nproc: int, program: list[str], hostfile: str | None = None,
                  mpiexec: str | None = None, python: str = sys.executable,
                  module: bool = False, mpiexec_args: list[str] = ()) -> list[str]:
    """The ``mpiexec`` command line that runs ``program`` (a script and its arguments, or a
    module and its arguments with ``module``) as ``nproc`` ranks.

    >>> build_command(2, ["train.py", "--lr", "0.1"], mpiexec="mpiexec", python="python")
    ['mpiexec', '-n', '2', 'python', 'train.py', '--lr', '0.1']
    """
    if nproc < 1:
        raise ValueError(f"dyngrad.distributed.run: -n must be at least 1, got {nproc}")
    if not program:
        raise ValueError("dyngrad.distributed.run: give the script to run (and its "
                         "arguments)")
    command = [mpiexec or find_mpiexec(python), "-n", str(nproc)]
    if hostfile is not None:
        command += ["-hostfile", hostfile]  # (both MPICH's and Open MPI's spelling)
    command += list(mpiexec_args)
    return command + [python] + (["-m"] if module else []) + list(program)


def child_environment(nproc: int, hostfile: str | None = None,
                      base: dict | None = None) -> dict:
    """The ranks' environment: ``base`` (this process's) with ``PYTHONUNBUFFERED=1`` and,
    for several ranks on this machine, ``OMP_NUM_THREADS=1`` unless set."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if nproc > 1 and hostfile is None:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dyngrad.distributed.run",
        description="Run a training script as N ranks under MPI (mpiexec); see "
                    "docs/distributed.md.")
    p.add_argument("-n", "--nproc", type=int, required=True, help="number of ranks")
    p.add_argument("--hostfile", help="MPI host file, for ranks on several machines")
    p.add_argument("-m", "--module", action="store_true",
                   help="run the program as a module (python -m), as torchrun's --module")
    p.add_argument("--mpiexec", help="the mpiexec to use (default: beside this Python, "
                                     "else on PATH)")
    p.add_argument("--mpiexec-args", default="",
                   help="more options for mpiexec, as one string (e.g. '-x MY_VAR')")
    p.add_argument("program", nargs=argparse.REMAINDER,
                   help="the script (or module, with -m) and its arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = build_command(args.nproc, args.program, args.hostfile, args.mpiexec,
                            module=args.module, mpiexec_args=shlex.split(args.mpiexec_args))
    proc = subprocess.Popen(command, env=child_environment(args.nproc, args.hostfile))
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # (the terminal sent mpiexec the SIGINT too)
        code = proc.wait()
    return 128 - code if code < 0 else code  # (killed by signal s: 128 + s, as a shell)


if __name__ == "__main__":
    sys.exit(main())
