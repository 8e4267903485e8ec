"""ops/docker-compose.yml as docker-compose resolves it: services, image, ports, ids.

Fast checks with ``docker-compose config`` (no containers); the stack itself is
exercised in test_stack.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.compose.conftest import COMPOSE_FILE

pytestmark = pytest.mark.compose

SERVICES = [
    "credentials",
    "broker",
    "gateway",
    "billing",
    "station1",
    "station2",
    "station3",
    "fleet",
    "ocpp-gateway",
    "ocpp-chargers",
    "tail",
    "web",
]
TOOLS = ["vehicle", "monitor"]
OBSERVABILITY = ["prometheus"]
VOLUMES = {
    "ocpp-gateway": "ocpp-data",
    "broker": "broker-data",
    "billing": "billing-data",
    "vehicle": "vehicle-home",
    "prometheus": "prometheus-data",
    "broker-ssa": "broker-ssa-data",
    "driver-fsa": "driver-fsa-home",
    "driver-ssa": "driver-ssa-home",
}
# profile regions: services on the evcharge image, and the two servers
REGIONS = ["credentials-ssa", "broker-ssa", "fleet-ssa", "bridge-fsa", "bridge-ssa",
           "billing-regions", "driver-fsa", "driver-ssa"]  # fmt: skip
SERVERS = ["nats", "postgres"]


def compose(*args: str, **env: str) -> str:
    """``docker-compose -f ops/docker-compose.yml ARGS`` with only ``env`` among EV_* variables."""
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("docker-compose is needed in CI")
        pytest.skip("the docker-compose command is not installed")
    base = {k: v for k, v in os.environ.items() if not k.startswith("EV_")}
    proc = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def config(**env: str) -> str:
    return compose("config", **env)


def service_block(text: str, name: str) -> str:
    """The lines of service ``name`` in ``docker-compose config`` output."""
    lines = text.splitlines()
    start = lines.index(f"  {name}:") + 1
    end = start
    while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
        end += 1
    return "\n".join(lines[start:end])


def test_services_and_the_on_demand_tools() -> None:
    assert sorted(compose("config", "--services").split()) == sorted(
        SERVICES + TOOLS + OBSERVABILITY + REGIONS + SERVERS
    )
    text = config()
    for tool in TOOLS:
        block = service_block(text, tool)
        assert "profiles:\n    - tools" in block
        assert "stdin_open: true" in block and "tty: true" in block
    for service in SERVICES:
        assert "profiles:" not in service_block(text, service)
    for service in REGIONS + SERVERS:
        assert "profiles:\n    - regions" in service_block(text, service)
    assert "healthcheck:" in service_block(text, "broker")
    assert "condition: service_healthy" in service_block(text, "billing")
    assert "condition: service_completed_successfully" in service_block(text, "broker")


def test_every_service_uses_the_image_from_the_environment() -> None:
    text = config(EV_IMAGE="example/evcharge:abc")
    assert text.count("image: example/evcharge:abc") == len(SERVICES + TOOLS + REGIONS)
    assert "image: evcharge:latest" in config()
    servers = config(EV_NATS_IMAGE="n:1", EV_POSTGRES_IMAGE="p:1")
    assert "image: n:1" in servers and "image: p:1" in servers


def test_station_ids_are_distinct_and_the_broker_ports_are_configurable() -> None:
    text = config(EV_PUBLISH_ADDR="127.0.0.1", EV_PUBLISH_HTTP="18090", EV_PUBLISH_STATUS="0")
    ids = re.findall(r"EV_ID: (\S+)", text)
    assert sorted(ids) == ["CP01", "CP02", "CP03"]
    assert "127.0.0.1:18090:8090/tcp" in text
    assert "127.0.0.1:0:8082/udp" in text
    defaults = config()
    for port in ("8081/tcp", "8082/udp", "5555/tcp", "5556/tcp", "5557/tcp", "8090/tcp"):
        number = port.split("/")[0]
        assert f"0.0.0.0:{number}:{port}" in defaults


def test_configuration_is_by_environment_only() -> None:
    text = config()
    assert "env_file" not in text
    # state lives in named volumes, never in bind-mounted host folders
    mounts = re.findall(r"^\s+- (\S+?):(/\S*?):(?:rw|ro)$", text, re.MULTILINE)
    assert sorted(set(source for source, _ in mounts)) == [
        "billing-data", "broker-data", "broker-ssa-data", "credentials", "credentials-ssa",
        "driver-fsa-home", "driver-ssa-home", "ledger-data", "nats-data", "ocpp-data",
        "prometheus-data", "vehicle-home",
    ]  # fmt: skip


def test_every_station_and_consumer_has_its_own_credential() -> None:
    text = config(EV_FLEET_PREFIX="FSA")
    init = service_block(text, "credentials")
    for name, role in [
        ("station1", "station --points CP01"),
        ("fleet", 'station --points "FSA*"'),
        ("billing", "consumer"),
        ("tail", "consumer"),
        ("monitor", "consumer"),
        ("web", "operator"),
        ("ocpp-gateway", 'station --points "OC*"'),
        ("gateway", "gateway"),
    ]:
        assert f"ensure {name} --role {role}" in init
        block = service_block(text, name)
        assert f"EV_CREDENTIALS: /data/credentials/{name}.cred" in block
        assert "credentials:/data/credentials:ro" in block
    broker = service_block(text, "broker")
    assert "--insecure" not in text and "EV_INSECURE" not in text
    assert "EV_INTERNAL_HOST: 0.0.0.0" in broker  # consumers reach 5556/5557 over the network


def test_no_version_key_and_images_are_never_pulled() -> None:
    raw = COMPOSE_FILE.read_text()
    assert not re.search(r"^version:", raw, re.MULTILINE)
    text = config()
    for service in SERVICES + TOOLS + OBSERVABILITY + REGIONS + SERVERS:
        assert "pull_policy: never" in service_block(text, service), service
    assert "build:" in service_block(text, "broker")


def test_every_service_is_hardened_with_rotated_logs() -> None:
    text = config()
    for service in SERVERS:  # NATS and PostgreSQL images run as their own users
        block = service_block(text, service)
        assert "pull_policy: never" in block and "mem_limit:" in block, service
        assert "driver: json-file" in block and "max-size: 10m" in block, service
    for service in SERVICES + TOOLS + OBSERVABILITY + REGIONS:
        block = service_block(text, service)
        assert "cap_drop:\n    - ALL" in block, service
        assert "read_only: true" in block, service
        assert "mem_limit:" in block, service
        assert "driver: json-file" in block and "max-size: 10m" in block, service
        assert "max-file: '3'" in block, service
        assert "- /tmp" in block, service  # scratch space on a tmpfs
        volume = VOLUMES.get(service)
        if volume:
            assert f"- {volume}:" in block, service


def test_every_long_running_service_has_a_health_check() -> None:
    text = config()
    for service in SERVICES:
        block = service_block(text, service)
        assert "healthcheck:" in block and "/opt/evcharge/healthcheck.py" in block, service
        assert "disable: true" not in block, service
    assert "/-/ready" in service_block(text, "prometheus")


def test_prometheus_is_an_observability_profile_built_from_debian() -> None:
    block = service_block(config(), "prometheus")
    assert "profiles:\n    - observability" in block
    assert "BASE_IMAGE: debian:bookworm-slim" in block
    assert "- prometheus-data:/prometheus" in block
    dockerfile = (COMPOSE_FILE.parent / "prometheus" / "Dockerfile").read_text()
    assert "apt-get install -y --no-install-recommends prometheus" in dockerfile


def test_the_fleet_takes_its_ids_from_its_replica_number() -> None:
    block = service_block(config(), "fleet")
    assert "EV_FLEET_REPLICA: auto" in block
    assert "EV_FLEET_PREFIX: FS" in block


def test_the_ocpp_gateway_and_its_two_simulated_chargers() -> None:
    text = config(EV_PUBLISH_ADDR="127.0.0.1", EV_PUBLISH_OCPP="19000")
    gateway = service_block(text, "ocpp-gateway")
    assert "127.0.0.1:19000:9000/tcp" in gateway
    assert "EV_CHARGERS: /opt/evcharge/ocpp-chargers.toml" in gateway
    assert "EV_OCPP_STATE: /data/var/ocpp-state.json" in gateway
    chargers = service_block(text, "ocpp-chargers")
    assert "EV_OCPP_IDS: OC01 OC02" in chargers
    assert "EV_OCPP_URL: ws://ocpp-gateway:9000/ocpp" in chargers
