"""vehicle.config: the stable vehicle id in the user's config dir, payment names."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.messages import PAYMENT_METHODS
from vehicle.config import (
    id_file,
    payment_wire_name,
    resolve_vehicle_id,
    stored_vehicle_id,
    validate_vehicle_id,
)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_id_is_generated_once_then_reused(xdg: Path) -> None:
    first = stored_vehicle_id()
    assert validate_vehicle_id(first) == first
    assert id_file() == xdg / "evcharge" / "vehicle_id"
    assert id_file().read_text().strip() == first
    assert stored_vehicle_id() == first
    assert resolve_vehicle_id(None) == first


def test_corrupt_id_file_is_replaced(xdg: Path) -> None:
    path = xdg / "evcharge" / "vehicle_id"
    path.parent.mkdir(parents=True)
    path.write_text("not a valid id!\n")
    new = stored_vehicle_id()
    assert new != "not a valid id!" and path.read_text().strip() == new


def test_unwritable_config_dir_is_a_config_error(xdg: Path) -> None:
    (xdg / "evcharge").write_text("a file where a folder should be")
    with pytest.raises(ConfigError):
        stored_vehicle_id()


def test_explicit_id_is_validated(xdg: Path) -> None:
    assert resolve_vehicle_id("CAR_1.x-2") == "CAR_1.x-2"
    for bad in ("", "has space", "x" * 65, "ç"):
        with pytest.raises(ConfigError):
            validate_vehicle_id(bad)
    assert not (xdg / "evcharge").exists()


def test_payment_choices_map_to_wire_strings() -> None:
    assert payment_wire_name("Pix") == "Pix"
    assert payment_wire_name("pix") == "Pix"
    assert payment_wire_name("debito") == "Débito em conta"
    assert payment_wire_name("CREDITO") == "Cartão de crédito"
    assert {payment_wire_name(w) for w in PAYMENT_METHODS} == set(PAYMENT_METHODS)
    with pytest.raises(ConfigError):
        payment_wire_name("Método de pagamento inválido")


def test_tokens_are_kept_per_broker_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stat

    from vehicle.config import store_token, stored_token, token_file

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert stored_token("127.0.0.1", 8081, "A1") is None
    path = store_token("127.0.0.1", 8081, "A1", "t" * 43)
    store_token("127.0.0.1", 8081, "B2", "u" * 43)
    store_token("broker.example", 9000, "A1", "v" * 43)
    assert path == token_file("127.0.0.1", 8081) == tmp_path / "evcharge/tokens/127.0.0.1_8081.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_token("127.0.0.1", 8081, "A1") == "t" * 43
    assert stored_token("127.0.0.1", 8081, "B2") == "u" * 43
    assert stored_token("broker.example", 9000, "A1") == "v" * 43
    assert stored_token("127.0.0.1", 8082, "A1") is None
    assert list(path.parent.glob(".*tmp")) == []


def test_unreadable_token_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.errors import ConfigError
    from vehicle.config import stored_token, token_file

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = token_file("h", 1)
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="cannot read the tokens"):
        stored_token("h", 1, "A1")
