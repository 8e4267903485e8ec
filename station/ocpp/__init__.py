"""OCPP gateway (1.6J and 2.0.1): chargers that speak OCPP join the network as ordinary
stations.

See docs/ocpp.md for every mapping rule.

```
passwords.py      hashing and checking charger passwords (HTTP Basic auth, Security Profile 1)
chargers_file.py  the TOML chargers file: chargers, their connectors (points), versions
mapping.py        pure 1.6J rules: OCPP status -> our estado, stop reasons, meter values,
                  idTags, and the 1.6J calls the gateway makes
mapping201.py     pure 2.0.1 rules: the same, in 2.0.1's words (same names for the calls)
frames.py         pure checks of OCPP-J frames: CallError or close 1002; log throttling
point.py          OcppPoint: one connector as a hosted station (what station.host.Host drives)
routing.py        what both versions' connections share (frame checks, connectors)
v16.py, v201.py   the connections of 1.6J and 2.0.1 chargers: one-line handlers
state.py          the gateway's state file (boot id, open transactions, unacked completions)
gateway.py        the asyncio edge: WebSocket server, authentication, calls to chargers
walkin.py         locally started transactions become walk-in sessions (a vehicle connection)
logs.py           throttled warnings
simulator.py      a simulated 1.6J charger (the ocpp package's ChargePoint), tests and compose
simulator201.py   a simulated 2.0.1 charger (the ocpp package's v201 ChargePoint)
```
"""
