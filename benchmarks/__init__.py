"""dyngrad's benchmark suite: ``python -m benchmarks [--quick] [--json PATH] [--plot PATH]``.

See benchmarks/README.md. Importing the package limits BLAS to one thread (unless the
environment already says otherwise): it must happen before numpy loads its BLAS.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # (the LLVM backend's own OpenMP threads stay:
    #                                   OMP_NUM_THREADS is not set)
