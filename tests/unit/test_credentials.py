"""Credentials: patterns, the table, .cred files, signing, and the broker's view of them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import zmq.auth

from broker.auth import Keyring, Rejections
from broker.credentials import (
    CredentialTable,
    broker_keys,
    credentials_db_for,
    ensure,
    issue,
    keys_dir_for,
)
from broker.metrics import BrokerMetrics
from common.credentials import (
    CRED_FIELDS,
    check_pattern,
    load_credential,
    mac_hex,
    point_matches,
    sign_datagram,
    split_signed,
)
from common.errors import ConfigError


@pytest.mark.parametrize(
    ("pattern", "point", "ok"),
    [
        ("CP01", "CP01", True),
        ("CP01", "CP011", False),
        ("FSA-*", "FSA-0001", True),
        ("FSA-*", "FSA-", True),
        ("FSA-*", "FSB-0001", False),
        ("*", "anything", True),
    ],
)
def test_point_patterns(pattern: str, point: str, ok: bool) -> None:
    assert point_matches(pattern, point) is ok


@pytest.mark.parametrize("bad", ["", "A B", "A*B", "**", "x" * 70])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_pattern(bad)


def test_issue_writes_a_0600_cred_file_with_exactly_the_contract_fields(tmp_path: Path) -> None:
    keys = broker_keys(tmp_path)
    assert stat.S_IMODE((tmp_path / "broker.key").stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(str(tmp_path / "broker.key"))
    assert public.decode() == keys.public and secret is not None
    assert broker_keys(tmp_path) == keys  # made once, then read
    with CredentialTable(str(tmp_path / "b.db")) as table:
        path = issue(table, keys, "fleet-a", "station", "FSA-*", None, tmp_path / "out")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        body = json.loads(path.read_text())
        assert tuple(body) == CRED_FIELDS
        assert body["broker_public"] == keys.public and body["points"] == "FSA-*"
        cred = load_credential(path)
        assert cred.covers("FSA-7") and not cred.covers("FSB-7")
        (rec,) = table.records()
        assert rec.curve_public == cred.curve_public and rec.hmac_key == cred.hmac_key
        assert "curve_secret" not in json.dumps(rec.listing()) and cred.curve_secret not in str(
            rec.listing()
        )
        with pytest.raises(ConfigError, match="exists"):
            issue(table, keys, "fleet-a", "station", "FSA-*", None, tmp_path / "out")
        assert table.revoke("fleet-a") and not table.revoke("fleet-a")
        issue(table, keys, "fleet-a", "consumer", None, None, tmp_path / "out")  # name reused


@pytest.mark.parametrize(
    ("role", "points", "source", "needle"),
    [
        ("admin", None, None, "invalid role"),
        ("station", None, None, "needs --points"),
        ("consumer", "X*", None, "takes no --points"),
        ("legacy-station", "X1", None, "needs --source"),
        ("legacy-station", "X1", "not-an-ip", "invalid --source"),
        ("station", "X1", "10.0.0.1", "takes no --source"),
    ],
)
def test_requests_that_do_not_fit_the_role_are_refused(
    tmp_path: Path, role: str, points: str | None, source: str | None, needle: str
) -> None:
    with CredentialTable(str(tmp_path / "b.db")) as table, pytest.raises(ConfigError, match=needle):
        issue(table, broker_keys(tmp_path), "n1", role, points, source, tmp_path)
    assert not (tmp_path / "n1.cred").exists()


def test_ensure_keeps_a_live_credential_and_reissues_a_lost_one(tmp_path: Path) -> None:
    keys = broker_keys(tmp_path)
    with CredentialTable(str(tmp_path / "b.db")) as table:
        assert ensure(table, keys, "tail", "consumer", None, None, tmp_path)
        first = (tmp_path / "tail.cred").read_text()
        assert not ensure(table, keys, "tail", "consumer", None, None, tmp_path)
        assert (tmp_path / "tail.cred").read_text() == first
        (tmp_path / "tail.cred").unlink()
        assert ensure(table, keys, "tail", "consumer", None, None, tmp_path)
        assert ensure(table, keys, "tail", "operator", None, None, tmp_path)  # role changed
        assert [r.role for r in table.records()] == ["operator"]


def test_memory_databases_keep_credentials_in_the_keys_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--keys"):
        keys_dir_for(":memory:", None)
    assert keys_dir_for("var/b.db", None) == Path("var")
    assert credentials_db_for(":memory:", tmp_path) == str(tmp_path / "credentials.db")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"name": "x"}', "missing"),
    ],
)
def test_unusable_cred_files_get_a_clear_error(
    tmp_path: Path, content: str | None, needle: str
) -> None:
    path = tmp_path / "x.cred"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        load_credential(path)


def test_signed_datagrams_round_trip(tmp_path: Path) -> None:
    with CredentialTable(str(tmp_path / "b.db")) as table:
        path = issue(table, broker_keys(tmp_path), "cp01", "station", "CP01", None, tmp_path)
    cred = load_credential(path)
    body = b'{"id":"CP01","latitude":1,"longitude":2}'
    data = sign_datagram(cred, body)
    assert data.startswith(b"EVS1 cp01 ")
    name, mac, got = split_signed(data) or ("", "", b"")
    assert (name, got) == ("cp01", body) and mac == mac_hex(cred.hmac_key, body)
    assert split_signed(body) is None and split_signed(b"EVS1 only-a-name") is None


def test_the_keyring_follows_the_table_and_reports_what_ended(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    keys = broker_keys(tmp_path)
    with CredentialTable(db) as table:
        issue(table, keys, "st", "station", "CP*", None, tmp_path)
        issue(table, keys, "old", "legacy-station", "OLD1", "10.0.0.9", tmp_path)
        ring = Keyring(CredentialTable(db))
        gone: list[set[str]] = []
        ring.on_change(gone.append)
        assert ring.station("st") is not None and ring.consumer("st") is None
        assert ring.legacy_covers("OLD1", "10.0.0.9") and not ring.legacy_covers("OLD1", "10.0.0.8")
        assert not ring.refresh()  # nothing changed
        table.revoke("st")
        assert ring.refresh() and gone == [{"st"}]
        assert ring.station("st") is None
        ring.table.close()


def test_rejection_logs_are_limited_to_one_a_second_per_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = BrokerMetrics()
    reject = Rejections(metrics.rejected, every_s=3600)
    with caplog.at_level("WARNING"):
        for _ in range(50):
            reject("status", "bad_mac", "x")
        reject("status", "unsigned", "y")
    assert metrics.rejected.get("status", "bad_mac") == 50
    assert metrics.rejected.get("status", "unsigned") == 1
    assert len([r for r in caplog.records if "bad_mac" in r.getMessage()]) == 1
    assert len(caplog.records) == 2
