"""`make demo`: the main job on embedded defaults -- search_flow on MobileNetV2 from the zoo.

Runs in ./mixq-demo: Prefect's ephemeral API (no server needed), MLflow in mixq-demo/mlflow.db,
the Optuna journal and the saved models in mixq-demo/mixq-output. Prints every candidate, the
chosen model, and how to open the Prefect and MLflow UIs on the results.
"""
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(c) for c in columns]]
    for r in rows:
        line = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v:.4f}"
            elif isinstance(v, (list, tuple)):
                v = str(len(v)) if c == "int16_nodes" else ", ".join(map(str, v))
            line.append(str(v))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> int:
    work = ROOT / "mixq-demo"
    work.mkdir(exist_ok=True)
    os.chdir(work)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("MIXQ_RESULTS_DIR", str(work / "mixq-results"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")   # no telemetry (and no network here)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    t0 = time.perf_counter()
    from flows.search import search_flow

    summary = search_flow(output_dir=str(work / "mixq-output"))
    elapsed = time.perf_counter() - t0
    rows = summary["candidates"]
    columns = [c for c in ("stage", "trial", "source", "calibration", "weights", "activations", "int16_nodes",
                           "accuracy", "logit_sqnr_db", "feasible", "seconds")
               if any(r.get(c) not in (None, "") for r in rows)]
    print(f"\nall candidates ({summary['metric']} with FP32's top-1 on natural-image crops; "
          "int16_nodes = how many nodes run at INT16):")
    print(table(rows, list(dict.fromkeys(columns))))
    m = summary["metrics"]
    print(f"\nchosen model: {len(summary['int16_nodes'])} INT16 node(s) {summary['int16_nodes']}")
    print(f"  exact integer execution: {summary['metric']} {m['accuracy']:.2%}, logit SQNR {m['logit_sqnr_db']:.1f} dB "
          f"(target {summary['target']:.2%})")
    print(f"  saved: {summary['sima']} (+ .json, open it in Netron)")
    print(f"  registered: {summary['registered']['model_uri']} @{summary['registered']['alias']}")
    print(f"\ndone in {elapsed / 60:.1f} min. To look at the results:")
    print(f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}  "
          "-> http://127.0.0.1:5000 (experiment mixq-mobilenet_v2: one child run per candidate)")
    print("  Prefect UI: .venv/bin/prefect server start  -> http://127.0.0.1:4200, then rerun `make demo` "
          "to see the flow run, its tasks and artifacts there (this run used Prefect's ephemeral API)")
    print(f"  Pareto front: {summary['pareto_plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
