"""The dashboard as a person looks at it: Debian's chromium, driven by Playwright.

``natsmesh up`` runs the shop (a real process) under load through its gateway; a
second catalog instance runs in a process of its own. In the page: the four
services and the edges orders → pricing and orders → catalog with non-zero rates;
the instance count drops within 5 s of that process being killed; a fault that
makes pricing fail turns its edge red; the tap shows requests. Throughout, no
console errors and no request outside the dashboard's own origin. Each state is
saved as a screenshot under ``artifacts/dashboard/`` (with NATSMESH_UPDATE_DOCS=1
the topology also becomes ``docs/dashboard.png``, the README's picture).

A second test signs in: behind an auth file the page's fetches get 401, it asks
for a key (a wrong one is asked again) and sends it as a header on its event
streams; a service's recent errors, markup and control characters included,
show with their cause chain as text only.

The browser is the system's (``/usr/bin/chromium``, installed by ``.ci/run`` with
apt-get); Playwright downloads nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import Proc

CHROMIUM = Path(os.environ.get("NATSMESH_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "artifacts" / "dashboard"

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"no chromium at {CHROMIUM} (.ci/run installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

FAULT = """
[services.pricing.fault]
abort_code = 503
abort_percent = 100
"""


def _field(line: str, name: str) -> str:
    return line.split(f" {name} ", 1)[1].split()[0]


class _Load:
    """Orders through the gateway, from a thread, until stopped; failures are data."""

    def __init__(self, gateway: str) -> None:
        self._gateway = gateway
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        order = {"product_id": 1, "quantity": 1, "customer": "ann"}
        with httpx.Client(base_url=self._gateway, timeout=5) as client:
            while not self._stop.is_set():
                # The shop under a fault: the page shows it, the load goes on.
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/orders/place", json=order)
                self.sent += 1
                self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with Proc("up", "--nats-port", "0", "--port", "0", "--dashboard-port", "0", nats_url="") as up:
        line = up.wait_ready(60)
        nats_url = line.split(" nats ", 1)[1].split()[0]
        with Proc("serve", "examples.shop.catalog:Catalog", nats_url=nats_url) as extra:
            extra.wait_ready()
            load = _Load(_field(line, "gateway"))
            try:
                yield {
                    "dashboard": _field(line, "dashboard"),
                    "nats": nats_url,
                    "extra": extra,
                    "tmp": tmp_path,
                }
            finally:
                load.stop()


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _apply_fault(nats_url: str, tmp: Path) -> None:
    routes = tmp / "routes.toml"
    routes.write_text((ROOT / "examples" / "routes.toml").read_text() + FAULT)
    subprocess.run(
        [sys.executable, "-m", "natsmesh", "routes", "apply", str(routes), "--nats", nats_url],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_the_dashboard_shows_the_shop_live(shop: dict[str, Any]) -> None:
    origin = shop["dashboard"]
    errors: list[str] = []
    outside: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "request",
                lambda r: None if r.url.startswith((origin, "data:")) else outside.append(r.url),
            )
            page.goto(origin + "/#/topology")

            # The four services, and orders' two calls with non-zero rates.
            for name in ("gateway", "orders", "pricing", "catalog"):
                page.wait_for_selector(f'[data-node="{name}"]', timeout=20_000)
            for edge in ("orders->pricing", "orders->catalog"):
                page.wait_for_function(
                    f"""() => {{
                        const e = document.querySelector('[data-edge="{edge}"]');
                        return e && Number(e.dataset.rps) > 0;
                    }}""",
                    timeout=20_000,
                )
            topology = _shot(page, "1-topology")
            if os.environ.get("NATSMESH_UPDATE_DOCS"):
                shutil.copy(topology, ROOT / "docs" / "dashboard.png")

            # Two catalog instances; one process killed: one, within 5 s.
            page.goto(origin + "/#/services")
            page.wait_for_function(
                "() => document.querySelector('[data-testid=\"instances-catalog\"]')"
                "?.textContent === '2'",
                timeout=15_000,
            )
            _shot(page, "2-services")
            shop["extra"].signal(signal.SIGKILL)
            killed = time.monotonic()
            page.wait_for_function(
                "() => document.querySelector('[data-testid=\"instances-catalog\"]')"
                "?.textContent === '1'",
                timeout=5_000,
            )
            print(f"instance count changed {time.monotonic() - killed:.1f} s after the kill")
            _shot(page, "3-instance-killed")

            # The service page: instances, endpoints with schemas, route table.
            page.goto(origin + "/#/service/pricing")
            page.wait_for_selector("#service h2", timeout=10_000)
            page.wait_for_selector("text=Route table")
            _shot(page, "4-service-page")

            # The tap shows requests to orders.
            page.goto(origin + "/#/tap/orders")
            page.wait_for_selector("#tap-table tbody tr.sample", timeout=15_000)
            _shot(page, "5-tap")

            # pricing forced to fail: its edge turns red.
            _apply_fault(shop["nats"], shop["tmp"])
            page.goto(origin + "/#/topology")
            page.wait_for_selector(
                '[data-edge="orders->pricing"][data-failing="true"]', timeout=20_000
            )
            assert page.locator('[data-edge="orders->pricing"].failing').count() == 1
            _shot(page, "6-failing-edge")
        finally:
            browser.close()
    assert errors == []
    assert outside == []


OPS_KEY = "ops-key-0123456789"


def _auth_file(tmp: Path) -> Path:
    digest = hashlib.sha256(OPS_KEY.encode()).hexdigest()
    path = tmp / "auth.toml"
    path.write_text(
        f'[api_keys.ops]\nsha256 = "{digest}"\n\n[[rules]]\npaths = ["/**"]\nallow = ["key:ops"]\n'
    )
    return path


def _sign_in(page: Any, key: str) -> None:
    page.wait_for_selector("#login:not([hidden])", timeout=10_000)
    page.fill("#credential", key)
    page.click("#login button[type=submit]")


def test_sign_in_and_hostile_errors_render_as_text(nats_url: str, tmp_path: Path) -> None:
    """A 401 asks for a key, sent as a header on the event streams; a service's recent
    errors, markup and all, are text in the page (no element, no script, no dialog).
    """
    with (
        Proc("serve", "services:FAILING", nats_url=nats_url) as served,
        Proc(
            "dashboard", "--port", "0", "--auth", str(_auth_file(tmp_path)), nats_url=nats_url
        ) as board,
    ):
        served.wait_ready()
        origin = board.wait_ready().split()[2]
        problems: list[str] = []
        dialogs: list[str] = []
        sent: list[dict[str, str]] = []
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on(
                    "console",
                    # Chromium logs each refused fetch: the 401s that ask for a key, and
                    # the 404s of a service the dashboard has not discovered yet (the
                    # page shows "no service" and follows the beats until it has).
                    lambda m: (
                        problems.append(m.text)
                        if m.type == "error" and not re.search("status of 40[14]", m.text)
                        else None
                    ),
                )
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.on(
                    "request",
                    lambda r: (
                        sent.append({"url": r.url, **r.headers}) if "/api/" in r.url else None
                    ),
                )
                page.goto(origin + "/#/service/front")
                _sign_in(page, "wrong-key-000000")
                _sign_in(page, OPS_KEY)  # the wrong key was refused: asked again
                page.wait_for_selector("#live[data-state=live]", timeout=15_000)
                page.wait_for_selector("#service >> text=Recent errors", timeout=15_000)
                # The failure comes after the page has shown the service: the page follows.
                with Proc("call", "front.go", "{}", nats_url=nats_url) as call:
                    assert call.popen.wait(30) != 0  # it fails: that is the point
                page.wait_for_selector("#service ol.causes li", timeout=20_000)
                _shot(page, "7-recent-errors")
                section = page.locator("#service")
                text = section.inner_text()
                assert "<img src=x onerror=alert(1)><script>alert(2)</script>" in text
                assert "back.fail: 503 service: <img" in text
                assert "502 upstream: call to back.fail failed" in text
                assert section.locator("img, script, iframe, object").count() == 0
            finally:
                browser.close()
        assert problems == []
        assert dialogs == []
        events = [r for r in sent if r["url"].endswith("/api/v1/events")]
        keys = [r.get("x-api-key") for r in events]
        assert keys[0] is None  # no key yet: 401, and the page asks for one
        assert "wrong-key-000000" in keys
        assert keys[-1] == OPS_KEY  # a header, never in the URL
        assert not [r for r in sent if OPS_KEY in r["url"]]
