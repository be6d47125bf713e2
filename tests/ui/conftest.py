"""Fixtures of the browser checks: one quick demo (``scripts/demo.py --quick``: search_flow on the
MNIST CNN, Prefect's database, MLflow and Optuna stores in a temporary folder), the UIs on it
(``mixq ui``, real servers on 127.0.0.1), and one headless Debian Chromium driven by selenium.

Screenshots go to ``mixq-output/ui-screenshots/`` at the repository root (listed at the end of the
pytest run). Chromium and ChromeDriver come from Debian (``scripts/ensure_browser.sh``, run by
``make test``)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from queue import Empty, Queue
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOTS = os.path.join(ROOT, "mixq-output", "ui-screenshots")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1440,1500"]
_saved: list[str] = []


def _clean_env() -> dict:
    """The environment without any Prefect/MLflow server the rest of the session may point at."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def demo_results(tmp_path_factory):
    """``scripts/demo.py --quick`` run once, as a user runs it (a subprocess, Prefect's ephemeral
    API with its database kept in the folder)."""
    from core.ui_servers import UI_NAMES, free_port

    folder = tmp_path_factory.mktemp("ui") / "demo"
    ports = {n: free_port() for n in UI_NAMES}
    env = dict(_clean_env(), MIXQ_MLFLOW_UI=f"http://127.0.0.1:{ports['mlflow']}")
    t = time.perf_counter()
    print(f"\nui: scripts/demo.py --quick --folder {folder} ...", file=sys.__stderr__, flush=True)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--quick", "--folder",
                           str(folder)], env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    print(f"ui: demo done in {time.perf_counter() - t:.0f} s", file=sys.__stderr__, flush=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(folder / "demo-summary.json") as f:
        summary = json.load(f)
    return SimpleNamespace(folder=folder, ports=ports, stdout=proc.stdout, summary=summary)


@pytest.fixture(scope="session")
def uis(demo_results):
    """``mixq ui FOLDER`` (all four UIs) on the ports chosen before the demo; yields ``{name: url}``."""
    p = demo_results.ports
    argv = [sys.executable, "-m", "core", "ui", str(demo_results.folder), "--prefect-port", str(p["prefect"]),
            "--mlflow-port", str(p["mlflow"]), "--netron-port", str(p["netron"]), "--optuna-port", str(p["optuna"])]
    proc = subprocess.Popen(argv, cwd=ROOT, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1)
    lines: list[str] = []
    queue: Queue = Queue()
    threading.Thread(target=lambda: [queue.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 240
    try:
        while not any(line.startswith("Ctrl-C stops them") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "mixq ui did not start:\n" + "".join(lines)
            try:
                line = queue.get(timeout=1.0)
            except Empty:
                continue
            lines.append(line)
            print("ui:", line.rstrip(), file=sys.__stderr__, flush=True)
        urls = {}
        for line in lines:
            for name, title in (("prefect", "Prefect UI: "), ("mlflow", "MLflow UI: "), ("netron", "Netron: "),
                                ("optuna", "optuna-dashboard: ")):
                if line.startswith(title):
                    urls[name] = line[len(title):].strip()
        assert set(urls) == {"prefect", "mlflow", "netron", "optuna"}, "".join(lines)
        for name, port in p.items():
            assert urls[name].startswith(f"http://127.0.0.1:{port}/"), urls
        yield urls
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)           # mixq ui stops its servers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium (selenium + Debian's chromedriver), a fresh profile."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium/chromium-driver are missing: run scripts/ensure_browser.sh (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mixq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    os.makedirs(SHOTS, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------- page helpers

def body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:  # noqa: BLE001  (page in the middle of rendering)
        return ""


def wait_for_text(driver, *texts: str, timeout: float = 60, where=None) -> str:
    """Wait until every one of ``texts`` is in the page's visible text (or ``where()``'s); returns it.
    On timeout the page is saved as ``timeout-*.png`` and the missing texts are named."""
    deadline = time.monotonic() + timeout
    while True:
        text = where() if where else body_text(driver)
        missing = [t for t in texts if t not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            path = screenshot(driver, f"timeout-{int(time.time())}")
            raise AssertionError(f"{driver.current_url}: {missing} not on the page after {timeout:.0f} s "
                                 f"(screenshot {path}); page text:\n{text[:3000]}")
        time.sleep(0.5)


def click_text(driver, text: str, timeout: float = 30) -> None:
    """Click the innermost visible element whose whole text is ``text``."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        els = [e for e in driver.find_elements(By.XPATH, f"//*[normalize-space(.)='{text}']") if e.is_displayed()]
        if els:
            els[-1].click()
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{driver.current_url}: nothing to click reads {text!r}")
        time.sleep(0.5)


def screenshot(driver, name: str) -> str:
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, f"{name}.png")
    driver.save_screenshot(path)
    _saved.append(path)
    print(f"screenshot: {path}")
    return path


def pytest_terminal_summary(terminalreporter):
    if _saved:
        terminalreporter.write_sep("-", f"UI screenshots ({len(_saved)}) in {SHOTS}")
        for path in _saved:
            terminalreporter.write_line(path)
