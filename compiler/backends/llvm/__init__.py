"""The LLVM backend (in progress: see ``jit.py`` for the JIT layer). ``backend="llvm"`` in
``compile`` still raises until code generation and the driver exist."""
