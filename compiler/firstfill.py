"""A first training step traced from a filled optimizer state.

Note [a first call from a filled state]
A training step's first call creates its optimizer's state (Adam's moments), tensors kept in
Python state, which no trace replays; so that call used to run eagerly, and the second call
traced (on W8 the eager first step cost ~0.2 s of a cold start). But a first step *is* "fill
the state, then step" (Note [a first step from a filled state] in compiler/variantcache.py):
``Optimizer._fill_state`` makes, from each parameter's shape and dtype alone, the state from
which ``step()`` computes exactly what a first step computes. So the first call fills the
state of every optimizer the function reaches (``arm``) and is traced as a later step would
be: the variant it makes serves the second call on.

Filling before the call instead of inside ``step()`` is the same only while nothing else sees
the filled state. The capture interprets the call and knows what it reads, so the fill is a
tripwire (:meth:`Fill.trip`), sprung *before* anything other than the optimizer's own
``step()``, ``zero_grad()`` or ``hyper()`` could see the state:

- the interpreted code reads one of the state's objects — the state dict, a parameter's
  entry, a state tensor — from anywhere (``Capture.read``, ``Capture.note_root``);
- the program or native code is about to see one of them otherwise, or native code is given
  the optimizer (``Capture.saw``, the records the disk cache's fill plan is made from too:
  a key looked up in one, ``**`` unpacking, what native code can reach from its arguments —
  a walk too long to finish counts — what an f-string or ``print`` formats,
  ``gc.get_referrers`` / ``gc.get_objects``, which find anything);
- user code starts running natively, out of the capture's sight (the watchdog's
  ``Capture.escaped``: a tensor hook in backward, a generator of the user's made before the
  call and resumed in it);
- an optimizer's method is interpreted because it was given user code (``step(closure)``):
  it would hold a filled entry while a read inside sprang the tripwire;
- a filled optimizer's ``step()`` is about to run on what the fill was not made for
  (:meth:`Fill.stepping`): its groups' settings or parameters changed since (``amsgrad``,
  ``dampening`` or ``centered`` switched, parameters reordered), a parameter with a
  gradient has no state (made trainable in the call: eager would make its state among the
  filled ones), or it already stepped in this call (a second step makes what the first left
  untouched after what it touched: eager's dict order).

Sprung, it removes the fill of every parameter whose state is still untouched — what the
eager call would see there is no state. A parameter already stepped keeps its state, which
is then the eager one. A step() after that creates the rest as eagerly, the tracer finds the
new tensors kept in Python state and refuses the trace (the next call traces, as before),
and the call's result is the eager result all along: the capture runs the program.

After the call (whatever it raised) :meth:`Fill.settle` does the same: a parameter the call
did not step (no gradient, an optimizer it did not step) has no state, as in eager. Touched
means a state value replaced or a state tensor's version counter moved.

Only the library's own optimizers with a fill are armed (a user's class may fill otherwise);
when one optimizer the function reaches cannot be filled (SGD with dampening, LBFGS), none
is, and the first call runs eagerly as before.
"""

from __future__ import annotations

from dyngrad.tensor import Tensor


def _fingerprint(v):
    """What a state value is now: its identity, and a tensor's version counter."""
    return id(v), (v._version if isinstance(v, Tensor) else None)


def _plain(v) -> bool:
    return type(v) in (int, float, bool, str, type(None)) or \
        type(v) is tuple and all(_plain(x) for x in v)


def _settings(opt) -> list:
    """What a fill was made from besides each parameter's shape and dtype: each group's
    settings but its learning rate (which a fill never depends on), compared by value where
    plain, else by identity."""
    return [(id(g), {k: (v if _plain(v) else id(v)) for k, v in g.items()
                     if k not in ("params", "lr")}) for g in opt.param_groups]


class Fill:
    """The state this call's first step was filled with, and the tripwire on it."""

    def __init__(self, entries: list) -> None:
        # entries: (optimizer, parameter, its state dict, whether it had an (empty) entry
        # before, {key: fingerprint at the fill})
        self.entries = entries
        self.ids = self._ids()
        opts = {id(e[0]): e[0] for e in entries}
        self.made_from = {k: (o._version, _settings(o)) for k, o in opts.items()}
        self.stepped: set = set()  # ids of the optimizers whose step() has run

    def _ids(self) -> set:
        """Ids of the state's objects, whose sight springs the tripwire (the optimizer's
        own springs it only where native code is given it: reading it to call its step()
        sees nothing of the state)."""
        out: set = set()
        for opt, _, st, _, _ in self.entries:
            out |= {id(opt.state), id(st)}
            out |= {id(v) for v in st.values() if isinstance(v, Tensor)}
        return out

    @property
    def optimizers(self) -> set:
        """Ids of the optimizers filled."""
        return {id(e[0]) for e in self.entries}

    def sees(self, ids, given=()) -> None:
        """Spring the tripwire if ``ids`` (objects about to be seen) holds one of the
        state's, or ``given`` (optimizers native code was given; None: any) one of ours."""
        if self.entries and (not self.ids.isdisjoint(ids) or None in given or
                             not self.optimizers.isdisjoint(given)):
            self.trip()

    def stepping(self, opt) -> None:
        """Before ``opt.step()`` runs (natively): spring the tripwire where the fill and a
        step would not make what this step makes of an empty state, in eager's order —
        the groups' settings or structure changed since the fill (``amsgrad``, ``dampening``
        or ``centered`` switched, parameters reordered, a group added), a parameter with a
        gradient has no state (made trainable in the call: eager makes its state among the
        filled ones), or a step of ``opt`` already ran in this call (what it left untouched
        a later step makes after what it touched)."""
        if not self.entries or id(opt) not in self.made_from:
            return
        again = id(opt) in self.stepped
        self.stepped.add(id(opt))
        if again or (opt._version, _settings(opt)) != self.made_from[id(opt)] or any(
                p._grad is not None and not opt.state.get(p)
                for g in opt.param_groups for p in g["params"]):
            self.trip()

    def settle(self) -> None:
        """Remove the fill of each parameter whose state is untouched (eager has none):
        after the call, and as the tripwire springs (``trip``: something other than step()
        may see the state), after which nothing is filled."""
        for opt, p, st, had, made in self.entries:
            if opt.state.get(p) is not st or set(st) != set(made) or \
                    any(_fingerprint(st[k]) != f for k, f in made.items()):
                continue  # (stepped: the state is the eager one from here)
            if had:
                st.clear()
            else:
                del opt.state[p]
        self.entries = []
        self.ids = set()

    trip = settle


def arm(optimizers) -> Fill | None:
    """Fill the state of each of ``optimizers`` (those the function reaches) that has
    parameters without state: the :class:`Fill`, or None — nothing filled — when one of
    them cannot be filled."""
    from dyngrad.optim.optimizer import Optimizer
    entries: list = []
    try:
        for opt in optimizers:
            if type(opt).__module__.split(".")[:2] != ["dyngrad", "optim"] or \
                    not isinstance(opt, Optimizer) or type(opt)._fill_state is None or \
                    type(opt.state) is not dict:
                raise LookupError
            params = [p for g in opt.param_groups for p in g["params"]
                      if p.requires_grad and not opt.state.get(p)]
            had = {id(p) for p in params if p in opt.state}
            if not opt.prefill(params):
                raise LookupError
            for p in params:
                st = opt.state[p]
                entries.append((opt, p, st, id(p) in had,
                                {k: _fingerprint(v) for k, v in st.items()}))
    except LookupError:
        Fill(entries).settle()
        return None
    return Fill(entries) if entries else None
