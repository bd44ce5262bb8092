"""The op table. Every primitive is a :class:`~dyngrad.ops.primitive.Primitive` record in
``REGISTRY``; the modules here define them and the composites built from them."""

from . import (  # noqa: F401
    attention,
    bitwise,
    composites,
    conv,
    creation,
    einsum,
    elementwise,
    indexing,
    linalg,
    losses,
    movement,
    pool,
    random,
    reduce,
    scan,
)
from .primitive import REGISTRY, AbstractValue, Primitive

__all__ = ["REGISTRY", "Primitive", "AbstractValue"]
