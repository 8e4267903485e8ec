"""The interactive vehicle menu (prompt_toolkit): arrow keys, Enter to pick.

Pushes from the broker (``sua_vez``, ``custo_final``...) are printed above the
prompt while the menu runs (``patch_stdout``). Invalid input is re-asked; a
refused request or a lost connection is reported and the menu goes on (the
client reconnects by itself).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.patch_stdout import patch_stdout
from rich.console import Console, RenderableType

from common.errors import ConfigError, ProtocolError, RequestRefused, TransportError
from common.geo import DEMO_CENTER
from vehicle import render
from vehicle.client import Push, VehicleClient
from vehicle.config import PAYMENT_CHOICES
from vehicle.settings import Settings

T = TypeVar("T")

ACTIONS: tuple[str, ...] = (
    "Battery notification (nearby points)",
    "List points",
    "Reserve",
    "Cancel reservation",
    "Arrival (start charging)",
    "Stop charging",
    "Costs",
    "Status",
    "Quit",
)
DEFAULT_POSITION = DEMO_CENTER  # where `make run`'s fleet is


async def choose(title: str, options: Sequence[str]) -> int | None:
    """Pick one option with the arrow keys (or its number); None on Ctrl-C / Escape."""
    state = {"i": 0}
    kb = KeyBindings()

    @kb.add("up")
    @kb.add("k")
    def _up(event: KeyPressEvent) -> None:
        state["i"] = (state["i"] - 1) % len(options)

    @kb.add("down")
    @kb.add("j")
    def _down(event: KeyPressEvent) -> None:
        state["i"] = (state["i"] + 1) % len(options)

    @kb.add("enter")
    def _pick(event: KeyPressEvent) -> None:
        event.app.exit(result=state["i"])

    @kb.add("c-c")
    @kb.add("escape")
    def _abort(event: KeyPressEvent) -> None:
        event.app.exit(result=None)

    for n in range(1, min(len(options), 9) + 1):

        @kb.add(str(n))
        def _number(event: KeyPressEvent, n: int = n) -> None:
            event.app.exit(result=n - 1)

    def lines() -> StyleAndTextTuples:
        out: StyleAndTextTuples = [("bold", f"{title}  (arrows + Enter)\n")]
        for i, text in enumerate(options):
            mark = ">" if i == state["i"] else " "
            out.append(("reverse" if i == state["i"] else "", f"{mark} {i + 1}. {text}\n"))
        return out

    app: Application[int | None] = Application(
        layout=Layout(Window(FormattedTextControl(lines, focusable=True), height=len(options) + 1)),
        key_bindings=kb,
        full_screen=False,
        erase_when_done=True,
    )
    return await app.run_async()


class Menu:
    """The menu's state (last position, last points, reservation) and its actions."""

    def __init__(self, client: VehicleClient, out: Callable[[str], None] = print) -> None:
        self.client = client
        self.out = out
        self.session: PromptSession[str] = PromptSession()
        self.position = DEFAULT_POSITION
        self.battery = 30.0
        self.last_points: list[str] = []
        self.reserved: str | None = None

    def show(self, renderable: RenderableType | str) -> None:
        buf = io.StringIO()
        Console(file=buf, width=110, highlight=False, force_terminal=False).print(
            renderable, markup=False
        )
        self.out(buf.getvalue().rstrip("\n"))

    def on_push(self, push: Push) -> None:
        self.show(">> " + render.push_line(push.type, push.data))
        if push.type in ("reserva_expirada", "reserva_cancelada"):
            self.reserved = None

    async def ask(self, label: str, parse: Callable[[str], T], default: str = "") -> T:
        """Ask until ``parse`` accepts the answer (ValueError/ConfigError re-ask)."""
        while True:
            text = await self.session.prompt_async(f"{label}: ", default=default)
            try:
                return parse(text.strip())
            except (ValueError, ConfigError) as exc:
                self.out(f"invalid: {exc}; try again")

    async def ask_position(self) -> tuple[float, float]:
        lat, lon = self.position
        self.position = await self.ask("Position LAT,LON", _parse_position, f"{lat},{lon}")
        return self.position

    async def ask_point(self) -> str:
        default = self.reserved or (self.last_points[0] if self.last_points else "")
        return await self.ask("Point id", _parse_point, default)

    async def run_action(self, index: int) -> None:
        c = self.client
        name = ACTIONS[index]
        if name.startswith("Battery"):
            self.battery = await self.ask("Battery %", _percent, f"{self.battery:g}")
            lat, lon = await self.ask_position()
            points = await c.bateria(self.battery, lat, lon)
            self._remember(points)
            self.show(render.points_table(points, "Nearby points"))
        elif name == "List points":
            lat, lon = await self.ask_position()
            points = await c.consulta(lat, lon)
            self._remember(points)
            self.show(render.points_table(points))
        elif name == "Reserve":
            point = await self.ask_point()
            eta = await self.ask("Minutes until arrival", _minutes, "0")
            data = await c.reserva(point, eta)
            self.reserved = point
            self.show(render.reservation_line(data))
        elif name.startswith("Cancel"):
            data = await c.cancelar(await self.ask_point())
            self.reserved = None
            self.show(render.response_line(data))
        elif name.startswith("Arrival"):
            point = await self.ask_point()
            battery = await self.ask("Battery %", _percent, f"{self.battery:g}")
            target = await self.ask("Target %", _target_above(battery), "80")
            methods = list(PAYMENT_CHOICES.values())
            pick = await choose("Payment method", methods)
            if pick is None:
                return
            data = await c.chegada(point, battery, target, methods[pick])
            self.reserved = None
            self.show(render.response_line(data))
        elif name.startswith("Stop"):
            self.show(render.response_line(await c.parar(await self.ask_point())))
        elif name == "Costs":
            self.show(render.statement_table(await c.custos()))
        elif name == "Status":
            for line in render.status_lines(await c.status()):
                self.show(line)

    def _remember(self, points: list[dict[str, Any]]) -> None:
        self.last_points = [str(p.get("id")) for p in points if p.get("id") is not None]

    async def loop(self) -> None:
        quit_index = ACTIONS.index("Quit")
        while True:
            index = await choose(f"Vehicle {self.client.vehicle_id}", ACTIONS)
            if index is None or index == quit_index:
                self.out("bye")
                return
            try:
                await self.run_action(index)
            except RequestRefused as exc:
                self.out(f"refused: {exc.code}: {exc.message}")
            except ProtocolError as exc:
                where = f" (field {exc.field})" if exc.field else ""
                self.out(f"error: {exc.code}: {exc.message}{where}")
            except TransportError as exc:
                self.out(f"broker: {exc.message}; reconnecting in the background")
            except EOFError:
                self.out("bye")
                return
            except KeyboardInterrupt:
                continue
            except Exception as exc:  # a reply we could not make sense of: report, go on
                self.out(f"error: unexpected {type(exc).__name__}: {exc}")


async def run_menu(settings: Settings) -> None:
    """Connect (binding the vehicle id, so pushes arrive) and run the menu until Quit."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError("the interactive menu needs a terminal; give a command (see --help)")
    async with settings.client(reconnect=True) as client:
        await client.connect(bind=True)
        with patch_stdout(raw=True):
            menu = Menu(client)
            client.subscribe(menu.on_push)
            menu.out(f"Connected to {settings.broker}:{settings.port} as {client.vehicle_id}")
            await menu.loop()


def _parse_position(text: str) -> tuple[float, float]:
    from common.geo import parse_center

    return parse_center(text)


def _parse_point(text: str) -> str:
    if not text or len(text) > 64:
        raise ValueError("a point id has 1-64 characters")
    return text


def _percent(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise ValueError("must be between 0 and 100")
    return value


def _minutes(text: str) -> float:
    value = float(text or "0")
    if not 0.0 <= value <= 240.0:
        raise ValueError("must be between 0 and 240 minutes")
    return value


def _target_above(battery: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _percent(text)
        if value <= battery:
            raise ValueError(f"must be above the battery level ({battery:g}%)")
        return value

    return parse
