"""dyngrad's benchmark suite: ``python -m benchmarks [--quick] [--json PATH] [--plot PATH]``.

See benchmarks/README.md. Importing the package (before numpy loads its BLAS) limits
OpenBLAS's idle threads to spinning 2^22 cycles (about 1 ms, as dyngrad's pool does;
OpenBLAS's default is 2^28, a tenth of a second) unless the environment says otherwise: the
suite runs several frameworks' thread pools in one process, and a pool still spinning from
the last sample would hold a core the next mode needs. The suite then gives every
framework the same number of threads (``--threads``).
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
