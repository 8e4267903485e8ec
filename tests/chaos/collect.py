"""What the checker needs, read from the stack after the faults stop.

``COLLECT_SCRIPT`` runs in the billing worker's container (it holds a consumer
credential of each region's broker and reaches NATS): for each region the
broker's whole event history, its snapshot and its accounts over the history
port (protocol section 5), and the region's seqs as stored in the JetStream
stream (read message by message, by the ``Nats-Msg-Id`` header). It prints one
JSON document. It uses only what the image installs (pyzmq, msgspec, nats-py).
"""

from __future__ import annotations

from typing import Final

REGIONS: Final = {
    # region -> (history endpoint, consumer credential inside the billing container)
    "fsa": ("tcp://broker:5557", "/data/credentials/billing-regions.cred"),
    "ssa": ("tcp://broker-ssa:5557", "/data/credentials-ssa/billing-regions.cred"),
}

COLLECT_SCRIPT: Final = """
import asyncio, json, sys, msgspec, zmq

REGIONS = json.loads(sys.argv[1])
STREAM = sys.argv[2]
NATS = sys.argv[3]

def ask(sock, request):
    sock.send(msgspec.msgpack.encode(request))
    return msgspec.msgpack.decode(sock.recv_multipart()[-1])

def region(endpoint, cred_file):
    cred = json.load(open(cred_file))
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 20000)
    s.setsockopt(zmq.CURVE_SERVERKEY, cred["broker_public"].encode())
    s.setsockopt(zmq.CURVE_PUBLICKEY, cred["curve_public"].encode())
    s.setsockopt(zmq.CURVE_SECRETKEY, cred["curve_secret"].encode())
    s.connect(endpoint)
    seq, events = 0, []
    while True:
        reply = ask(s, {"op": "since", "seq": seq, "limit": 1000})
        events += [{"seq": e["seq"], "ts": e.get("ts"), "topic": e["topic"], "data": e["data"]}
                   for e in reply["events"]]
        seq = reply["last_seq"] if not reply["events"] else reply["events"][-1]["seq"]
        if not reply["more"]:
            break
    snapshot = ask(s, {"op": "snapshot"})
    accounts = ask(s, {"op": "accounts"})["accounts"]
    s.close()
    return {"events": events, "snapshot": snapshot, "accounts": accounts}

async def stream():
    import nats
    nc = await nats.connect(NATS, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        seqs = {}
        for n in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(STREAM, n)
            except Exception:
                continue
            region, _, seq = (msg.headers or {}).get("Nats-Msg-Id", "").rpartition(":")
            if region and seq.isdigit():
                seqs.setdefault(region, []).append(int(seq))
        return seqs
    finally:
        await nc.close()

out = {"regions": {name: region(*where) for name, where in REGIONS.items()}}
out["streams"] = asyncio.run(stream())
print(json.dumps(out, default=str))
"""
