"""The op table. Every primitive is a :class:`~dyngrad.ops.primitive.Primitive` record in
``REGISTRY``; the modules here define them and the composites built from them."""

from . import creation, elementwise, indexing, linalg, losses, movement, random, reduce  # noqa: F401
from .primitive import REGISTRY, AbstractValue, Primitive

__all__ = ["REGISTRY", "Primitive", "AbstractValue"]
