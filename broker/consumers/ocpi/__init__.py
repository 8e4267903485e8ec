"""``ev-broker ocpi``: the CPO role of OCPI 2.2.1 over HTTP (see docs/ocpi.md).

Modules: :mod:`.models` (the OCPI objects as msgspec structs), :mod:`.mapping`
(pure: points to Locations/EVSEs/Connectors, sessions and CDRs), :mod:`.store`
(SQLite: partners, the outbox, roaming drivers, CDRs), :mod:`.wire` (pure:
tokens, envelopes, pagination), :mod:`.outbox` (delivery with back-off),
:mod:`.commands` (commands carried out as a roaming driver), :mod:`.app`
(the Litestar application) and :mod:`.server` (wiring).
"""
