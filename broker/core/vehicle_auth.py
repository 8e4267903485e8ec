"""Who may speak for a vehicle id on the TCP edge (security contract, "Vehicles").

Theory of operation
-------------------
Sans-IO: no sockets, no clock, no randomness inside. The edge keeps one
:class:`ConnAuth` per connection and asks :meth:`VehicleAuth.admit` about every
decoded request, passing ``now``; the answer (:class:`Verdict`) says which
vehicle the request acts for, whether the connection now receives that
vehicle's pushes, and either an error to answer with, a reply this module
makes itself (``registrar``/``autenticar``), or nothing (the core handles it).

Rules, in the order they are applied:

* A connection speaks for one vehicle: the first ``id_veiculo`` it names
  (``CAR<client port>`` when a request names none; ``ping`` never binds). A
  request naming another id gets ``forbidden``.
* A *registered* id (one with a token) is acted for only by a connection that
  proved it, by ``registrar`` or ``autenticar``. An unproven connection gets
  ``unauthenticated`` for everything but :data:`OPEN_TYPES`, and never gets
  that vehicle's pushes.
* An *unregistered* id belongs to the open connection that first used it;
  another connection naming it gets ``forbidden`` until the owner closes.
* ``required`` mode: every request outside :data:`OPEN_TYPES` needs a
  registered, authenticated id.
* ``autenticar``: a wrong token (or an unknown id) is ``forbidden`` and counts
  as a failure of the (address, id) pair and of the address; after
  :data:`MAX_FAILURES` failures of a pair, or :data:`MAX_ADDRESS_FAILURES` of
  an address, within :data:`FAILURE_WINDOW_S`, every ``autenticar`` for that
  pair (or from that address) gets ``rate_limited`` for :data:`BLOCK_S`. One
  attacker behind a NAT address thus cannot lock out the other drivers there.
* History (second round): an id's reservations, sessions and bills are read
  (``custos``, ``status``) only by the connection bound to it that holds that
  history: for an unregistered id, the connection that owned it when it had
  none (``history_holder``); a later connection naming it is *sealed* and gets
  ``forbidden`` for those reads and for ``registrar``. ``registrar`` for an id
  with history succeeds only on a connection bound to it now (its holder).
  ``CAR<port>`` ids (the original client's) cannot be registered. At most
  :data:`MAX_REGISTRATIONS` ``registrar`` a :data:`FAILURE_WINDOW_S` per address.
* The address is passed in (``ConnAuth.address``), so these limits hold for every
  edge or gateway that forwards requests to this one piece.

Tokens are 32 random bytes, base64url without padding (43 characters), shown
once; only their SHA-256 is kept (and persisted through the returned
:class:`~broker.core.effects.Persist`). The per-request cost for an admitted
connection is two dict lookups and a few comparisons.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from broker.core.effects import Persist
from common.errors import (
    AlreadyRegistered,
    Forbidden,
    ProtocolError,
    RateLimited,
    Unauthenticated,
)
from common.messages import WALK_IN_PREFIX, Autenticar, Registrar
from common.replies import Authenticated, Registered, RegistrationRefused, ReplyData

#: Requests an unproven connection may make for a registered id.
OPEN_TYPES: Final = frozenset({"bateria", "consulta", "ping", "registrar", "autenticar"})
AUTH_TYPES: Final = frozenset({"registrar", "autenticar"})
MAX_FAILURES: Final = 5  # wrong tokens per (address, id) a window
MAX_ADDRESS_FAILURES: Final = 50  # wrong tokens per address a window
MAX_REGISTRATIONS: Final = 10  # registrar per address a window
FAILURE_WINDOW_S: Final = 60.0
#: Requests that read an id's history.
HISTORY_READS: Final = frozenset({"custos", "status"})
#: The original client's ids (``CAR<its port>``): never registrable.
DEFAULT_ID_PATTERN: Final = re.compile(r"CAR[0-9]{1,5}")
#: The OCPP gateway's walk-in accounts (``idtag.<tag>``): never a vehicle's to register.
BLOCK_S: Final = 60.0
#: Addresses remembered by the rate limiter before stale ones are swept.
MAX_TRACKED_ADDRESSES: Final = 10_000
TOKEN_TABLE: Final = "vehicle"


class AuthMode(StrEnum):
    """``--vehicle-auth``: ``open`` keeps the original client working unchanged."""

    OPEN = "open"
    REQUIRED = "required"


def token_digest(token: str) -> bytes:
    """SHA-256 of a token's text (what the broker keeps)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(slots=True)
class ConnAuth:
    """What the gate knows about one connection."""

    conn: int
    address: str
    default_id: str  # CAR<client port>
    vehicle_id: str | None = None  # the id this connection speaks for
    proven: bool = False  # proved ``vehicle_id`` by registrar or autenticar
    owns: bool = False  # holds ``vehicle_id`` as an unregistered id
    sealed: bool = False  # owns it, but its history is an earlier connection's
    admitted: Verdict | None = None  # ``Verdict(vehicle_id)``, made once (the hot path)

    def speak_for(self, vehicle_id: str) -> None:
        if self.vehicle_id != vehicle_id or self.admitted is None:
            self.vehicle_id = vehicle_id
            self.admitted = Verdict(vehicle_id)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's answer to one request.

    ``error``: answer with it and do nothing else. ``reply``: answer ``(type, data)``
    (after committing ``persist`` when given). Neither: the core handles the request
    for ``vehicle_id``. ``bind``: the connection now receives ``vehicle_id``'s pushes.
    """

    vehicle_id: str
    bind: bool = False
    error: ProtocolError | None = None
    reply: tuple[str, ReplyData] | None = None
    persist: Persist | None = None


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class VehicleAuth:
    """Registered tokens, owners of unregistered ids, and the failure counts."""

    def __init__(
        self,
        mode: AuthMode,
        new_token: Callable[[], str],
        has_history: Callable[[str], bool] = lambda _vid: False,
        max_registrations: int = MAX_REGISTRATIONS,
    ) -> None:
        self.mode = mode
        self.max_registrations = max_registrations
        self._new_token = new_token
        self._has_history = has_history
        self._digests: dict[str, bytes] = {}
        self._owners: dict[str, int] = {}
        # unregistered id -> the connection whose history it is (kept after it closes)
        self._holders: dict[str, int] = {}
        self._failures: dict[str, _Failures] = {}
        self._registrations: dict[str, _Failures] = {}
        self.counters: dict[str, int] = {
            "registered": 0,
            "authenticated": 0,
            "forbidden": 0,
            "unauthenticated": 0,
            "rate_limited": 0,
        }

    # --- state ---------------------------------------------------------------------------

    def restore(self, records: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Load the registered tokens from the store's ``vehicle`` records."""
        for table, key, value in records:
            if table == TOKEN_TABLE and isinstance(value, dict):
                digest = value.get("sha256")
                if isinstance(digest, str) and len(digest) == 64:
                    self._digests[key] = bytes.fromhex(digest)

    @property
    def registered(self) -> int:
        return len(self._digests)

    def is_registered(self, vehicle_id: str) -> bool:
        return vehicle_id in self._digests

    def owner_of(self, vehicle_id: str) -> int | None:
        return self._owners.get(vehicle_id)

    def adopt(self, state: ConnAuth, vehicle_id: str, *, proven: bool, owns: bool) -> bool:
        """A connection a gateway held across a core restart speaks for ``vehicle_id`` again.

        ``proven`` is kept for a registered id; an unregistered id is owned again unless
        another connection took it meanwhile. True when the connection gets its pushes.
        """
        state.speak_for(vehicle_id)
        state.proven = proven and vehicle_id in self._digests
        state.owns = False
        if owns and vehicle_id not in self._digests:
            owner = self._owners.get(vehicle_id)
            if owner is None or owner == state.conn:
                self._owners[vehicle_id] = state.conn
                state.owns = True
        return state.proven or state.owns

    def closed(self, state: ConnAuth) -> None:
        """The connection ended: an unregistered id it held is free again."""
        vid = state.vehicle_id
        if state.owns and vid is not None and self._owners.get(vid) == state.conn:
            del self._owners[vid]
            if self._holders.get(vid) == state.conn and not self._has_history(vid):
                del self._holders[vid]  # nothing to keep for it
        state.owns = False

    # --- the gate ------------------------------------------------------------------------

    def admit(self, state: ConnAuth, rtype: str, data: Any, now: float) -> Verdict:
        """Decide one request of type ``rtype`` with decoded ``data`` on ``state``."""
        named: str | None = getattr(data, "id_veiculo", None)
        bound = state.vehicle_id
        admitted = state.admitted
        if (
            admitted is not None
            and (named is None or named == bound)
            and rtype not in AUTH_TYPES
            and (
                state.proven
                or (
                    state.owns
                    and not state.sealed
                    and (self.mode is AuthMode.OPEN or rtype in OPEN_TYPES)
                )
            )
        ):
            return admitted  # the hot path: a few comparisons, no allocation
        if named is None:
            vid = bound if bound is not None else state.default_id
        elif bound is not None and named != bound:
            return self._refuse(
                vid=named,
                error=Forbidden(
                    f"this connection speaks for {bound}, not {named}", field="id_veiculo"
                ),
            )
        else:
            vid = named
        if bound is not None and state.proven:  # the common case: one lookup-free check
            if rtype in AUTH_TYPES:
                return self._auth_request(state, vid, rtype, data, now)
            return Verdict(vid)
        if named is None and bound is None and rtype == "ping":
            return Verdict(vid)  # ping never binds
        if vid in self._digests:
            if rtype in AUTH_TYPES:
                return self._auth_request(state, vid, rtype, data, now)
            if rtype not in OPEN_TYPES:
                return self._refuse(
                    vid=vid,
                    error=Unauthenticated(
                        f"vehicle {vid} is registered: send autenticar with its token first"
                    ),
                    count="unauthenticated",
                )
            state.speak_for(vid)  # speaks for it, unproven: no pushes
            return Verdict(vid)
        owner = self._owners.get(vid)
        if owner is not None and owner != state.conn:
            return self._refuse(
                vid=vid,
                error=Forbidden(
                    f"vehicle {vid} is in use by another connection", field="id_veiculo"
                ),
            )
        if rtype in AUTH_TYPES:
            return self._auth_request(state, vid, rtype, data, now)
        if self.mode is AuthMode.REQUIRED and rtype not in OPEN_TYPES:
            return self._refuse(
                vid=vid,
                error=Unauthenticated(
                    f"this broker requires registered vehicles: send registrar for {vid} first"
                ),
                count="unauthenticated",
            )
        if owner is None:
            return self._bind(state, vid, rtype)
        if state.sealed and rtype in HISTORY_READS:
            return self._sealed(vid)
        return Verdict(vid)

    def _bind(self, state: ConnAuth, vid: str, rtype: str) -> Verdict:
        """An unowned, unregistered id: this connection owns it from now on."""
        self._owners[vid] = state.conn
        state.speak_for(vid)
        state.owns = True
        holder = self._holders.get(vid)
        if holder is None and not self._has_history(vid):
            self._holders[vid] = state.conn
        state.sealed = self._holders.get(vid) != state.conn
        if state.sealed and rtype in HISTORY_READS:
            return self._sealed(vid)
        return Verdict(vid, bind=True)

    def _sealed(self, vid: str) -> Verdict:
        return self._refuse(
            vid=vid,
            error=Forbidden(
                f"the history of {vid} belongs to the connection that made it "
                "(register an id to keep its history across connections)",
                field="id_veiculo",
            ),
        )

    def _refuse(self, *, vid: str, error: ProtocolError, count: str = "forbidden") -> Verdict:
        self.counters[count] += 1
        return Verdict(vid, error=error)

    def _auth_request(
        self, state: ConnAuth, vid: str, rtype: str, data: Any, now: float
    ) -> Verdict:
        if rtype == "registrar" and isinstance(data, Registrar):
            return self._register(state, vid, now)
        if rtype == "autenticar" and isinstance(data, Autenticar):
            return self._authenticate(state, vid, data.token, now)
        return Verdict(vid, error=Forbidden(f"data does not match {rtype}"))

    def _register(self, state: ConnAuth, vid: str, now: float) -> Verdict:
        if not self._count_registration(state.address, now):
            return self._refuse(
                vid=vid,
                error=RateLimited(
                    f"too many registrar from {state.address}; at most {MAX_REGISTRATIONS} a minute"
                ),
                count="rate_limited",
            )
        if DEFAULT_ID_PATTERN.fullmatch(vid) or vid.startswith(WALK_IN_PREFIX):
            return self._refuse(
                vid=vid,
                error=Forbidden(
                    f"{vid} is an original client's connection id; choose an id of your own",
                    field="id_veiculo",
                ),
            )
        if vid not in self._digests and self._has_history(vid):
            holder = self._holders.get(vid)
            bound_now = (
                state.vehicle_id == vid
                and state.owns
                and not state.sealed
                and holder == state.conn
                and self._owners.get(vid) == state.conn
            )
            if not bound_now:
                return self._refuse(
                    vid=vid,
                    error=Forbidden(
                        f"vehicle {vid} has history: only the connection using it may register it",
                        field="id_veiculo",
                    ),
                )
        if vid in self._digests:
            return Verdict(
                vid,
                reply=(
                    "registro",
                    RegistrationRefused(
                        code=AlreadyRegistered.code,
                        message=f"vehicle {vid} is already registered; use autenticar",
                    ),
                ),
            )
        token = self._new_token()
        digest = token_digest(token)
        self._digests[vid] = digest
        self._holders.pop(vid, None)
        if self._owners.get(vid) == state.conn:
            del self._owners[vid]
        bind = not (state.vehicle_id == vid and (state.owns or state.proven))
        state.speak_for(vid)
        state.proven, state.owns, state.sealed = True, False, False
        self.counters["registered"] += 1
        return Verdict(
            vid,
            bind=bind,
            reply=(
                "registro",
                Registered(
                    message="Vehicle registered; keep the token, it is shown only once",
                    token=token,
                ),
            ),
            persist=Persist(TOKEN_TABLE, vid, {"sha256": digest.hex(), "registered_at": now}),
        )

    def _authenticate(self, state: ConnAuth, vid: str, token: str, now: float) -> Verdict:
        pair = f"{state.address}\x00{vid}"
        for key, what in ((state.address, "from"), (pair, f"for {vid} from")):
            record = self._failures.get(key)
            if record is not None and record.blocked_until > now:
                return self._refuse(
                    vid=vid,
                    error=RateLimited(
                        f"too many wrong tokens {what} {state.address}; try again in "
                        f"{record.blocked_until - now:.0f} s"
                    ),
                    count="rate_limited",
                )
        digest = self._digests.get(vid)
        if digest is None or not hmac.compare_digest(digest, token_digest(token)):
            self._fail(pair, now, MAX_FAILURES)
            self._fail(state.address, now, MAX_ADDRESS_FAILURES)
            return self._refuse(
                vid=vid, error=Forbidden(f"wrong token for vehicle {vid}", field="token")
            )
        bind = not (state.vehicle_id == vid and state.proven)
        state.speak_for(vid)
        state.proven = True
        state.sealed = False
        self.counters["authenticated"] += 1
        return Verdict(
            vid,
            bind=bind,
            reply=("autenticado", Authenticated(message="Authenticated")),
        )

    def _fail(self, key: str, now: float, limit: int) -> None:
        """Count a wrong token for ``key`` (an address, or an address and an id)."""
        record = self._failures.get(key)
        if record is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                _sweep(self._failures, now)
            record = self._failures[key] = _Failures()
        times = record.times
        times.append(now)
        while times and times[0] <= now - FAILURE_WINDOW_S:
            times.popleft()
        if len(times) >= limit:
            record.blocked_until = now + BLOCK_S
            times.clear()

    def _count_registration(self, address: str, now: float) -> bool:
        """Count one ``registrar`` from ``address``; False when past the limit."""
        record = self._registrations.get(address)
        if record is None:
            if len(self._registrations) >= MAX_TRACKED_ADDRESSES:
                _sweep(self._registrations, now)
            record = self._registrations[address] = _Failures()
        times = record.times
        while times and times[0] <= now - FAILURE_WINDOW_S:
            times.popleft()
        if len(times) >= self.max_registrations:
            return False
        times.append(now)
        return True


def _sweep(records: dict[str, _Failures], now: float) -> None:
    """Forget keys with no recent event and no block (bounded memory)."""
    stale = [
        a
        for a, r in records.items()
        if r.blocked_until <= now and (not r.times or r.times[-1] <= now - FAILURE_WINDOW_S)
    ]
    for key in stale:
        del records[key]
