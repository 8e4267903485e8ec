"""The web console's page in a real headless Chromium, against a real broker and stations.

The map shows one marker per point; a station that goes offline changes its
marker and its table row within 2 s of the bus event, without a reload; the
out-of-service toggle makes the broker refuse the next reservation; the page
logs no console errors, on a desktop and on a phone-sized screen. The test
keeps a screenshot (set ``EV_WEB_SCREENSHOT=docs/web-console.png`` to refresh
the one in the docs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.support.browser import chromium, console_errors
from tests.support.raw_clients import Vehicle, wait_for
from tests.support.web_stack import TOKEN, WebStack, web_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POINTS = {"BRW-1": (-12.27, -38.97), "BRW-2": (-12.29, -38.94), "BRW-3": (-12.25, -38.99),
          "BRW-4": (-12.31, -38.96)}  # fmt: skip
WAIT_S = 30.0
DOM_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    with web_stack(tmp_path_factory.mktemp("webui")) as s:
        for pid, (lat, lon) in POINTS.items():
            s.add_station(pid, lat, lon, "--speed", "1")
        s.wait_online(*POINTS)
        yield s


@pytest.fixture(scope="module")
def page(stack: WebStack) -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        driver.get(f"{stack.url}/?token={TOKEN}")
        wait_loaded(driver)
        yield driver


def js(driver: webdriver.Chrome, script: str) -> Any:
    return driver.execute_script(script)


def wait_loaded(driver: webdriver.Chrome) -> None:
    wait_for(
        lambda: js(driver, "return window.evConsole && window.evConsole.loads > 0"),
        WAIT_S,
        "the console page loaded",
        interval=0.1,
    )


# Read in one script: rows are redrawn while the page is live (no stale elements).
def row_text(driver: webdriver.Chrome, pid: str, cell: str = "") -> str:
    return str(
        js(
            driver,
            f"var e = document.querySelector('#points tr[data-point=\"{pid}\"] {cell}');"
            " return e ? e.textContent : '';",
        )
    )


def row_state(driver: webdriver.Chrome, pid: str) -> str:
    return row_text(driver, pid, "td.estado")


def marker_class(driver: webdriver.Chrome, pid: str) -> str:
    return str(
        js(
            driver,
            f"var e = document.querySelector('path.marker[data-point=\"{pid}\"]');"
            " return e ? e.getAttribute('class') : '';",
        )
    )


def test_the_token_url_opens_the_page_and_leaves_no_token_in_the_address(
    page: webdriver.Chrome, stack: WebStack
) -> None:
    assert page.current_url == f"{stack.url}/"
    assert page.title == "evcharge operator console"


def test_map_shows_one_marker_per_point(page: webdriver.Chrome, stack: WebStack) -> None:
    ids = {p["id"] for p in stack.get_json("/api/points")}
    wait_for(
        lambda: len(page.find_elements(By.CSS_SELECTOR, "path.marker")) == len(ids),
        WAIT_S,
        "one marker per point",
    )
    shown = {
        m.get_attribute("data-point") for m in page.find_elements(By.CSS_SELECTOR, "path.marker")
    }
    assert shown == ids
    rows = {
        r.get_attribute("data-point")
        for r in page.find_elements(By.CSS_SELECTOR, "#points tbody tr")
    }
    assert rows == ids
    assert all("st-disponivel" in marker_class(page, pid) for pid in POINTS)
    assert page.find_element(By.ID, "f-points").text == str(len(ids))


def test_live_changes_show_without_a_reload_and_a_screenshot_is_kept(
    page: webdriver.Chrome, stack: WebStack, tmp_path: Path
) -> None:
    loads = js(page, "return window.evConsole.loads")
    session = stack.charge("BRWCAR1", "BRW-1", battery=15, target=95)
    with contextlib.closing(Vehicle(stack.ports.vehicle, "BRWCAR2")) as v:
        assert (
            v.ask("reserva", id_ponto_recarga="BRW-1", tempo_estimado=20)["data"]["code"]
            == "reserved"
        )
    wait_for(lambda: row_state(page, "BRW-1") == "carregando", WAIT_S, "BRW-1 charging on the page")
    wait_for(
        lambda: page.find_elements(By.CSS_SELECTOR, f'#sessions tr[data-session="{session}"]'),
        WAIT_S,
        "the running session listed",
    )
    wait_for(
        lambda: "BRWCAR1" in (row := row_text(page, "BRW-1")) and "BRWCAR2" in row,
        WAIT_S,
        "the charging and the waiting vehicle in BRW-1's row",
    )
    assert "st-carregando" in marker_class(page, "BRW-1")
    assert js(page, "return window.evConsole.loads") == loads  # no reload
    shot = tmp_path / "web-console.png"
    assert page.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if target := os.environ.get("EV_WEB_SCREENSHOT"):
        shutil.copyfile(shot, target)


def test_station_offline_changes_marker_and_row_within_2s(
    page: webdriver.Chrome, stack: WebStack
) -> None:
    js(page, "window.__sameDocument = true;")
    stack.stations["BRW-3"].stop()
    wait_for(lambda: row_state(page, "BRW-3") == "offline", WAIT_S, "BRW-3 offline in the table")
    assert "st-offline" in marker_class(page, "BRW-3")
    assert js(page, "return window.__sameDocument === true")  # the page was not reloaded
    log = js(page, "return window.evConsole.log")
    change = [e for e in log if e["point"] == "BRW-3" and e["estado"] == "offline"]
    assert change, log[-10:]
    # from the broker publishing the event to the row and marker being updated
    assert change[0]["latency"] < DOM_WITHIN_S, change[0]
    assert stack.point("BRW-3")["estado"] == "offline"


def test_out_of_service_toggle_refuses_the_next_reservation(
    page: webdriver.Chrome, stack: WebStack
) -> None:
    reason = page.find_element(By.ID, "reason")
    reason.clear()
    reason.send_keys("cable damaged")
    page.find_element(By.CSS_SELECTOR, '#points tr[data-point="BRW-2"] input.oos').click()
    wait_for(
        lambda: stack.point("BRW-2")["fora_de_servico"], WAIT_S, "BRW-2 out of service in the API"
    )
    wait_for(lambda: row_state(page, "BRW-2") == "indisponivel", WAIT_S, "BRW-2 row unavailable")
    assert stack.point("BRW-2")["reason"] == "cable damaged"
    assert "oos" in marker_class(page, "BRW-2")
    assert (
        "cable damaged" in page.find_element(By.CSS_SELECTOR, '#points tr[data-point="BRW-2"]').text
    )
    with contextlib.closing(Vehicle(stack.ports.vehicle, "BRWCAR3")) as v:
        refused = v.ask("reserva", id_ponto_recarga="BRW-2")["data"]
        assert refused["status"] == "error" and refused["code"] == "point_unavailable", refused
        # and back in service: the same request is accepted
        page.find_element(By.CSS_SELECTOR, '#points tr[data-point="BRW-2"] input.oos').click()
        wait_for(
            lambda: not stack.point("BRW-2")["fora_de_servico"], WAIT_S, "BRW-2 back in service"
        )
        wait_for(lambda: row_state(page, "BRW-2") == "disponivel", WAIT_S, "BRW-2 row available")
        assert v.ask("reserva", id_ponto_recarga="BRW-2")["data"]["code"] == "reserved"


def test_a_site_bar_shows_allocated_power_against_the_limit(
    page: webdriver.Chrome, stack: WebStack
) -> None:
    from tests.e2e.test_energy_sites import history

    with history(stack.ports) as ask:
        reply = ask({"op": "set_site", "name": "lot", "limit_kw": 11, "points": ["BRW-4"]})
        assert reply.get("ok"), reply
    session = stack.charge("BRWCAR4", "BRW-4", battery=10, target=95)

    def site_text() -> str:
        return str(
            js(
                page,
                "var e = document.querySelector('#sites .site[data-site=\"lot\"]');"
                " return e ? e.textContent : '';",
            )
        )

    wait_for(lambda: "11 kW limit" in site_text(), WAIT_S, "the site's bar")
    wait_for(lambda: "11.0 kW allocated" in site_text(), WAIT_S, "the session's allocation")
    assert "BRW-4 11.0 kW" in site_text()
    bar = '#sites .site[data-site="lot"] .alloc'
    width = js(page, f"return document.querySelector('{bar}').style.width")
    assert width == "100%"
    wait_for(
        lambda: (
            "11.0"
            in page.find_element(By.CSS_SELECTOR, f'#sessions tr[data-session="{session}"]').text
        ),
        WAIT_S,
        "the session's allowed kW",
    )


def test_the_page_has_no_console_errors(page: webdriver.Chrome) -> None:
    assert console_errors(page) == []
    assert js(page, "return window.evConsole.errors") == []


def test_phone_sized_screen_shows_everything_in_one_column(stack: WebStack) -> None:
    with chromium(390, 844, phone=True) as phone:
        phone.get(f"{stack.url}/?token={TOKEN}")
        wait_loaded(phone)
        wide = js(phone, "return document.documentElement.scrollWidth")
        assert js(phone, "return window.innerWidth") == 390
        assert wide <= 391  # no sideways scrolling
        boxes = [
            phone.find_element(By.ID, i).rect for i in ("map-box", "points-box", "sessions-box")
        ]
        assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]  # stacked, map first
        assert all(b["width"] <= 390 for b in boxes) and boxes[0]["height"] > 200
        assert len(phone.find_elements(By.CSS_SELECTOR, "path.marker")) == len(
            stack.get_json("/api/points")
        )
        assert console_errors(phone) == []
