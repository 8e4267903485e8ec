"""Persisted records as msgspec structs: the struct is the record's schema.

A :class:`Record` is written to the store as ``msgspec.to_builtins`` of itself
(field names as persisted, ``Decimal`` as text) and read back with
``msgspec.convert`` (lenient: numbers written as text still read); a record
that does not fit raises ``msgspec.ValidationError`` (a ``ValueError``), which
:meth:`broker.core.core.Core.restore` turns into ``StoreError``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import msgspec


class Record(msgspec.Struct, eq=False):
    """A mutable core object that is persisted as it is (identity equality).

    ``NOT_PERSISTED`` names fields that live only in memory; ``OMITTED_WHEN_NONE``
    fields that are written only when set (records written before they existed
    stay byte-identical).
    """

    NOT_PERSISTED: ClassVar[frozenset[str]] = frozenset()
    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    def record(self) -> dict[str, Any]:
        """The persisted form; :meth:`from_record` reads it back."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        for name in self.NOT_PERSISTED:
            out.pop(name, None)
        for name in self.OMITTED_WHEN_NONE:
            if out.get(name, 0) is None:
                del out[name]
        return out

    @classmethod
    def from_record(cls, value: Any) -> Self:
        return msgspec.convert(value, cls, strict=False)
