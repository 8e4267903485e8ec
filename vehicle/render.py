"""Human-readable output of the vehicle commands: rich tables and one-line summaries.

Every function takes reply data as the broker sent it (plain dicts and lists)
and returns a rich renderable or a string; nothing here talks to the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from rich.table import Table
from rich.text import Text

_STATE_STYLE = {
    "disponivel": "green",
    "reservado": "yellow",
    "carregando": "cyan",
    "indisponivel": "red",
    "offline": "dim red",
}


def _num(value: Any, fmt: str, default: str = "-") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    if isinstance(value, str) and value:
        return value
    return default


def money(value: Any, currency: str = "BRL") -> str:
    """``R$ 12.34`` for BRL amounts given as number or decimal string."""
    symbol = "R$" if currency == "BRL" else currency
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return f"{symbol} -"
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return f"{symbol} -"
    return f"{symbol} {amount}"


def points_table(points: Iterable[Mapping[str, Any]], title: str = "Charging points") -> Table:
    """Points with distance, state, queue, estimated wait, power and price."""
    table = Table(title=title, title_justify="left")
    table.add_column("point", style="bold")
    table.add_column("distance km", justify="right")
    table.add_column("state")
    table.add_column("queue", justify="right")
    table.add_column("wait min", justify="right")
    table.add_column("power kW", justify="right")
    table.add_column("price R$/kWh", justify="right")
    points = list(points)
    priced = any(isinstance(p.get("tarifa"), Mapping) for p in points)
    estimated = any(p.get("custo_estimado") is not None for p in points)
    if priced:
        table.add_column("tariff")
    if estimated:
        table.add_column("est. cost", justify="right")
    count = 0
    for p in points:
        count += 1
        extra = []
        if priced:
            extra.append(tariff_cell(p))
        if estimated:
            extra.append(money(p.get("custo_estimado")))
        state = str(p.get("estado") or ("disponivel" if p.get("available") else "?"))
        queue = f"{p.get('queue_size', '-')}/{p.get('queue_capacity', '-')}"
        table.add_row(
            str(p.get("id", "?")),
            _num(p.get("distance"), ".3f"),
            Text(state, style=_STATE_STYLE.get(state, "")),
            queue,
            _num(p.get("espera_estimada_min"), ".0f"),
            _num(p.get("potencia_kw"), ".1f"),
            _num(p.get("preco_kwh"), ".2f"),
            *extra,
        )
    if count == 0:
        table.caption = "no points found"
    return table


def reservation_line(data: Mapping[str, Any]) -> str:
    point = data.get("id_ponto_recarga", "?")
    parts = [f"Reserved {point}"]
    if data.get("posicao") is not None:
        parts.append(f"position {data['posicao']}")
    if data.get("reservation_id"):
        parts.append(f"reservation {data['reservation_id']}")
    if data.get("expira_em"):
        parts.append(f"expires {data['expira_em']}")
    return ", ".join(parts)


def response_line(data: Mapping[str, Any]) -> str:
    """``code: message`` of a typed response (cancelar, chegada, parar)."""
    line = f"{data.get('code', '?')}: {data.get('message', '')}".rstrip(": ")
    if data.get("session_id"):
        line += f" (session {data['session_id']})"
    return line


def bill_table(data: Mapping[str, Any]) -> Table:
    """The ``custo_final`` of one session."""
    table = Table(title="Charging bill", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    currency = str(data.get("moeda", "BRL"))
    rows = [
        ("session", str(data.get("session_id", "-"))),
        ("point", str(data.get("id_ponto_recarga", "-"))),
        ("energy", f"{_num(data.get('energia_kwh'), '.3f')} kWh"),
        (
            "battery",
            f"{_num(data.get('nivel_inicial'), '.0f')}% -> {_num(data.get('nivel_final'), '.0f')}%",
        ),
        ("duration", f"{_num(data.get('duracao_s'), '.0f')} s"),
        ("payment", str(data.get("payment_method", "-"))),
        ("cost", money(data.get("cost"), currency)),
    ]
    cdr = data.get("cdr")
    if isinstance(cdr, Mapping):
        rows.insert(-1, ("tariff", str(cdr.get("tariff_id", "-"))))
        rows.insert(-1, ("breakdown", breakdown(cdr, currency)))
        if cdr.get("total_parking_time"):
            minutes = float(cdr["total_parking_time"]) * 60
            rows.insert(-1, ("parking", f"{minutes:.1f} min"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def breakdown(cdr: Mapping[str, Any], currency: str = "BRL") -> str:
    """``fixed R$ 1.10, energy R$ 72.00, parking R$ 0.05``: a CDR's costs incl. VAT."""
    parts = []
    for name, key in (
        ("fixed", "total_fixed_cost"),
        ("energy", "total_energy_cost"),
        ("time", "total_time_cost"),
        ("parking", "total_parking_cost"),
    ):
        price = cdr.get(key)
        if isinstance(price, Mapping) and price.get("incl_vat"):
            parts.append(f"{name} {money(price.get('incl_vat'), currency)}")
    total = cdr.get("total_cost")
    if isinstance(total, Mapping) and total.get("excl_vat") != total.get("incl_vat"):
        parts.append(f"excl. VAT {money(total.get('excl_vat'), currency)}")
    return ", ".join(parts) or "-"


def tariff_cell(p: Mapping[str, Any]) -> str:
    """A point's tariff in a few words: ``tou: R$ 2.20/kWh + R$ 0.10/min parked``."""
    t = p.get("tarifa")
    if not isinstance(t, Mapping):
        return "-"
    currency = str(t.get("currency", "BRL"))
    parts = []
    if t.get("flat"):
        parts.append(f"{money(t['flat'], currency)} start")
    if t.get("energy_kwh"):
        parts.append(f"{money(t['energy_kwh'], currency)}/kWh")
    if t.get("per_minute"):
        parts.append(f"{money(t['per_minute'], currency)}/min")
    if t.get("parking_per_minute"):
        parts.append(f"{money(t['parking_per_minute'], currency)}/min parked")
    text = f"{t.get('id', '?')}: " + (" + ".join(parts) or "free")
    if t.get("valid_until"):
        text += f" until {str(t['valid_until'])[11:16]}"
    return text


def statement_table(data: Mapping[str, Any]) -> Table:
    """The ``extrato``: every session with energy and cost, and the total."""
    currency = str(data.get("moeda", "BRL"))
    table = Table(
        title=f"Cost statement of {data.get('vehicle_id', '?')}",
        title_justify="left",
        show_footer=True,
    )
    table.add_column("session")
    table.add_column("point")
    table.add_column("start")
    table.add_column("end")
    table.add_column("energy kWh", justify="right", footer="total")
    table.add_column("cost", justify="right", footer=money(data.get("total", 0), currency))
    table.add_column("payment")
    sessions = data.get("sessoes") or []
    tariffed = any(isinstance(s.get("cdr"), Mapping) for s in sessions)
    if tariffed:
        table.add_column("tariff breakdown")
    for s in sessions:
        cells = [
            str(s.get("session_id", "-")),
            str(s.get("id_ponto_recarga", "-")),
            str(s.get("inicio", "-")),
            str(s.get("fim", "-")),
            _num(s.get("energia_kwh"), ".3f"),
            money(s.get("cost"), currency),
            str(s.get("payment_method", "-")),
        ]
        if tariffed:
            cdr = s.get("cdr")
            cells.append(
                f"{cdr.get('tariff_id', '?')}: {breakdown(cdr, currency)}"
                if isinstance(cdr, Mapping)
                else "preco_kwh"
            )
        table.add_row(*cells)
    if not sessions:
        table.caption = "no sessions yet"
    return table


def status_lines(data: Mapping[str, Any]) -> list[str]:
    """The vehicle's reservation and session, one line each."""
    lines = []
    reserva = data.get("reserva")
    sessao = data.get("sessao")
    if isinstance(reserva, Mapping):
        lines.append("reservation: " + _kv(reserva))
    else:
        lines.append("reservation: none")
    if isinstance(sessao, Mapping):
        lines.append("session: " + _kv(sessao))
    else:
        lines.append("session: none")
    return lines


def push_line(push_type: str, data: Mapping[str, Any]) -> str:
    """One line for a push, as shown while the menu or a command runs."""
    point = data.get("id_ponto_recarga", "?")
    if push_type == "sua_vez":
        return f"Your turn at {point} (hold until {data.get('expira_em', '?')})"
    if push_type == "reserva_expirada":
        return f"Reservation at {point} expired"
    if push_type == "reserva_cancelada":
        return f"Reservation at {point} cancelled ({data.get('motivo', '?')})"
    if push_type == "custo_final":
        return (
            f"Charging at {point} finished: {_num(data.get('energia_kwh'), '.3f')} kWh, "
            f"{money(data.get('cost'), str(data.get('moeda', 'BRL')))}"
        )
    if push_type == "encerramento":
        return f"Session {data.get('session_id', '?')} at {point} closed"
    return f"{push_type}: {_kv(data)}"


def _kv(data: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items())
