"""The OCPP gateway's pure pieces: mapping rules, passwords, the chargers file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError
from station.ocpp import mapping
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


def test_the_connector_is_free_once_the_vehicle_left() -> None:
    from station.ocpp.mapping import connector_free

    assert [
        s for s in ("Preparing", "Charging", "Finishing", "SuspendedEV") if connector_free(s)
    ] == []
    assert all(connector_free(s) for s in ("Available", "Reserved", "Unavailable", "Faulted"))


def test_a_limit_becomes_a_tx_profile_in_watts_for_both_versions() -> None:
    from station.ocpp.profiles import (
        PowerLimit,
        limit_watts,
        refusal,
        set_profile_16,
        set_profile_201,
    )

    assert limit_watts(12.5) == 12_500 and limit_watts(16.6) == 16_600 and limit_watts(0.0) == 0
    limit = PowerLimit("ses-1", 42, 1, limit_watts(11.0))
    p16 = set_profile_16(limit)
    assert p16.connector_id == 1
    prof = p16.cs_charging_profiles
    assert prof["transaction_id"] == 42 and prof["charging_profile_purpose"] == "TxProfile"
    assert prof["charging_schedule"]["charging_rate_unit"] == "W"
    assert prof["charging_schedule"]["charging_schedule_period"] == [
        {"start_period": 0, "limit": 11_000.0}
    ]
    p201 = set_profile_201(limit, "tx-42")
    assert p201.evse_id == 1
    prof201 = p201.charging_profile
    assert prof201["transaction_id"] == "tx-42"
    assert prof201["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 11_000.0
    assert refusal("Accepted") is None
    assert refusal("NotSupported") == "limits_refused: SetChargingProfile answered NotSupported"
    assert refusal(None) is not None  # no answer: not taken


def test_the_power_drawn_is_read_from_meter_values() -> None:
    from station.ocpp.profiles import power_reading

    def mv(*samples: dict[str, str]) -> list[dict[str, object]]:
        return [{"timestamp": "2026-01-01T00:00:00Z", "sampled_value": list(samples)}]

    assert power_reading(mv({"value": "11000", "measurand": "Power.Active.Import"})) == 11.0
    assert (
        power_reading(mv({"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"})) == 7.4
    )
    assert power_reading(mv({"value": "100", "measurand": "Energy.Active.Import.Register"})) is None
    assert (
        power_reading(mv({"value": "3000", "measurand": "Power.Active.Import", "phase": "L1"}))
        is None
    )
    assert power_reading(mv({"value": "nan", "measurand": "Power.Active.Import"})) is None
    assert power_reading(mv({"value": "-5", "measurand": "Power.Active.Import"})) is None
    assert power_reading("junk") is None
