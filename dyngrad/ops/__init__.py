"""The op table. Every primitive is a :class:`~dyngrad.ops.primitive.Primitive` record in
``REGISTRY``; the modules here define them and the composites built from them."""

from . import (  # noqa: F401
    conv,
    creation,
    elementwise,
    indexing,
    linalg,
    losses,
    movement,
    pool,
    random,
    reduce,
)
from .primitive import REGISTRY, AbstractValue, Primitive

__all__ = ["REGISTRY", "Primitive", "AbstractValue"]
