"""Vehicle accounts: billed sessions and their total, in ``Decimal``."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from broker.core.sessions import CURRENCY, Session
from common.replies import Statement


@dataclass(slots=True)
class Account:
    """The billed sessions of one vehicle, oldest first."""

    vehicle_id: str
    total: Decimal = Decimal("0.00")
    sessions: list[Session] = field(default_factory=list)

    def add(self, session: Session) -> None:
        assert session.cost is not None
        self.sessions.append(session)
        self.total += session.cost

    def statement(self) -> Statement:
        """The ``extrato`` reply data."""
        return Statement(
            vehicle_id=self.vehicle_id,
            moeda=CURRENCY,
            total=float(self.total),
            sessoes=[s.statement_line() for s in self.sessions],
        )


class Accounts:
    """Every account, plus the set of billed session ids (billing is idempotent)."""

    __slots__ = ("_accounts", "billed")

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self.billed: set[str] = set()

    def record(self, session: Session) -> bool:
        """Add a billed session; False (and nothing changes) when it was billed before."""
        if session.id in self.billed:
            return False
        self.billed.add(session.id)
        acc = self._accounts.get(session.vehicle_id)
        if acc is None:
            acc = self._accounts[session.vehicle_id] = Account(session.vehicle_id)
        acc.add(session)
        return True

    def has(self, vehicle_id: str) -> bool:
        """Whether ``vehicle_id`` has a billed session."""
        return vehicle_id in self._accounts

    def statement(self, vehicle_id: str) -> Statement:
        acc = self._accounts.get(vehicle_id)
        return (acc or Account(vehicle_id)).statement()

    def all_statements(self) -> dict[str, Statement]:
        return {vid: acc.statement() for vid, acc in sorted(self._accounts.items())}
