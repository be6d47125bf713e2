"""`make demo`: the main job on embedded defaults -- search_flow on MobileNetV2 from the zoo.

Runs in ./mixq-demo (``--folder`` elsewhere): Prefect's ephemeral API with its database kept in
mixq-demo/prefect/prefect.db (so that `mixq ui` / `make ui` shows the flow run afterwards), MLflow in
mixq-demo/mlflow.db, the Optuna journal and the saved models in mixq-demo/mixq-output. Prints every
candidate, the chosen model, and the commands that open the Prefect UI, the MLflow UI, Netron and
optuna-dashboard on the results. ``--quick``: the MNIST CNN on OpenCV's digits instead (about a
minute; what tests/ui uses).
"""
import argparse
import json
import os
import pathlib
import shlex
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


QUICK = dict(model="mnist_cnn",
             calibration={"source": "zoo", "name": "digits", "split": "calibration", "count": 64},
             evaluation={"source": "zoo", "name": "digits", "split": "evaluation", "count": 200, "labels": False},
             options={"calibration": ["mse", "min_max"], "weights": [{"per_channel": True}],
                      "activations": [{"asymmetric": True}]},
             target=0.999, max_trials=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(ROOT / "mixq-demo"), help="where everything goes (default: mixq-demo)")
    parser.add_argument("--quick", action="store_true", help="MNIST CNN on digits, 5 trials (about a minute)")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.folder).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    from core.ui_servers import prefect_env

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("MIXQ_RESULTS_DIR", str(work / "mixq-results"))
    # Prefect's ephemeral API, its database kept in the demo's folder (no telemetry, no network)
    for k, v in prefect_env(str(work)).items():
        os.environ.setdefault(k, v)
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    t0 = time.perf_counter()
    from flows.search import search_flow

    summary = search_flow(output_dir=str(work / "mixq-output"), **(QUICK if args.quick else {}))
    elapsed = time.perf_counter() - t0
    with open(work / "demo-summary.json", "w") as f:          # what was made, for scripts and tests
        json.dump(summary, f, indent=1, sort_keys=True, default=str)
    rows = summary["candidates"]
    columns = [c for c in ("stage", "trial", "source", "calibration", "weights", "activations", "int16_nodes",
                           "accuracy", "logit_sqnr_db", "feasible", "seconds")
               if any(r.get(c) not in (None, "") for r in rows)]
    data = "OpenCV digits" if args.quick else "natural-image crops"
    print(f"\nall candidates ({summary['metric']} with FP32's top-1 on {data}; "
          "int16_nodes = how many nodes run at INT16):")
    print(table(rows, list(dict.fromkeys(columns))))
    m = summary["metrics"]
    print(f"\nchosen model: {len(summary['int16_nodes'])} INT16 node(s) {summary['int16_nodes']}")
    print(f"  exact integer execution: {summary['metric']} {m['accuracy']:.2%}, logit SQNR {m['logit_sqnr_db']:.1f} dB "
          f"(target {summary['target']:.2%})")
    print(f"  saved: {summary['sima']} (+ .json, open it in Netron)")
    print(f"  registered: {summary['registered']['model_uri']} @{summary['registered']['alias']}")
    print(f"\ndone in {elapsed / 60:.1f} min. To look at the results:")
    print(ui_help(work, summary))
    return 0


def ui_help(work: pathlib.Path, summary: dict) -> str:
    """The commands that open each UI on the demo's results."""
    from core.ui_servers import DEFAULT_PORTS, ui_commands, ui_env

    folder = shlex.quote(str(work))
    label = summary["model"]
    cmds = ui_commands(str(work))
    what = {"prefect": ("Prefect UI", "the mixq-search flow run: task runs, artifacts (progress, candidates, summary "
                                      "with the Pareto front)"),
            "mlflow": ("MLflow UI", f"experiment mixq-{label}: the parent run, one child run per candidate "
                                    f"(select two, Compare); Models: mixq-{label} @champion"),
            "netron": ("Netron", f"{summary['sima']}.json: the graph, click a node for input_int16 and "
                                 "Layer Statistics"),
            "optuna": ("optuna-dashboard", f"the search's Optuna studies in {summary['storage']}")}
    lines = [f"  all of them:  .venv/bin/mixq ui {folder}      (or: make ui; Ctrl-C stops them)"]
    for name, argv in cmds.items():
        title, shows = what[name]
        env = [f"{k}={shlex.quote(v)}" for k, v in ui_env(name, str(work)).items() if k.startswith("PREFECT_")]
        cmd = " ".join(env + [shlex.quote(a) for a in argv])
        lines.append(f"  {title}: http://127.0.0.1:{DEFAULT_PORTS[name]}  -- {shows}\n      {cmd}")
    lines.append(f"  Pareto front: {summary['pareto_plot']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
