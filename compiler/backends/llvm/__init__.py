"""The LLVM backend (``backend="llvm"``, the default): ``runner.py`` (the entry: one driver
call, or a hybrid plan), ``driver.py`` (a whole graph as one native call), ``codegen.py``
with ``reduce.py``, ``matmul.py``/``gemm.py``, ``datamove.py`` and ``randomgen.py`` (a
kernel per fusion group), ``vecmath.py`` (math functions in IR), ``forms.py`` (one module
per form of a symbolic variant's code), ``jit.py`` and ``cache.py`` (LLVM and the disk cache),
``blas.py``/``tune.py`` and ``threads.py``. See docs/compiler.md."""

from . import widths  # noqa: F401,E402 - registers the loop-width decider (target.py)
