"""The OCPP gateway's pure pieces: mapping rules, passwords, the chargers file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError
from station.ocpp import frames, mapping
from station.ocpp.chargers_file import load_chargers, parse_chargers
from station.ocpp.passwords import hash_password, verify_password

PW = "a-charger-password-0001"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Available", ("disponivel", True)),
        ("Preparing", ("disponivel", False)),
        ("Charging", ("carregando", False)),
        ("SuspendedEV", ("carregando", False)),
        ("SuspendedEVSE", ("carregando", False)),
        ("Finishing", ("disponivel", False)),
        ("Reserved", ("disponivel", False)),
        ("Unavailable", ("indisponivel", False)),
        ("Faulted", ("indisponivel", False)),
    ],
)
def test_every_ocpp_status_maps_to_our_states(status: str, expected: tuple[str, bool]) -> None:
    assert mapping.station_state(status, None) == expected


def test_a_charger_wide_fault_wins_over_the_connector() -> None:
    assert mapping.station_state("Available", "Faulted") == ("indisponivel", False)
    assert mapping.station_state("Available", "Available") == ("disponivel", True)


def test_stop_reasons() -> None:
    assert mapping.stop_reason("Remote", 36_000, 36_000) == "target_reached"
    assert mapping.stop_reason("Remote", 1_000, 36_000) == "stopped"
    assert mapping.stop_reason("EVDisconnected", 1_000, 36_000) == "stopped"
    assert mapping.stop_reason(None, 1_000, None) == "stopped"
    for reason in ("PowerLoss", "EmergencyStop", "HardReset", "SoftReset", "Reboot"):
        assert mapping.stop_reason(reason, 99_000, 36_000) == "fault"


def test_meter_reading_units_measurands_and_phases() -> None:
    mv = [
        {"sampled_value": [{"value": "1000"}]},  # default measurand and unit: Wh
        {
            "sampled_value": [
                {"value": "2.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                {"value": "9999", "measurand": "Energy.Active.Import.Register", "phase": "L1"},
                {"value": "7", "measurand": "Current.Import", "unit": "A"},
                {"value": "55.5", "measurand": "SoC", "unit": "Percent"},
            ]
        },
    ]
    assert mapping.meter_reading(mv) == (2500, 55.5)
    assert mapping.meter_reading([{"sampled_value": [{"value": "nan"}]}]) == (None, None)
    assert mapping.meter_reading("garbage") == (None, None)


@given(st.recursive(st.none() | st.text() | st.integers() | st.floats(), st.lists))
def test_meter_reading_never_raises(value: object) -> None:
    wh, soc = mapping.meter_reading(value)
    assert wh is None or isinstance(wh, int)
    assert soc is None or 0.0 <= soc <= 100.0


def test_id_tags_fit_ocpp_and_levels_follow_the_meter() -> None:
    assert mapping.id_tag_for("CAR40312") == "CAR40312"
    long_id = "V" * 64
    tag = mapping.id_tag_for(long_id)
    assert len(tag) == 20 and tag == mapping.id_tag_for(long_id)
    assert mapping.vehicle_for_tag("RFID042") == "RFID042"
    assert mapping.vehicle_for_tag("bad tag") is None
    assert mapping.target_wh(20, 80, 60) == 36_000
    assert mapping.final_level(20, 36_000, 60) == 80.0
    assert mapping.final_level(20, 90_000, 60) == 100.0


def test_passwords_hash_and_verify() -> None:
    stored = hash_password(PW, iterations=100)
    assert stored.startswith("pbkdf2_sha256$100$")
    assert verify_password(PW, stored)
    assert not verify_password(PW + "x", stored)
    assert hash_password(PW, iterations=100) != stored  # salted
    with pytest.raises(ConfigError):
        hash_password("short")


def _entry(**kw: object) -> dict[str, object]:
    e: dict[str, object] = {
        "id": "OC01",
        "latitude": -12.0,
        "longitude": -38.0,
        "price_kwh": 2.0,
        "password_hash": hash_password(PW, iterations=10),
    }
    e.update(kw)
    return e


def test_chargers_file_defaults_and_values(tmp_path: Path) -> None:
    (spec,) = parse_chargers({"charger": [_entry()]})
    assert spec.connector == 1 and spec.power_kw == 22.0 and spec.price_kwh == 2.0
    f = tmp_path / "c.toml"
    f.write_text(
        f'[[charger]]\nid = "X1"\nlatitude = 1\nlongitude = 2\nprice_kwh = 0.5\n'
        f'connector = 2\npower_kw = 7.4\npassword_hash = "{hash_password(PW, 10)}"\n'
    )
    (spec,) = load_chargers(f)
    assert (spec.id, spec.connector, spec.power_kw) == ("X1", 2, 7.4)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "lists no charger"),
        ({"charger": [_entry(id="bad id")]}, "id must be"),
        ({"charger": [_entry(latitude=91)]}, "latitude"),
        ({"charger": [_entry(price_kwh="2")]}, "price_kwh must be a number"),
        ({"charger": [_entry(connector=0)]}, "connector"),
        ({"charger": [_entry(password_hash="plain")]}, "password_hash"),
        ({"charger": [_entry(), _entry()]}, "appears twice"),
    ],
)
def test_chargers_file_errors_name_the_charger_and_field(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_chargers(raw)


def test_chargers_file_unreadable_or_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_chargers(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[charger]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_chargers(bad)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("Accepted", None),
        ("Occupied", "point_busy"),
        ("Faulted", "point_unavailable"),
        ("Unavailable", "point_unavailable"),
        ("Rejected", "point_unavailable"),
        (None, "point_unavailable"),
    ],
)
def test_reserve_refusal_codes(status: str | None, code: str | None) -> None:
    error = mapping.reserve_refusal(status)
    assert (error.partition(":")[0] if error else None) == code


def test_configuration_at_boot_asks_for_periodic_energy_readings() -> None:
    assert mapping.configuration(10) == [
        ("MeterValueSampleInterval", "10"),
        ("MeterValuesSampledData", "Energy.Active.Import.Register"),
    ]


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        ('[2,"a","Heartbeat",{}]', None),
        ('[3,"a",{}]', None),
        ('[4,"a","GenericError","x",{}]', None),
        ('[2,"a","Heartbeat"]', ("a", "FormationViolation")),
        ('[2,"a",5,{}]', ("a", "FormationViolation")),
        ('[9,"a"]', ("a", "NotSupported")),
        ("nope", "close"),
        (b"[]", "close"),
        ("{}", "close"),
        ("[2]", "close"),
        ('[2,"' + "x" * 37 + '","Heartbeat",{}]', "close"),
        ('[3,"a"]', "close"),
        ('[4,"a","GenericError"]', "close"),
    ],
)
def test_frames_are_answered_or_closed(raw: str | bytes, answer: object) -> None:
    bad = frames.check(raw, "1.6")
    if answer is None:
        assert bad is None
    elif answer == "close":
        assert bad is not None and bad.unique_id is None
    else:
        assert bad is not None and (bad.unique_id, bad.code) == answer
        assert json.loads(bad.call_error())[:3] == [4, *answer]


def test_frames_speak_each_version() -> None:
    bad = frames.check('[2,"a","Heartbeat"]', "2.0.1")
    assert bad is not None and bad.code == "FormatViolation"
    assert frames.error_code("FormatViolation", "1.6") == "FormationViolation"
    assert frames.error_code("FormatViolation", "2.0.1") == "FormatViolation"


def test_throttle_allows_one_line_per_period_and_counts_the_rest() -> None:
    t = frames.Throttle(period_s=10.0)
    assert t.allow("k", 0.0) == 0
    assert t.allow("k", 1.0) is None and t.allow("k", 2.0) is None
    assert t.allow("other", 2.0) == 0
    assert t.allow("k", 10.0) == 2
