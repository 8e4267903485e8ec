"""The gateway's state file: what must survive a gateway restart (kill -9 included).

A charger outlives the gateway: its transactions go on while the gateway restarts
and it reports them (MeterValues, StopTransaction) once it has reconnected. So the
gateway keeps, in one JSON file rewritten atomically on every change:

* ``boot_id``: the gateway's station boot id. It is kept across restarts so that the
  broker does not close running sessions as ``fault`` (a new boot means "the process
  that ran the session is gone"; here the charger that runs it is still there);
* ``next_id``: the next OCPP transaction / reservation id (integers);
* ``transactions``: open transactions by OCPP id (session, vehicle, levels, meter);
* ``completions``: ``session_complete`` messages the broker has not acknowledged yet.

Writes happen on transaction start and stop and on ``session_ack`` (not on meter
values), so their cost does not grow with the number of idle chargers. The gateway
writes off its event loop and groups the changes of many chargers into one write
(``Gateway.persist``); what waits for durability (the start's ``ack``, the answer
to ``StopTransaction``) waits for that write.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from common.errors import ConfigError

ID_BLOCK = 1000

log = logging.getLogger("station.ocpp")


class GatewayState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot_id = uuid.uuid4().hex
        # a fresh file starts transaction ids from the clock so that ids stay unique
        # even if the file is lost (kept below 2**31: OCPP transactionId is an int)
        self.next_id = int(time.time()) % 1_000_000_000 + 1
        self.reserved_until = self.next_id  # ids below this are recorded in the file
        # "<point id>/<transaction id>" -> record (2.0.1 ids are the chargers', not unique)
        self.transactions: dict[str, dict[str, Any]] = {}
        self.completions: dict[str, dict[str, Any]] = {}
        self.restored = False

    def load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"cannot read the state file {self.path}: {exc.strerror}") from None
        try:
            raw = json.loads(text)
            self.boot_id = str(raw["boot_id"])
            self.next_id = self.reserved_until = int(raw["next_id"])
            self.transactions = {str(k): dict(v) for k, v in raw["transactions"].items()}
            self.completions = {str(k): dict(v) for k, v in raw["completions"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"the state file {self.path} is damaged: {exc}") from None
        self.restored = True

    def new_id(self) -> int:
        """A fresh integer id. Ids are handed out from blocks whose end is written to the
        file before the first id of the block is used, so a restart never reuses one."""
        value = self.next_id
        if value >= 2**31 - 2:
            value = 1
        if value >= self.reserved_until or self.reserved_until - value > ID_BLOCK:
            self.reserved_until = value + ID_BLOCK
            self.write(self.snapshot())  # rare: once per ID_BLOCK ids
        self.next_id = value + 1
        return value

    def snapshot(self) -> str:
        """The file's content now (taken on the event loop, written elsewhere)."""
        data = {
            "boot_id": self.boot_id,
            "next_id": self.reserved_until,
            "transactions": self.transactions,
            "completions": self.completions,
        }
        return json.dumps(data, separators=(",", ":"))

    def write(self, text: str) -> None:
        """Write ``text`` durably (temporary file, fsync, rename)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", self.path, exc)

    def save(self) -> None:
        self.write(self.snapshot())
