"""Persisted records as msgspec structs: the struct is the record's schema.

A :class:`Record` is written to the store as ``msgspec.to_builtins`` of itself
(field names as persisted, ``Decimal`` as text) and read back with
``msgspec.convert`` (lenient: numbers written as text still read); a record
that does not fit raises ``msgspec.ValidationError`` (a ``ValueError``), which
:meth:`broker.core.core.Core.restore` turns into ``StoreError``.
"""

from __future__ import annotations

from typing import Any, Self

import msgspec


class Record(msgspec.Struct, eq=False):
    """A mutable core object that is persisted as it is (identity equality)."""

    def record(self) -> dict[str, Any]:
        """The persisted form; :meth:`from_record` reads it back."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def from_record(cls, value: Any) -> Self:
        return msgspec.convert(value, cls, strict=False)
