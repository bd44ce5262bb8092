"""The machine the code is generated for: a CPU name and features as LLVM knows them, and
the width of the vectors the loops use.

By default that is this machine: LLVM's name for the host CPU (``znver4``,
``sapphirerapids``, ...) and every feature it reports, on or off. ``DYNGRAD_TARGET`` makes
the code generator behave as on another CPU, on this one:

=========================================  ==============================================
``DYNGRAD_TARGET=x86-64-v3``               AVX2 and FMA, no AVX-512 (the psABI level 3)
``DYNGRAD_TARGET=skylake-avx512``          AVX-512 with Intel's tuning (256-bit loops)
``DYNGRAD_TARGET=sapphirerapids``          the Intel Xeon class, on an AMD machine
``DYNGRAD_TARGET=host:-avx512f``           this CPU's tuning with AVX-512 turned off
``DYNGRAD_TARGET=x86-64-v3:-fma``          features after a colon, comma-separated
=========================================  ==============================================

Note (emulation is safe by construction): the CPU name chooses LLVM's scheduling model,
tuning and default features; every feature the host lacks is then turned off (``-x``), so
the code an emulated target gets can only use instructions this machine has — it runs here,
and it is what the other CPU would run wherever the two share features. Asking for a feature
the host lacks (``+avx512fp16`` on a CPU without it) is an error, not a crash later.
An emulated target's vector registers and FMA are read from LLVM itself (:func:`_probe`:
what a 512-bit add and an ``llvm.fma`` compile to), since LLVM does not list a named CPU's
features.

The width of loop vectors (``loop_bits``) is the widest the target has, except on AVX-512
targets, where 256 or 512 is decided by measurement once per machine (``widths.py``);
``DYNGRAD_VECTOR_WIDTH=256|512`` forces it. It reaches LLVM as the ``prefer-256-bit`` tuning
feature, so it is part of the feature string — and of the disk cache's key, with the CPU
name: an entry made for one target is never loaded for another. The width never changes a
result: the loops use no fast-math flags (LLVM may not reorder a sum) and reductions fold
fixed 16-lane vectors (``reduce.py``), whatever registers hold them.

Example::

    >>> from compiler.backends.llvm import target
    >>> t = target.current()
    >>> t.cpu, t.vector_bits, t.loop_bits, t.fma        # doctest: +SKIP
    ('znver4', 512, 512, True)
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, replace

import llvmlite.binding as llvm

from ..base import SettingError

ENV = "DYNGRAD_TARGET"
WIDTH_ENV = "DYNGRAD_VECTOR_WIDTH"
_lock = threading.RLock()
_resolved: dict[str, Target] = {}  # "base" / "current" -> the Target (this process)


class TargetError(SettingError):
    """``DYNGRAD_TARGET`` or ``DYNGRAD_VECTOR_WIDTH`` cannot be honoured here."""


@dataclass(frozen=True)
class Target:
    """A CPU as the code generator sees it (see the module docstring)."""

    cpu: str  # LLVM's CPU name (scheduling model and tuning)
    features: str  # the feature string given to LLVM: "+a,-b,..."
    host: str  # LLVM's name for the CPU this process runs on
    emulated: bool  # chosen by DYNGRAD_TARGET rather than the host
    vector_bits: int  # the widest vector registers the target has: 128, 256 or 512
    fma: bool  # fused multiply-add instructions
    loop_bits: int = 0  # the width loops are vectorised for (0: not decided yet)
    width_how: str = ""  # how loop_bits was decided ("measured ...", "forced", "only width")

    @property
    def scalef(self) -> bool:
        """Whether ``vscalefps`` exists (AVX-512): exp's scaling by 2**n is then one
        instruction (vecmath.py)."""
        return self.vector_bits == 512

    def machine_key(self) -> str:
        """What a measurement made for this target holds for: the CPU names and features
        (the loop width excluded: it is what some measurements decide)."""
        base = ",".join(f for f in self.features.split(",") if f not in _WIDTH_FEATURES)
        return f"{self.cpu}@{self.host} {_digest(base)}"

    def describe(self) -> str:
        """One line for explain() and benchmark headers, e.g. ``znver4: 512-bit vectors,
        FMA; loops 512-bit (measured ...)``."""
        who = f"{self.cpu} (emulated on {self.host} by {ENV})" if self.emulated else self.cpu
        loops = f"; loops {self.loop_bits}-bit ({self.width_how})" if self.loop_bits else ""
        return f"{who}: {self.vector_bits}-bit vectors{', FMA' if self.fma else ''}{loops}"


_WIDTH_FEATURES = ("+prefer-256-bit", "-prefer-256-bit")


def _digest(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _host_features() -> dict[str, bool]:
    return dict(llvm.get_host_cpu_features())


def _parse(spec: str, host: dict[str, bool]) -> tuple[str, list[str]]:
    """(cpu name, extra features) of a ``DYNGRAD_TARGET`` value, checked."""
    cpu, _, rest = spec.strip().partition(":")
    cpu = cpu.strip() or "host"
    extra = [f.strip() for f in rest.split(",") if f.strip()]
    for f in extra:
        if not re.fullmatch(r"[+-][A-Za-z0-9_.-]+", f):
            raise TargetError(f"{ENV}={spec!r}: feature {f!r} is not '+name' or '-name' "
                              f"(example: {ENV}=x86-64-v3:-fma)")
        if f[0] == "+" and host.get(f[1:]) is False:
            raise TargetError(
                f"{ENV}={spec!r}: this CPU ({llvm.get_host_cpu_name()}) has no {f[1:]!r}; "
                f"code using it could not run here. Name only features the host has.")
    return cpu, extra


_PROBE_IR = """
define void @wide(ptr %p) #0 {
  %v = load <16 x float>, ptr %p
  %r = fadd <16 x float> %v, %v
  store <16 x float> %r, ptr %p
  ret void
}
define float @fused(float %a, float %b, float %c) {
  %r = call float @llvm.fma.f32(float %a, float %b, float %c)
  ret float %r
}
declare float @llvm.fma.f32(float, float, float)
attributes #0 = { "min-legal-vector-width"="512" "prefer-vector-width"="512" }
"""

_PROBE = """
import sys
import llvmlite.binding as llvm
llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
llvm.initialize_native_asmparser()
cpu, features, ir = sys.argv[1:4]
tm = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features)
asm = tm.emit_assembly(llvm.parse_assembly(ir))
print(512 if "zmm" in asm else 256 if "ymm" in asm else 128, int("vfmadd" in asm))
"""


def _probe(cpu: str, features: str, spec: str) -> tuple[int, bool]:
    """(widest vector register in bits, FMA) of a named target, read from what LLVM makes
    of a 512-bit add (``zmm``, ``ymm`` or ``xmm`` registers) and of ``llvm.fma.f32``
    (``vfmadd``, or a call to ``fmaf``).

    Note (in a child process): LLVM only warns about a CPU or feature name it does not know
    — and then aborts the process while generating code (as it does for a known CPU without
    64-bit mode, such as ``pentium4``). So the probe runs in a short-lived Python process,
    and its warnings or its death become a :class:`TargetError` here."""
    import subprocess
    import sys
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, cpu, features, _PROBE_IR],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TargetError(f"{ENV}={spec!r}: could not probe the cpu: {exc}") from None
    problems = [ln.strip() for ln in proc.stderr.splitlines() if "not a recognized" in ln]
    problems += [ln.strip() for ln in proc.stderr.splitlines() if "LLVM ERROR" in ln]
    out = proc.stdout.split()
    if problems or proc.returncode != 0 or len(out) != 2:
        why = "; ".join(dict.fromkeys(problems)) or proc.stderr.strip()[-300:] or "no output"
        raise TargetError(f"{ENV}={spec!r}: LLVM cannot generate 64-bit x86 code for it: "
                          f"{why}")
    return int(out[0]), out[1] == "1"


def _resolve() -> Target:
    """The target without its loop width: the host, or what ``DYNGRAD_TARGET`` names."""
    init_llvm()
    host_name = llvm.get_host_cpu_name()
    host = _host_features()
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        on = lambda f: host.get(f, False)  # noqa: E731
        bits = 512 if on("avx512f") and host.get("evex512", True) else 256 if on("avx") \
            else 128
        return Target(host_name, llvm.get_host_cpu_features().flatten(), host_name, False,
                      bits, on("fma"))
    cpu, extra = _parse(spec, host)
    if cpu in ("host", "native"):
        cpu = host_name
    off = [f"-{f}" for f, v in sorted(host.items()) if not v]
    features = ",".join(off + extra)
    bits, fma = _probe(cpu, features, spec)
    return Target(cpu, features, host_name, True, bits, fma)


def base() -> Target:
    """The target without a loop width decided (what ``widths.py`` measures on)."""
    with _lock:
        if "base" not in _resolved:
            _resolved["base"] = _resolve()
        return _resolved["base"]


def with_loop_bits(t: Target, bits: int, how: str) -> Target:
    """``t`` generating loops of ``bits``-bit vectors (the feature string says so when the
    target has a choice)."""
    features = ",".join(f for f in t.features.split(",") if f and f not in _WIDTH_FEATURES)
    if t.vector_bits == 512:
        features += ",+prefer-256-bit" if bits == 256 else ",-prefer-256-bit"
    return replace(t, features=features, loop_bits=bits, width_how=how)


def current() -> Target:
    """The target every module is compiled for, loop width included (decided on first use by
    the width decider, ``widths.decide``)."""
    t = _resolved.get("current")
    if t is not None:
        return t
    with _lock:
        if "current" not in _resolved:
            if not _decider:
                raise RuntimeError("target.current(): no loop-width decider registered "
                                   "(importing compiler.backends.llvm registers widths.py's)")
            b = base()
            bits, how = _decider[0](b)
            _resolved["current"] = with_loop_bits(b, bits, how)
        return _resolved["current"]


_decider: list = []  # the function (Target -> (bits, how)) deciding the loop width


def register_width_decider(decide) -> None:
    """Install the function deciding the loop width of a base target (``widths.py`` does, at
    import: the decision needs compiled code, which needs a target — so the policy plugs in
    here rather than this module importing the compiler)."""
    _decider[:] = [decide]


def init_llvm() -> None:
    """Initialise LLVM's native target (idempotent; ``jit.init`` calls it)."""
    if not _llvm_ready:
        with _lock:
            if not _llvm_ready:
                llvm.initialize_native_target()
                llvm.initialize_native_asmprinter()
                llvm.initialize_native_asmparser()
                _llvm_ready.append(True)


_llvm_ready: list = []


def reset() -> None:
    """Forget the resolved target (tests that change ``DYNGRAD_TARGET`` or the width; the
    next compile resolves it again). Modules compiled before keep their code."""
    with _lock:
        _resolved.clear()
