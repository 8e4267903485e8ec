"""One chaos run: the regions stack up, drivers and faults for N minutes, settle, check.

    python -m tests.chaos [--minutes 20] [--seed S] [--out DIR] [--keep]

The stack is the compose file's ``regions`` profile (two brokers, their
stations, NATS JetStream, PostgreSQL, a bridge per region, one billing worker)
under a project name of its own, with short rule windows so that turns, expiry
and grace periods happen within minutes. The workload (tests/chaos/workload.py)
runs in a container on the stack's network; the injector (faults.py) runs here.
After the faults stop, everything the injector broke is healed, the drivers wind
down, the stack settles (no session running, no reservation queued, both
streams caught up), and the checker (checker.py) reads what was collected.
The run prints its seed and figures, writes ``report.json`` and
``journal.jsonl`` to ``--out``, and exits 0 when no anomaly was found, 1 when
one was (each printed with the shortest history that shows it; every
service's log is then kept in ``--out``/logs), 2 when the stack could not be
brought up. ``--seed`` replays a run's faults and choices.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops import images
from tests.chaos import checker, faults
from tests.chaos.collect import COLLECT_SCRIPT, REGIONS
from tests.compose.conftest import Stack, stack_env

WORKLOAD = Path(__file__).with_name("workload.py")
STREAM = "EVCHARGE"
GATEWAYS = 3  # vehicle gateway replicas in front of Feira de Santana's core
ONE_SHOT = ("credentials", "credentials-ssa", "vehicle", "monitor")
BROKERS = (
    "--broker", "broker:5557", "--credentials", "/data/credentials/billing-regions.cred",
    "--broker", "broker-ssa:5557", "--credentials", "/data/credentials-ssa/billing-regions.cred",
)  # fmt: skip

# Short windows: turns held 20 s, queues of a silent point kept 20 s, stations that
# charge 600x faster than real time, a point offline after 3 s of silence.
CHAOS_ENV = {
    "COMPOSE_PROFILES": "regions",
    "EV_HOLD_MINUTES": "0.34",
    "EV_OFFLINE_AFTER": "3",
    "EV_OFFLINE_GRACE": "20",
    "EV_SPEED": "600",
    "EV_INTERVAL": "1",
    "EV_FLEET_COUNT": "3",
    "EV_SSA_FLEET_COUNT": "3",
    "EV_DRIVE_PAUSE": "3600",
}


class StackError(RuntimeError):
    """The stack could not be built or brought up."""


@dataclass
class Run:
    seed: int
    seconds: float
    out: Path
    drivers: int = 3
    began: float = field(default_factory=time.monotonic)
    journal: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, msg: str) -> None:
        took = time.monotonic() - self.began
        print(f"chaos [{took:6.1f} s]: {msg}", file=sys.stderr, flush=True)

    def record(self, line: dict[str, Any]) -> None:
        line.setdefault("t", round(time.time(), 4))
        line.setdefault("region", "")
        with self.lock:
            self.journal.append(line)


def bring_up(project: str, base: str) -> Stack:
    try:
        image = images.build(base, tag_latest=False)
        servers = images.build_servers(base)
    except images.ImageBuildError as exc:
        raise StackError(f"image build failed: {exc}") from exc
    extra = {**servers, **CHAOS_ENV, "EV_POSTGRES_PASSWORD": uuid.uuid4().hex}
    stack = Stack(project, stack_env(image, extra))
    try:
        stack.compose("up", "-d", "--scale", f"gateway={GATEWAYS}", timeout=300)
        for service in ("broker", "broker-ssa", "nats", "postgres", "web"):
            stack.wait_healthy(service, timeout=180)
        stack.start_probe()
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        stack.down()
        raise StackError(f"stack did not come up: {exc}") from exc
    return stack


def services(stack: Stack) -> dict[str, str]:
    """Every long-running container of the stack: its target name (the service, or
    ``service-N`` for the N-th replica of a scaled one) -> its container id."""
    label = '{{.Label "com.docker.compose.%s"}}'
    fmt = f"{{{{.ID}}}} {label % 'service'} {label % 'container-number'}"
    out = stack.docker(
        "ps", "--filter", f"label=com.docker.compose.project={stack.project}",
        "--filter", "label=com.docker.compose.oneoff=False", "--format", fmt,
    )  # fmt: skip
    targets = {}
    for line in out.splitlines():
        cid, service, number = [*line.split(), "", "", ""][:3]
        if service and service not in ONE_SHOT:
            targets[service if number in ("", "1") else f"{service}-{number}"] = cid
    return targets


def alias_of(target: str, containers: dict[str, str]) -> str:
    """The service name of a target (``gateway-2`` -> ``gateway``)."""
    service, _, number = target.rpartition("-")
    return service if number.isdigit() and service in containers else target


def container_states(stack: Stack, containers: dict[str, str]) -> dict[str, str]:
    fmt = "{{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}"
    out = {}
    for service, cid in containers.items():
        try:
            out[service] = stack.docker("inspect", "--format", fmt, cid).strip()
        except AssertionError:
            out[service] = "missing"
    return out


def start_workload(stack: Stack, run: Run) -> tuple[subprocess.Popen[str], threading.Thread]:
    token = stack.env.get("EV_WEB_TOKEN", "")
    argv = ["docker", "exec", "-i", stack.probe_name, "python3", "-",
            "--seed", str(run.seed), "--seconds", str(run.seconds), "--fsa", "gateway:8081",
            "--drivers", str(run.drivers), "--web", "web:8088", "--web-token", token]  # fmt: skip
    with WORKLOAD.open("rb") as script:
        proc = subprocess.Popen(
            argv, stdin=script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            try:
                line = json.loads(text)
            except ValueError:
                run.record({"kind": "log", "who": "workload", "data": text.rstrip()})
                continue
            if isinstance(line, dict):
                run.record(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, reader


class Reader:
    """A container of its own with the billing worker's volumes and credentials, from which
    the checker reads the stack (so a crashed billing worker does not blind it)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        out = stack.compose(
            "run", "-d", "--no-deps", "--entrypoint", "sleep", "billing-regions", "86400"
        ).stdout.strip()
        self.name = out.splitlines()[-1]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", self.name, *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip


def collect(reader: Reader) -> dict[str, Any]:
    proc = reader.run("python3", "-c", COLLECT_SCRIPT, json.dumps(REGIONS), STREAM,
                      "nats://nats:4222")  # fmt: skip
    if proc.returncode != 0:
        raise StackError(f"collect exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def settled(data: dict[str, Any]) -> bool:
    for name, region in data["regions"].items():
        snap = region["snapshot"]
        if snap.get("sessions") or snap.get("queues"):
            return False
        if len(data["streams"].get(name, [])) < int(snap.get("seq") or 0):
            return False
    return True


def settle(reader: Reader, run: Run, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = collect(reader)
        except (StackError, subprocess.TimeoutExpired, ValueError) as exc:
            run.say(f"collect failed ({exc}); again")
            data = {}
        if data and (settled(data) or time.monotonic() > deadline):
            return data
        if time.monotonic() > deadline:
            raise StackError("nothing could be collected from the stack")
        time.sleep(5)


def ledger_sessions(reader: Reader) -> list[str]:
    """Session ids of the ledger's rows (the reader has the worker's EV_LEDGER)."""
    proc = reader.run("ev-broker", "billing", "report", "--format", "json")
    if proc.returncode != 0:
        raise StackError(f"billing report exited {proc.returncode}: {proc.stderr.strip()}")
    accounts = json.loads(proc.stdout)["accounts"]
    return [s["session_id"] for a in accounts.values() for s in a.get("sessoes", [])]


def reconcile(reader: Reader, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while True:
        proc = reader.run("ev-broker", "billing", "reconcile", *BROKERS)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc.returncode
        time.sleep(3)


def wait_healthy(stack: Stack, containers: dict[str, str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = container_states(stack, containers)
        if all(s in ("running", "running/healthy") for s in states.values()):
            return
        time.sleep(2)


def execute(run: Run, stack: Stack) -> checker.Report:
    containers = services(stack)
    network = f"{stack.project}_evnet"
    plan = faults.plan(run.seed, run.seconds, list(containers))
    run.say(f"seed {run.seed}: {len(plan)} faults over {run.seconds:.0f} s on "
            f"{', '.join(sorted(containers))}")  # fmt: skip
    aliases = {t: alias_of(t, containers) for t in containers}
    injector = faults.Injector(containers, network, run.record, aliases=aliases)
    proc, reader = start_workload(stack, run)
    started = time.monotonic()
    try:
        injector.run(plan, started, started + run.seconds)
    finally:
        injector.heal()
    run.say("faults over; healing and winding down")
    wait_healthy(stack, containers)
    try:
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        run.say("the workload did not finish in time; stopped")
        proc.kill()
        proc.wait()
    reader.join(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    run.say("drivers done; waiting for the stack to settle")
    checker_box = Reader(stack)
    data = settle(checker_box, run)
    run.say("settled; checking")
    facts = checker.Facts(
        seed=run.seed,
        journal=sorted(run.journal, key=lambda line: float(line.get("t", 0))),
        regions={
            name: checker.RegionFacts(
                events=r["events"],
                snapshot=r["snapshot"],
                accounts=r["accounts"],
                stream_seqs=list(data["streams"].get(name, [])),
            )
            for name, r in data["regions"].items()
        },
        ledger_sessions=ledger_sessions(checker_box),
        reconcile_rc=reconcile(checker_box),
        containers=container_states(stack, containers),
        expected=sorted(containers),
    )
    report = checker.check(facts)
    write(run, report, facts)
    if not report.ok:
        keep_logs(stack, containers, run.out / "logs")
    return report


def keep_logs(stack: Stack, containers: dict[str, str], folder: Path) -> None:
    """Every service's log, for the anomalies' post-mortem (``<service>.log``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for service, cid in containers.items():
        proc = subprocess.run(["docker", "logs", "--timestamps", cid], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        (folder / f"{service}.log").write_text(proc.stdout + proc.stderr)


def write(run: Run, report: checker.Report, facts: checker.Facts) -> None:
    run.out.mkdir(parents=True, exist_ok=True)
    histories = [{**a.to_json(), "history": checker.history_of(a, facts)} for a in report.anomalies]
    doc = {"figures": report.figures, "anomalies": histories}
    (run.out / "report.json").write_text(json.dumps(doc, indent=2, default=str))
    with (run.out / "journal.jsonl").open("w") as f:
        for line in facts.journal:
            f.write(json.dumps(line, default=str) + "\n")
    print(json.dumps(report.figures, indent=2, default=str))
    for item in histories:
        print(f"\nANOMALY [{item['check']}] {item['detail']} (seed {run.seed})")
        for text in item["history"][-40:]:
            print(f"    {text}")


def main(minutes: float, seed: int | None, out: Path, keep: bool, drivers: int) -> int:
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 2**31)
    run = Run(seed=seed, seconds=minutes * 60, out=out, drivers=drivers)
    run.say(f"seed {seed} (replay with --seed {seed})")
    project = f"evchaos{uuid.uuid4().hex[:8]}"
    try:
        stack = bring_up(project, os.environ.get("EV_BASE_IMAGE", "auto"))
        run.say("stack up")
    except StackError as exc:
        run.say(str(exc))
        return 2
    try:
        report = execute(run, stack)
    except StackError as exc:
        run.say(str(exc))
        return 2
    finally:
        if keep:
            run.say(f"stack kept: docker-compose -p {project} ... down -v to remove it")
        else:
            stack.down()
    run.say(f"seed {seed}: {len(report.anomalies)} anomalies; report in {out}/report.json")
    return 0 if report.ok else 1
