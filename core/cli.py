"""The ``mixq`` command line: ``mixq <command> [<subcommand>] ...`` (``python -m core`` runs it too).

Each command registers itself in ``build_parser`` with a handler ``(args) -> int``; mixq's own
errors become one line on stderr and exit status 1, usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from core.errors import InputError, MixqError, ModelLoadError


def _zoo_list(args: argparse.Namespace) -> int:
    from core import zoo

    rows = [("NAME", "SOURCE PACKAGE", "INSTALLED", "CACHED")]
    for name in zoo.list_models():
        model = zoo.get(name)
        installed = model.installed()
        cached = installed and zoo.cached_path(name).is_file()
        rows.append((name, f"{model.package}=={model.version}", "yes" if installed else "no",
                     "yes" if cached else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    missing = [zoo.get(n) for n in zoo.list_models() if not zoo.get(n).installed()]
    for model in missing:
        print(f"to install {model.name}: {model.install_command}")
    return 0


def _zoo_build(args: argparse.Namespace) -> int:
    from core import zoo

    if args.all == bool(args.names):
        args.parser.error(f"give model names or --all (not both); models: {', '.join(zoo.list_models())}")
    names = zoo.list_models() if args.all else args.names
    for name in names:
        zoo.get(name)  # unknown names fail before anything is built
    for name in names:
        print(zoo.build(name, force=args.force))
    return 0


# ---------------------------------------------------------------- models and data from the command line

def _load_net(spec: str):
    """A model file (any registered importer's: .onnx, .tflite, Keras, SavedModel ...) or a zoo model name."""
    from core import load_model, onnx_source, source_for_path, zoo

    if os.path.exists(spec):
        return load_model(source_for_path(spec))
    if spec in zoo.list_models():
        return load_model(onnx_source(zoo.build(spec)))
    raise ModelLoadError(f"{spec!r} is neither a model file nor a zoo model ({', '.join(zoo.list_models())})")


def _load_data(spec: str, net, labels_key: str | None = None):
    """``(inputs, labels or None)``: ``inputs`` maps each model input to an array whose first axis
    is the sample. ``spec``: an .npz with one array per model input (and optionally labels), or
    ``zoo:natural_images:<split>:<count>``, ``zoo:imagenet_samples``, ``zoo:digits:<split>[:<count>]``."""
    import numpy as np

    from core import zoo

    if spec.startswith("zoo:"):
        parts = spec.split(":")[1:]
        name = parts[0] if parts else ""
        try:
            count = int(parts[2]) if len(parts) > 2 else None
        except ValueError:
            raise InputError(f"bad count in data spec {spec!r}") from None
        if name == "natural_images":
            images = zoo.datasets.natural_images(parts[1] if len(parts) > 1 else "calibration", count or 64)
        elif name == "imagenet_samples":
            images = zoo.datasets.imagenet_samples()
        elif name == "digits":
            images = zoo.datasets.digits(parts[1] if len(parts) > 1 else "calibration")
        else:
            raise InputError(f"unknown zoo data set {name!r} in {spec!r} (natural_images, imagenet_samples, digits)")
        x, y = images.inputs, images.labels
        if count is not None and count < len(x):
            idx = np.linspace(0, len(x) - 1, count).round().astype(int)     # spread over the classes
            x, y = x[idx], y[idx]
        if len(net.input_names) != 1:
            raise InputError(f"zoo data feeds one input; the model has {net.input_names}")
        return {net.input_names[0]: x}, y
    if not os.path.isfile(spec):
        raise InputError(f"data file {spec!r} does not exist (give an .npz or zoo:<data set>)")
    try:
        with np.load(spec, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise InputError(f"cannot read {spec!r} as an .npz file: {e}") from None
    missing = [n for n in net.input_names if n not in arrays]
    if missing:
        raise InputError(f"{spec}: no array for model input(s) {missing}; it holds {sorted(arrays)}")
    labels = None
    if labels_key:
        if labels_key not in arrays:
            raise InputError(f"{spec}: no labels array {labels_key!r}; it holds {sorted(arrays)}")
        labels = arrays[labels_key]
    return {n: arrays[n] for n in net.input_names}, labels


def _samples(inputs) -> list[dict]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(n)]


def _config(args):
    from core import (
        CalibrationMethod,
        QuantizationPrecision,
        RequantizationMode,
        default_quantization,
        int16_quantization,
    )

    cfg = int16_quantization if args.precision == "int16" else default_quantization
    if args.calibration:
        cfg = cfg.with_calibration(CalibrationMethod.from_str(args.calibration))
    if args.requantization:
        cfg = cfg.with_requantization_mode(RequantizationMode.from_str(args.requantization))
    if getattr(args, "int16_node", None):
        cfg = cfg.with_custom_quantization_configs(
            {n: {"quantization_precision": QuantizationPrecision.INT_16} for n in args.int16_node})
    return cfg


def _evaluation_set(net, inputs, labels):
    """``(inputs, label)`` pairs and a top-1 score: against the labels, else agreement with FP32's top-1."""
    import numpy as np

    if labels is None:
        name = net.input_names[0]
        x = inputs[name]
        labels = np.concatenate([net.execute({name: x[i:i + 32]})[0].argmax(-1).reshape(len(x[i:i + 32]), -1)[:, 0]
                                 for i in range(0, len(x), 32)])
        what = "agreement with FP32 top-1"
    else:
        what = "top-1 accuracy"
    dataset = list(zip(_samples(inputs), [int(v) for v in np.asarray(labels).reshape(len(labels), -1)[:, 0]]))

    def top1(outputs, refs):
        return float(np.mean([o[0].reshape(len(o[0]), -1)[0].argmax() == r for o, r in zip(outputs, refs)]))

    return dataset, top1, what


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _quantize(args: argparse.Namespace) -> int:
    net = _load_net(args.model)
    inputs, _ = _load_data(args.data, net)
    cfg = _config(args)
    t = time.perf_counter()
    stats = net.calibrate(_samples(inputs), progress=not args.quiet)
    model = net.quantize(stats, cfg, model_name=args.name)
    seconds = time.perf_counter() - t
    model.save(args.name, args.output)
    rows = [("node", "op", "precision")]
    for n in model.program.graph.nodes:
        kind = model.program.kinds[n.name]
        out = model.program.tensors.get(n.outputs[0]) if n.outputs else None
        rows.append((n.name, n.op, "float (APU)" if kind == "apu" else f"int{out.bits}" if out else "-"))
    if args.nodes:
        print(_table(rows))
    print(f"quantized {args.model} in {seconds:.1f} s ({stats.num_samples} calibration samples): "
          f"{os.path.join(args.output, args.name)}.sima (+ .sima.json)")
    if args.evaluate:
        ev_inputs, labels = _load_data(args.evaluate, net, args.labels)
        dataset, top1, what = _evaluation_set(net, ev_inputs, labels)
        from core.search import Evaluator

        score = Evaluator(dataset, net.input_names, net.input_shapes(), top1)(model)
        print(f"{what} on {len(dataset)} samples: {score:.2%}")
    return 0


def _flow_data_spec(spec: str, net_input: str | None, labels: str | None) -> dict:
    """A CLI data spec as the flows' JSON data spec (tasks.data)."""
    if spec.startswith("zoo:"):
        parts = spec.split(":")[1:]
        out = {"source": "zoo", "name": parts[0] if parts else ""}
        if len(parts) > 1:
            out["split"] = parts[1]
        if len(parts) > 2:
            try:
                out["count"] = int(parts[2])
            except ValueError:
                raise InputError(f"bad count in data spec {spec!r}") from None
        return out
    if not os.path.isfile(spec):
        raise InputError(f"data file {spec!r} does not exist (give an .npz or zoo:<data set>)")
    out = {"source": "npz", "path": os.path.abspath(spec), "labels": labels}
    if net_input:
        out["input"] = net_input
    return out


def _search_on_workers(args: argparse.Namespace) -> int:
    """``mixq search --workers N``: the orchestrated search (flows/search.py, ``search_flow``) with
    its candidates on N Prefect workers sharing ``--storage`` (PostgreSQL); run as its own
    program (``python -m flows.search``) so ``core`` never imports Prefect or MLflow."""
    import json
    import subprocess

    if not args.storage or "://" not in args.storage:
        raise InputError("--workers needs --storage with a database every worker reaches, e.g. "
                         "postgresql+psycopg://user@host:5432/optuna (docs/scale-out.md)")
    params = {"model": os.path.abspath(args.model) if os.path.exists(args.model) else args.model,
              "calibration": _flow_data_spec(args.data, None, None),
              "evaluation": _flow_data_spec(args.evaluate, None, args.labels),
              "target": args.target, "max_trials": args.trials, "output_dir": os.path.abspath(args.output),
              "storage": args.storage, "name": args.name, "fast_mode": not args.exact, "workers": args.workers}
    if args.deployment:
        params["worker_deployment"] = args.deployment
    if not args.quiet:
        print(f"search_flow on {args.workers} worker(s): {json.dumps(params)}", flush=True)
    return subprocess.call([sys.executable, "-m", "flows.search", json.dumps(params)])


def _search(args: argparse.Namespace) -> int:
    if args.workers:
        return _search_on_workers(args)
    net = _load_net(args.model)
    inputs, _ = _load_data(args.data, net)
    ev_inputs, labels = _load_data(args.evaluate, net, args.labels)
    dataset, top1, what = _evaluation_set(net, ev_inputs, labels)
    calib = _samples(inputs)
    stats = net.calibrate(calib, progress=not args.quiet)
    os.makedirs(args.output, exist_ok=True)
    storage = args.storage or os.path.join(args.output, f"{args.name}.journal")
    progress = _Progress(args.quiet)
    options = net.search_quantization_options(stats, dataset, top1, max_trials=args.option_trials, storage=storage,
                                              callbacks=[progress.option], fast_mode=not args.exact)
    progress.done()
    rows = [("calibration", "weights", "activations", what)]
    for c in sorted(options.candidates, key=lambda c: -c.accuracy if c.accuracy == c.accuracy else 1):
        rows.append((c.options["calibration_method"], c.options["weight_quantization_scheme"],
                     c.options["activation_quantization_scheme"], c.error or f"{c.accuracy:.2%}"))
    print(_table(rows))
    best = options.best
    print(f"best options: {best.options['calibration_method']}, weights {best.options['weight_quantization_scheme']}, "
          f"activations {best.options['activation_quantization_scheme']}: {best.accuracy:.2%}")
    model = net.quantize(stats, best.config, model_name=args.name)
    if args.target is not None:
        model = net.quantize_with_accuracy_feedback(stats, dataset, best.config, top1, args.target,
                                                    max_trials=args.trials, storage=storage, model_name=args.name,
                                                    callbacks=[progress.candidate], fast_mode=not args.exact)
        progress.done()
        r = model.accuracy_feedback
        rows = [("#", "source", "INT16 nodes", what)]
        for c in r.candidates:
            rows.append((c.trial_number, c.source, len(c.int16_nodes), f"{c.accuracy:.2%}"))
        print(_table(rows))
        print(f"chosen: {len(r.int16_nodes)} INT16 node(s) {r.int16_nodes}: {r.accuracy:.2%} "
              f"(target {args.target:.2%}; {r.evaluations} evaluations)")
    model.save(args.name, args.output)
    print(f"saved {os.path.join(args.output, args.name)}.sima (+ .sima.json); trials in {storage}")
    return 0


def _load_sima(path: str):
    from core import Model

    directory, name = os.path.split(path)
    return Model.load(name, directory)


class _NetInputs:
    """What ``_load_data`` needs from a model: its input names."""

    def __init__(self, model):
        self.input_names = model.input_names


def _analyze(args: argparse.Namespace) -> int:
    model = _load_sima(args.model)
    inputs, _ = _load_data(args.data, _NetInputs(model))
    samples = _samples(inputs)
    report = model.analyze_quantization_error(samples, args.metric, local_feed=not args.cumulative,
                                              progress=not args.quiet)
    print(report.table(worst_first=args.worst_first))
    if args.plot:
        print(f"plot: {report.plot(args.plot, top=args.top)}")
    if args.save:
        directory, name = os.path.split(args.model)
        model.save(name, directory)
        print(f"Layer Statistics written into {args.model}.json")
    return 0


def _compile(args: argparse.Namespace) -> int:
    model = _load_sima(args.model)
    report = model.compile(args.output, batch_size=args.batch_size, compress=not args.no_compress)
    print(report)
    return 0


def _run_devkit(args: argparse.Namespace) -> int:
    import getpass

    import numpy as np

    model = _load_sima(args.model)
    inputs, _ = _load_data(args.data, _NetInputs(model))
    samples = _samples(inputs)
    password = getpass.getpass(f"password for {args.user}@{args.devkit}: ") if args.ask_password else ""
    t = time.perf_counter()
    outputs = model.execute_in_accelerator_mode(samples, args.devkit, username=args.user, password=password,
                                                batch_size=args.batch_size, port=args.port,
                                                key_filename=args.key, accept_unknown_host=args.accept_unknown_host,
                                                known_hosts=args.known_hosts, remote_python=args.remote_python,
                                                remote_env={"PYTHONPATH": args.remote_pythonpath}
                                                if args.remote_pythonpath else None, timeout=args.timeout)
    seconds = time.perf_counter() - t
    local = [model.execute(s) for s in samples] if args.check else None
    if args.outputs:
        arrays = {f"output_{k}": np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))}
        np.savez(args.outputs, **arrays)
    print(f"{len(samples)} samples on {args.devkit} in {seconds:.1f} s")
    if local is not None:
        same = all(np.array_equal(a, b) for o, l in zip(outputs, local) for a, b in zip(o, l))
        print("bit-identical to local execution" if same else "DIFFERENT from local execution")
        return 0 if same else 1
    return 0


class _Progress:
    """One status line per evaluated candidate (on stderr, so tables on stdout stay clean)."""

    def __init__(self, quiet: bool):
        self.quiet, self.count = quiet, 0

    def _line(self, text: str) -> None:
        self.count += 1
        if self.quiet:
            return
        if sys.stderr.isatty():   # one line, rewritten
            print(f"\r[{self.count}] {text[:100]:<100}", end="", file=sys.stderr, flush=True)
        else:
            print(f"[{self.count}] {text}", file=sys.stderr, flush=True)

    def option(self, c) -> None:
        self._line(f"{c.options['calibration_method']}: {c.error or f'{c.accuracy:.2%}'}")

    def candidate(self, c) -> None:
        self._line(f"{c.source}: {len(c.int16_nodes)} INT16 nodes -> {c.accuracy:.2%}")

    def done(self) -> None:
        if not self.quiet and self.count and sys.stderr.isatty():
            print(file=sys.stderr)
        self.count = 0


def _add_quantization_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.onnx) or zoo model name (mobilenet_v2, mnist_cnn)")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="calibration data: an .npz with one array per model input (first axis: samples), "
                        "or zoo:natural_images:calibration:128, zoo:digits:calibration:64")
    p.add_argument("--name", default="model", help="saved model name (default: model)")
    p.add_argument("--output", default=".", metavar="DIR", help="where to save (default: .)")
    p.add_argument("--labels", metavar="KEY", help="labels array in the evaluation .npz (default: agreement "
                                                   "with FP32 top-1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixq", description="mixq: post-training quantization workbench")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    zoo_parser = commands.add_parser("zoo", help="real pretrained models from registry packages")
    zoo_commands = zoo_parser.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    zoo_commands.add_parser("list", help="list zoo models: source package, installed?, cached?") \
        .set_defaults(handler=_zoo_list)
    build = zoo_commands.add_parser("build", help="build zoo models as ONNX (cached) and print their paths")
    build.add_argument("names", nargs="*", metavar="NAME", help="model name (see `mixq zoo list`)")
    build.add_argument("--all", action="store_true", help="build every zoo model")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached file exists")
    build.set_defaults(handler=_zoo_build, parser=build)
    zoo_parser.set_defaults(handler=lambda args: _usage(zoo_parser))

    q = commands.add_parser("quantize", help="calibrate and quantize a model, save .sima + .sima.json",
                            description="Calibrate a model on --data, quantize it and save it.")
    _add_quantization_args(q)
    q.add_argument("--precision", choices=["int8", "int16"], default="int8", help="preset (default: int8)")
    q.add_argument("--calibration", choices=["min_max", "moving_average", "mse", "entropy", "percentile"],
                   help="calibration method (default: the preset's, mse)")
    q.add_argument("--requantization", choices=["sima", "tflite"], help="requantization arithmetic (default: sima)")
    q.add_argument("--int16-node", action="append", metavar="NODE", help="run NODE at INT16 (repeatable)")
    q.add_argument("--evaluate", metavar="SPEC", help="evaluation data (as --data) to score the quantized model")
    q.add_argument("--nodes", action="store_true", help="print every node with its precision")
    q.set_defaults(handler=_quantize)

    s = commands.add_parser("search", help="search calibration/scheme options, then INT16 nodes toward a target",
                            description="Cycle through calibration methods and schemes (one calibration pass), "
                                        "then, with --target, find the fewest INT16 nodes that reach it.")
    _add_quantization_args(s)
    s.add_argument("--evaluate", required=True, metavar="SPEC", help="evaluation data (as --data)")
    s.add_argument("--target", type=float, help="target score for accuracy feedback (e.g. 0.9)")
    s.add_argument("--trials", type=int, default=24, help="accuracy feedback trial budget (default: 24)")
    s.add_argument("--option-trials", type=int, help="options trial budget (default: the whole grid)")
    s.add_argument("--storage", help="Optuna storage: journal file or RDB URL (default: OUTPUT/NAME.journal); "
                                     "a rerun resumes from it")
    s.add_argument("--exact", action="store_true", help="evaluate candidates bit-accurately (default: fast mode)")
    s.add_argument("--workers", type=int, default=0, metavar="N",
                   help="evaluate the candidates on N Prefect workers (search_flow: options grid, INT16 "
                        "reference, accuracy feedback; MLflow and Prefect from MLFLOW_TRACKING_URI / "
                        "PREFECT_API_URL; --storage must be a PostgreSQL URL; docs/scale-out.md)")
    s.add_argument("--deployment", metavar="FLOW/DEPLOYMENT",
                   help="the workers' deployment (default: mixq-trial-batch/trial-batch)")
    s.set_defaults(handler=_search)

    a = commands.add_parser("analyze", help="per-layer quantization error of a saved model",
                            description="Per-layer error of a saved .sima model against its float graph.")
    a.add_argument("model", help="saved model (.sima)")
    a.add_argument("--data", required=True, metavar="SPEC", help="evaluation data: .npz or zoo:<data set>")
    a.add_argument("--metric", default="mae", choices=["mae", "mse", "psnr", "sqnr", "cosine"])
    a.add_argument("--cumulative", action="store_true", help="error up to each node (default: the error "
                                                               "each node adds, local feed)")
    a.add_argument("--worst-first", action="store_true", help="sort the table by error")
    a.add_argument("--plot", metavar="PNG", help="write a bar chart of the worst nodes")
    a.add_argument("--top", type=int, default=30, help="nodes in the plot (default: 30)")
    a.add_argument("--save", action="store_true", help="write the statistics into the model's .sima.json")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(handler=_analyze)

    c = commands.add_parser("compile", help="compile a saved model to .lm (memory plan report)",
                            description="Compile a saved .sima model to an .lm package for the devkit.")
    c.add_argument("model", help="saved model (.sima)")
    c.add_argument("--output", default=".", metavar="DIR")
    c.add_argument("--batch-size", type=int, default=1)
    c.add_argument("--no-compress", action="store_true", help="store constant data uncompressed")
    c.set_defaults(handler=_compile)

    r = commands.add_parser("run-devkit", help="run a saved model on a devkit over SSH",
                            description="Compile, upload and run a saved model on a devkit (accelerator mode).")
    r.add_argument("model", help="saved model (.sima)")
    r.add_argument("--devkit", required=True, metavar="HOST")
    r.add_argument("--user", required=True)
    r.add_argument("--port", type=int, default=22)
    r.add_argument("--key", metavar="FILE", help="private key file (default: ssh agent / ~/.ssh keys)")
    r.add_argument("--ask-password", action="store_true", help="prompt for a password (never echoed or logged)")
    r.add_argument("--accept-unknown-host", action="store_true", help="trust a host key not in known_hosts")
    r.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default: ~/.ssh/known_hosts)")
    r.add_argument("--remote-python", default="python3", help="python on the devkit that imports mixq's core")
    r.add_argument("--remote-pythonpath", metavar="DIR", help="PYTHONPATH on the devkit (where core/ is)")
    r.add_argument("--timeout", type=float, default=600, help="seconds for the remote run (default: 600)")
    r.add_argument("--data", required=True, metavar="SPEC", help="inputs: .npz or zoo:<data set>")
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--outputs", metavar="NPZ", help="write the outputs here")
    r.add_argument("--check", action="store_true", help="compare with local bit-accurate execution")
    r.set_defaults(handler=_run_devkit)

    u = commands.add_parser("ui", help="start the Prefect UI, MLflow UI, Netron and optuna-dashboard on results",
                            description="Start the web UIs on a results folder (what `make demo` leaves in "
                                        "mixq-demo): Prefect UI (flow runs), MLflow UI (candidates, registry), "
                                        "Netron (the newest .sima.json) and optuna-dashboard (the Optuna journal). "
                                        "All on 127.0.0.1; Ctrl-C stops them.")
    u.add_argument("folder", nargs="?", default="mixq-demo", help="results folder (default: mixq-demo)")
    u.add_argument("--only", action="append", choices=["prefect", "mlflow", "netron", "optuna"],
                   help="start only this UI (repeatable)")
    for name, port in (("prefect", 4200), ("mlflow", 5000), ("netron", 8081), ("optuna", 8082)):
        u.add_argument(f"--{name}-port", type=int, metavar="PORT", help=f"{name} port (default: {port})")
    u.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    u.set_defaults(handler=_ui)
    return parser


def _ui(args: argparse.Namespace) -> int:
    """Start the UIs on a results folder and keep them up until Ctrl-C (or SIGTERM)."""
    import signal

    from core.ui_servers import DEFAULT_PORTS, UI_NAMES, find_results, start_uis

    folder = os.path.abspath(args.folder)
    found = find_results(folder)
    if not any(found.values()):
        print(f"mixq: error: {folder} holds no results (mlflow.db, prefect/prefect.db, *.sima.json, *.journal); "
              "run `make demo` first", file=sys.stderr)
        return 1
    which = args.only or list(UI_NAMES)
    ports = {} if args.free_ports else dict(DEFAULT_PORTS)
    for name in which:
        port = getattr(args, f"{name}_port")
        if port:
            ports[name] = port
    servers = start_uis(folder, which, ports, progress=lambda m: print(m, file=sys.stderr, flush=True))
    titles = {"prefect": "Prefect UI", "mlflow": "MLflow UI", "netron": "Netron", "optuna": "optuna-dashboard"}
    paths = {"prefect": "/runs", "mlflow": "/#/experiments", "netron": "/", "optuna": "/dashboard"}
    for name, url in servers.urls.items():
        print(f"{titles[name]}: {url}{paths[name]}", flush=True)
    missing = [n for n in which if n not in servers.urls]
    if missing:
        print(f"(nothing to show for: {', '.join(missing)})", flush=True)
    print("Ctrl-C stops them", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(p.poll() is None for p in servers.processes.values()):
            time.sleep(1)
        print("mixq: a UI server exited; see its log in " + os.path.dirname(next(iter(servers.logs.values()))),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        servers.stop()


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (argparse's usage errors and --help included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            return _usage(parser)
        return handler(args)
    except MixqError as exc:
        print(f"mixq: error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
