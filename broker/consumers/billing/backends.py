"""Opening the billing ledger: SQLite by default, PostgreSQL for a ``postgresql://`` URL."""

from __future__ import annotations

from pathlib import Path

from broker.consumers.billing.ledger import Ledger, LedgerBase


def open_ledger(target: str | Path, *, create: bool = True) -> LedgerBase:
    """A ``postgresql://`` URL opens a PostgreSQL ledger; anything else is a SQLite file."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        from broker.consumers.billing.ledger_pg import PgLedger

        return PgLedger(text)
    return Ledger(text, create=create)
