"""The tracing JIT compiler for dyngrad.

``compile`` traces a function's first call (forward, ``backward()`` and the optimizer update
together) into a static IR, guards every assumption it made and replays the graph on later
calls; anything it cannot follow runs eagerly with a recorded reason. See README.md.

Layering: ``compiler`` imports ``dyngrad``; ``dyngrad`` never imports ``compiler`` (except the
lazy ``dyngrad.compile``).
"""

from .api import (
    CompiledFunction,
    CompileVerifyError,
    clear_cache,
    compile,
    config,
    disable,
    reset,
)
from .debug import explain, show
from .ir import Graph, verify
from .profile import Profile, profile

__all__ = ["compile", "CompiledFunction", "CompileVerifyError", "config", "disable", "reset",
           "clear_cache", "explain", "show", "profile", "Profile", "Graph", "verify"]
