"""What users look at, checked in headless Chromium after a quick real search (MNIST CNN): Netron
on the saved ``.sima.json``, the Prefect UI (flow run, task runs, artifacts), the MLflow UI
(parent and candidate runs, the compare view, the registry) and optuna-dashboard, all started by
``mixq ui`` on the folder ``scripts/demo.py --quick`` filled. Each test asserts on the page's text
and saves screenshots (paths at the end of the run)."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.ui.conftest import body_text, click_text, screenshot, wait_for_text

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _layers(demo_results) -> list[dict]:
    with open(demo_results.summary["sima"] + ".json") as f:
        return json.load(f)["config"]["layers"]


def _api(uis, path: str, body: dict | None = None):
    import httpx

    base = uis["prefect"].split("/runs")[0] + "/api"
    r = httpx.post(base + path, json=body or {}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_demo_prints_how_to_open_each_ui(demo_results):
    out = demo_results.stdout
    folder = str(demo_results.folder)
    assert f"mixq ui {folder}" in out
    for title in ("Prefect UI: http://127.0.0.1:4200", "MLflow UI: http://127.0.0.1:5000",
                  "Netron: http://127.0.0.1:8081", "optuna-dashboard: http://127.0.0.1:8082"):
        assert title in out, title
    assert "prefect server start" in out and f"{folder}/prefect/prefect.db" in out
    assert "mlflow server --backend-store-uri" in out and demo_results.summary["sima"] + ".json" in out
    assert "ephemeral API" not in out                    # no more "rerun against a started server"
    assert os.path.getsize(demo_results.folder / "prefect" / "prefect.db") > 0


def test_netron_renders_the_saved_model(uis, browser, demo_results):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    layers = _layers(demo_results)
    names = [layer["name"] for layer in layers if layer["class_name"] != "InputLayer"]
    int16 = [layer for layer in layers if layer["config"].get("input_int16")]
    assert int16, "the chosen model has no node with a 16-bit input"
    node = int16[0]

    browser.get(uis["netron"])
    deadline = time.monotonic() + 60
    while not browser.find_elements(By.CSS_SELECTOR, "g.node"):          # the graph, once the file is open
        consent = browser.find_elements(By.ID, "message-button")
        if consent and consent[0].is_displayed():                          # first visit: the cookie notice
            consent[0].click()
        assert time.monotonic() < deadline, f"Netron shows no graph: {body_text(browser)[:500]}"
        time.sleep(0.5)
    ids = {e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "g.node")}
    assert {f"node-name-{n}" for n in names} <= ids, ids                 # one graph node per mixq node
    graph = wait_for_text(browser, "Conv", "MaxPool", "Gemm")
    assert "input" in graph
    screenshot(browser, "netron-graph")

    ActionChains(browser).key_down(Keys.CONTROL).send_keys("f").key_up(Keys.CONTROL).perform()   # Find...
    listed = wait_for_text(browser, *names, where=lambda: browser.find_element(By.ID, "sidebar").text)
    assert "FIND" in listed.upper()
    screenshot(browser, "netron-node-list")
    browser.find_element(By.ID, "sidebar-closebutton").click()

    target = browser.find_element(By.ID, f"node-name-{node['name']}")
    target.find_element(By.CSS_SELECTOR, "*").click()
    wait_for_text(browser, "NODE PROPERTIES", node["name"], "ATTRIBUTES",
                  where=lambda: browser.find_element(By.ID, "sidebar").text)
    # the attribute names are <input> fields in Netron's sidebar: read name -> shown value pairs
    props = dict(browser.execute_script(
        "return [...document.querySelectorAll('#sidebar .sidebar-item')].map(i => {"
        "  const n = i.querySelector('.sidebar-item-name'); const inp = n && n.querySelector('input');"
        "  const v = i.querySelector('.sidebar-item-value-list');"
        "  return [inp ? inp.value : (n ? n.innerText : ''), v ? v.innerText.trim() : ''];});"))
    assert props.get("name") == node["name"] and props.get("type") == node["class_name"], props
    assert props.get("input_int16") == "true", props
    assert props.get("precision") == "int16", props
    stats = node["config"]["Layer Statistics"]
    assert props.get("Layer Statistics", "").startswith(f"metric: {stats['metric']}, error_value: "), props
    screenshot(browser, "netron-int16-node")


def test_prefect_ui_shows_the_search_run(uis, browser, demo_results):
    from mlflow.tracking import MlflowClient

    runs = _api(uis, "/flow_runs/filter")
    (run,) = [r for r in runs if r["state_type"] == "COMPLETED"]
    client = MlflowClient(tracking_uri=f"sqlite:///{demo_results.folder / 'mlflow.db'}")
    parent = client.get_run(demo_results.summary["mlflow"]["parent_run_id"])
    assert parent.data.tags["prefect_flow_run_id"] == run["id"]          # the run MLflow points at
    base = uis["prefect"].split("/runs")[0]

    browser.get(uis["prefect"])
    wait_for_text(browser, run["name"], "mixq-search")
    screenshot(browser, "prefect-runs")

    browser.get(f"{base}/runs/flow-run/{run['id']}")
    wait_for_text(browser, run["name"], "Completed", "mixq-search", "Task runs")
    click_text(browser, "Task Runs")
    tasks = wait_for_text(browser, "load-model", "calibrate", "options-search", "accuracy-feedback", "evaluate",
                          "analyze", "register-model")
    assert tasks.count("Completed") >= 7
    screenshot(browser, "prefect-task-runs")

    click_text(browser, "Artifacts")
    wait_for_text(browser, "mixq-search-mnist-cnn-summary", "mixq-search-mnist-cnn-progress",
                  "mixq-search-mnist-cnn-candidates", "search finished")
    screenshot(browser, "prefect-artifacts")

    arts = {a["key"]: a for a in _api(uis, "/artifacts/filter",
                                      {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})}
    s = demo_results.summary
    browser.get(f"{base}/artifacts/artifact/{arts['mixq-search-mnist-cnn-summary']['id']}")
    wait_for_text(browser, "Chosen configuration", *s["int16_nodes"], s["mlflow"]["run_id"], "champion", "Pareto front")
    img = None
    deadline = time.monotonic() + 30
    while img is None:
        img = browser.execute_script(
            "const i = [...document.querySelectorAll('img')].find(i => i.src.startsWith('data:image/png'));"
            "if (!i || !i.complete || !i.naturalWidth) return null; i.scrollIntoView();"
            "return [i.naturalWidth, i.getBoundingClientRect().width];")
        assert img or time.monotonic() < deadline, "the Pareto image does not render"
        time.sleep(0.3)
    assert img[0] >= 400 and img[1] >= 300, img                          # decoded and shown at a useful size
    screenshot(browser, "prefect-summary-artifact")

    browser.get(f"{base}/artifacts/artifact/{arts['mixq-search-mnist-cnn-candidates']['id']}")
    n = len(s["candidates"])
    table = wait_for_text(browser, f"{n} Items", "options", "accuracy feedback", "prefix 1", "int16_nodes")
    assert "mlflow_run_id" in table or "trial" in table
    screenshot(browser, "prefect-candidate-table")


def test_mlflow_ui_shows_candidates_and_champion(uis, browser, demo_results):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    s = demo_results.summary
    client = MlflowClient(tracking_uri=f"sqlite:///{demo_results.folder / 'mlflow.db'}")
    exp = s["mlflow"]["experiment_id"]
    parent = client.get_run(s["mlflow"]["parent_run_id"])
    children = client.search_runs([exp], filter_string="tags.mixq_kind = 'candidate'")
    assert len(children) == len(s["candidates"])
    base = uis["mlflow"].split("/#")[0]

    browser.get(f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning")
    wait_for_text(browser, parent.info.run_name, f"{len(children) + 1} matching runs")
    # the parent row folds its candidates: open it
    deadline = time.monotonic() + 30
    names = [c.info.run_name for c in children]
    while not all(n in body_text(browser) for n in names[:3]):
        for b in browser.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"):
            if b.is_displayed():
                b.click()
                break
        assert time.monotonic() < deadline, "the candidate runs do not show under the parent run"
        time.sleep(1)
    screenshot(browser, "mlflow-runs")

    # two candidates side by side: the chosen one and one with another INT16 node count
    chosen = client.get_run(s["mlflow"]["run_id"])
    n16 = chosen.data.metrics["int16_node_count"]
    other = next(c for c in children if c.data.metrics.get("int16_node_count") != n16)
    ids = json.dumps([chosen.info.run_id, other.info.run_id]).replace(" ", "")
    browser.get(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([exp])}")
    # both runs' names and both metrics in the compare view (its metric table renders rows lazily, so
    # the values are not read cell by cell)
    wait_for_text(browser, "Comparing 2 Runs", chosen.info.run_name, other.info.run_name, "Metrics",
                  "accuracy", "int16_node_count")
    screenshot(browser, "mlflow-compare")

    browser.get(f"{base}/#/models/mixq-{s['model']}")
    wait_for_text(browser, f"mixq-{s['model']}", f"Version {s['registered']['version']}", "champion")
    screenshot(browser, "mlflow-registered-model")


def test_optuna_dashboard_shows_the_studies(uis, browser, demo_results):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(demo_results.summary["storage"]))
    studies = {st.study_name: st for st in optuna.get_all_study_summaries(storage)}
    af = demo_results.summary["accuracy_feedback"]["study"]
    options = next(n for n in studies if n.startswith("mixq-options-"))
    base = uis["optuna"].split("/dashboard")[0]

    browser.get(f"{base}/dashboard")
    wait_for_text(browser, af, options, "Direction: MINIMIZE", "Direction: MAXIMIZE")
    screenshot(browser, "optuna-studies")

    study_id = studies[af]._study_id
    browser.get(f"{base}/dashboard/studies/{study_id}")
    text = wait_for_text(browser, af, "History", "Best Trial", "INT16 nodes if the target is met")
    assert "Objective 0" not in text
    for name in [layer["name"] for layer in _layers(demo_results)][1:3]:
        assert f"int16:{name}" in text
    screenshot(browser, "optuna-accuracy-feedback")
