"""The LLVM backend, in progress: ``jit.py`` (LLVM IR text to native code), ``vecmath.py``
(exp, log, tanh, sigmoid, erf, sin, cos written in IR so loops vectorise) and ``codegen.py``
(one vectorised kernel per elementwise fusion group). ``backend="llvm"`` in ``compile`` still
raises until reductions, matmul and the driver function exist."""
