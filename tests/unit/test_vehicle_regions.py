"""The directory of regions: parsing, validation and the choice of a vehicle's broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from vehicle.regions import choose, load_directory, parse_directory

DIRECTORY = """
[regions.fsa]
name = "Feira de Santana"
center = [-12.2664, -38.9663]
broker = "broker"

[regions.ssa]
name = "Salvador"
center = [-12.9714, -38.5014]
broker = "broker-ssa"
port = 9081
"""


def test_the_region_is_named_or_else_the_nearest() -> None:
    regions = parse_directory(DIRECTORY)
    assert [(r.key, r.broker, r.port) for r in regions] == [
        ("fsa", "broker", 8081),
        ("ssa", "broker-ssa", 9081),
    ]
    assert choose(regions, near=(-12.95, -38.45)).key == "ssa"
    assert choose(regions, near=(-12.30, -38.90)).key == "fsa"
    assert choose(regions, "fsa", near=(-12.95, -38.45)).key == "fsa"  # the name wins
    with pytest.raises(ConfigError, match="no region 'rec'"):
        choose(regions, "rec")
    with pytest.raises(ConfigError, match="--region"):
        choose(regions)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not = [toml", "not TOML"),
        ("x = 1", "no \\[regions"),
        ('[regions."a b"]\ncenter=[0,0]\nbroker="h"', "region key"),
        ('[regions.a]\ncenter=[0]\nbroker="h"', "center"),
        ('[regions.a]\ncenter=[91,0]\nbroker="h"', "center"),
        ("[regions.a]\ncenter=[0,0]", "broker"),
        ('[regions.a]\ncenter=[0,0]\nbroker="h"\nport=70000', "port"),
    ],
)
def test_bad_directories_are_clear_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_directory(text)


def test_load_directory_reads_the_compose_stacks_file(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "ops" / "regions.toml"
    assert {r.key for r in load_directory(shipped)} == {"fsa", "ssa"}
    with pytest.raises(ConfigError, match="cannot read"):
        load_directory(tmp_path / "none.toml")
