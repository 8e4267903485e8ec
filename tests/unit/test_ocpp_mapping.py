"""The OCPP gateway's pure pieces: mapping rules, passwords, the chargers file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError
from station.ocpp import frames, mapping, mapping201
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
    burst = frames.Throttle(period_s=10.0, burst=2)
    assert [burst.allow("k", n) for n in (0.0, 1.0, 2.0, 3.0)] == [0, 0, None, None]
    assert burst.allow("k", 10.0) == 2


def test_201_meter_readings_units_multipliers_phases_and_soc() -> None:
    def sv(value: object, **kw: object) -> dict[str, object]:
        return {"value": value, **kw}

    mv = [
        {
            "sampled_value": [
                sv(1.5, unit_of_measure={"unit": "kWh"}),
                sv(9999, phase="L1"),  # per phase: not the meter
                sv(3, unit_of_measure={"unit": "Wh", "multiplier": 3}),
                sv(55.5, measurand="SoC"),
                sv("x"),
            ]
        }
    ]
    assert mapping201.meter_reading(mv) == (3000, 55.5)
    assert mapping201.meter_reading(None) == (None, None)


def test_201_statuses_reasons_and_calls() -> None:
    assert mapping.station_state(mapping201.status_as_16("Occupied"), None) == (
        "disponivel",
        False,
    )
    assert mapping.station_state(mapping201.status_as_16("Faulted"), None)[0] == "indisponivel"
    assert mapping.stop_reason(mapping201.stop_reason_as_16("GroundFault"), 0, 10) == "fault"
    assert mapping.stop_reason(mapping201.stop_reason_as_16("EVDisconnected"), 0, 10) == "stopped"
    assert mapping201.remote_stop(12).transaction_id == "12"
    assert mapping201.change_availability(2, False).evse == {"id": 2}
    ok = [{"attribute_status": "Accepted", "variable": {"name": "A"}}]
    bad = [{"attribute_status": "Rejected", "variable": {"name": "B"}}]

    class R:
        def __init__(self, rows: list[dict[str, object]]) -> None:
            self.set_variable_result = rows

    assert mapping201.configuration_refusals(R(ok)) == []
    assert mapping201.configuration_refusals(R(bad)) == ["B: Rejected"]
    assert mapping201.configuration_refusals(None) == ["no answer"]


def test_chargers_file_connectors_versions_and_profile_3() -> None:
    base = {"latitude": 0.0, "longitude": 0.0, "price_kwh": 1.0}
    pw = hash_password("x" * 16, 1000)
    specs = parse_chargers(
        {
            "charger": [
                {
                    **base,
                    "id": "MC",
                    "password_hash": pw,
                    "connectors": [1, {"connector": 2, "id": "P2"}],
                },
                {**base, "id": "T3", "security_profile": 3, "ocpp": "2.0.1"},
            ]
        }
    )
    assert [(s.id, s.charger, s.connector) for s in specs] == [
        ("MC-1", "MC", 1), ("P2", "MC", 2), ("T3", "T3", 1),
    ]  # fmt: skip
    assert specs[2].password_hash is None and specs[2].ocpp == "2.0.1"
    for bad, why in [
        ({"id": "A", "password_hash": pw, "connectors": []}, "connectors"),
        ({"id": "A", "password_hash": pw, "connectors": [1, 1]}, "twice"),
        ({"id": "A", "password_hash": pw, "ocpp": "3"}, "ocpp"),
        ({"id": "A"}, "password_hash"),
        ({"id": "A", "password_hash": pw, "security_profile": 4}, "security_profile"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_chargers({"charger": [{**base, **bad}]})
    clash = [
        {**base, "id": "A-1", "password_hash": pw},
        {**base, "id": "A", "password_hash": pw, "connectors": [1]},  # point A-1 again
    ]
    with pytest.raises(ConfigError, match="twice"):
        parse_chargers({"charger": clash})


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
