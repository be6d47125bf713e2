"""A search on several workers (docs/scale-out.md): the same options grid + accuracy-feedback
search_flow on MobileNetV2, in one process and on 1 and 2 Prefect process workers (1 BLAS thread
each; the search process too), with real servers started here (tasks/servers.py: PostgreSQL,
Prefect server and MLflow server on it, the mixq-pool pool and the trial-batch deployment).

Printed: wall time of each search, the ratio 2 workers / 1 worker (target <= 0.6x), whether the
deterministic options grid chose the same configuration and the runs the same INT16 set, and the
fan-out overhead per evaluated candidate: (1-worker wall - one-process wall) / candidates
(target <= 2 s). The peer is mixq's own one-process search in the same run. First, and again
at the end, the machine's 2-process throughput on the workers' own work (ranking float passes):
a 2-worker ratio cannot beat what two processes at once get done (docs/scale-out.md, Amdahl).

    python bench/bench_scaleout.py            # 64 calibration, 100 evaluation crops, 12 trials
    python bench/bench_scaleout.py --quick    # 32 calibration, 48 evaluation crops, 8 trials

Timings need an otherwise idle machine (2 workers on 2 cores).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.servers import start_stack  # noqa: E402

RUN = ("import json, sys\n"
       "from flows.search import search_flow\n"
       "s = search_flow(**json.loads(sys.argv[1]))\n"
       "print('RESULT ' + json.dumps({'best': s['options']['best'], 'int16_nodes': s['int16_nodes'], "
       "'target': s['target'], 'exact': s['metrics']['accuracy'], 'options': s['options']['evaluations'], "
       "'feedback': s['accuracy_feedback']['evaluations']}))\n")


def create_database(stack, name: str) -> str:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.pg_port}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return stack.pg_url(name)


def search(stack, workers: int, args, out: pathlib.Path, tag: str = "", check: bool = True) -> dict | None:
    storage = create_database(stack, f"optuna_w{workers}{tag}")
    params = {"model": "mobilenet_v2",
              "calibration": {"source": "zoo", "name": "natural_images", "split": "calibration",
                              "count": args.calibration},
              "evaluation": {"source": "zoo", "name": "natural_images", "split": "evaluation",
                             "count": args.evaluation},
              "target": None, "max_trials": args.trials, "output_dir": str(out / f"w{workers}"), "storage": storage,
              "experiment": f"bench-scaleout-w{workers}{tag}", "workers": workers,
              "ranking_samples": args.ranking_samples,
              "name": f"mobilenet_v2-w{workers}"}
    env = dict(stack.env, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = out / f"search-w{workers}.log"
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-c", RUN, json.dumps(params)], cwd=out, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    text = log.read_text()
    if rc != 0 and not check:
        return None
    if rc != 0:
        sys.exit(f"search with {workers} worker(s) failed:\n{text[-4000:]}")
    result = json.loads([x for x in text.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    result["wall"] = wall
    result["workers_seen"] = workers_seen(storage)
    return result


def workers_seen(storage: str) -> dict:
    import optuna

    from core.search.parallel import open_storage

    st = open_storage(storage)
    seen = {}
    for name in optuna.get_all_study_names(st):
        for t in optuna.load_study(study_name=name, storage=st).get_trials(deepcopy=False):
            w = str(t.user_attrs.get("worker", "")).split(":")[0]
            if w:
                seen[w] = seen.get(w, 0) + 1
    return seen


CAPACITY = ("import time, numpy as np\n"           # the workers' work: float passes of the ranking
            "from tasks import steps\n"
            "from tasks.evaluation import get_net, scorer_for\n"
            "from tasks.data import build_config\n"
            "from core.search import Evaluator, SimulatedOutputError\n"
            "mp = steps.load_model_task.fn('mobilenet_v2')['path']\n"
            "net = get_net(mp)\n"
            "stats = steps.load_statistics(steps.calibrate_task.fn(mp, {'source': 'zoo', 'name': 'natural_images', "
            "'split': 'calibration', 'count': 32}))\n"
            "sc = scorer_for(mp, {'source': 'zoo', 'name': 'natural_images', 'split': 'evaluation', 'count': 48})\n"
            "e = Evaluator(sc.dataset, net.input_names, net.input_shapes(), sc)\n"
            "err = SimulatedOutputError(net, net.quantize(statistics=stats, quantization_config=build_config({})), "
            "{n: np.concatenate([s[n] for s in e.samples[:8]]) for n in net.input_names})\n"
            "t = time.perf_counter()\n"
            "for n in err.nodes[:12]: err((n,))\n"
            "print(time.perf_counter() - t)\n")


def parallel_capacity() -> tuple[float, float]:
    """How much two processes doing the workers' work (12 ranking float passes on MobileNetV2, 1
    BLAS thread each, after loading) get done at once compared with one alone: (one alone s, two at
    once s each). Two free cores: about equal; a loaded machine, oversubscribed virtual cores or a
    shared memory bus: two take longer, and no search on 2 workers can beat that ratio."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MIXQ_RESULTS_DIR=tempfile.mkdtemp(prefix="mixq-bench-capacity-"))     # (no Prefect: task .fn)

    def run(n):
        procs = [subprocess.Popen([sys.executable, "-c", CAPACITY], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
        return max(float(p.communicate()[0].split()[-1]) for p in procs)

    return run(1), run(2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    args.calibration, args.evaluation, args.trials, args.ranking_samples = \
        (32, 48, 8, 8) if args.quick else (64, 100, 12, 16)
    load = os.getloadavg()[0]
    out = pathlib.Path(tempfile.mkdtemp(prefix="mixq-bench-scaleout-"))
    print(f"MobileNetV2, {args.calibration} calibration / {args.evaluation} evaluation crops, options grid 6, "
          f"accuracy feedback {args.trials} trials; {os.cpu_count()} cores, load average {load:.2f} at start")
    alone, both = parallel_capacity()
    print(f"machine: one CPU-bound process {alone:.2f} s alone, two at once {both:.2f} s each "
          f"(2-process throughput {2 * alone / both:.2f}x of one; the best a 2-worker ratio can be is "
          f"{both / alone / 2:.2f}x)", flush=True)
    stack = start_stack(str(out / "stack"), env={"MIXQ_RESULTS_DIR": str(out / "results")})
    results = {}
    try:
        # the first run also calibrates and fills the caches: a warm-up, not timed
        print("warm-up (calibration, zoo model and data caches) ...", flush=True)
        (out / "warmup").mkdir()
        search(stack, 0, argparse.Namespace(**{**vars(args), "trials": 2}), out / "warmup", "_warmup",
               check=False)      # (2 trials may well miss the target: only the caches matter)
        for workers in (0, 1, 2):
            for i in range(workers):
                stack.start_worker(f"w{i + 1}", limit=1, threads=1)
            (out / f"run{workers}").mkdir()
            results[workers] = r = search(stack, workers, args, out / f"run{workers}")
            print(f"  {workers} worker(s): {r['wall']:.1f} s, {r['options']} options + {r['feedback']} feedback "
                  f"candidates, INT16 nodes {len(r['int16_nodes'])}, trials per worker {r['workers_seen']}",
                  flush=True)
            for name in list(stack.workers):
                stack.kill_worker(name)
                del stack.workers[name]
    finally:
        stack.stop()
    one, two, local = results[1], results[2], results[0]
    ratio = two["wall"] / one["wall"]
    candidates = one["options"] + one["feedback"]
    overhead = (one["wall"] - local["wall"]) / max(1, candidates)
    same_options = one["best"]["config"] == two["best"]["config"] == local["best"]["config"]
    same_set = sorted(one["int16_nodes"]) == sorted(two["int16_nodes"])
    rows = [("", "one process", "1 worker", "2 workers"),
            ("wall time (s)", f"{local['wall']:.1f}", f"{one['wall']:.1f}", f"{two['wall']:.1f}"),
            ("candidates (options + feedback)", f"{local['options']}+{local['feedback']}",
             f"{one['options']}+{one['feedback']}", f"{two['options']}+{two['feedback']}"),
            ("chosen INT16 nodes", str(len(local["int16_nodes"])), str(len(one["int16_nodes"])),
             str(len(two["int16_nodes"]))),
            ("exact accuracy of the answer", f"{local['exact']:.4f}", f"{one['exact']:.4f}", f"{two['exact']:.4f}")]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width)))
    print()
    print(f"2 workers / 1 worker wall time: {ratio:.2f}x (target <= 0.6x)")
    print(f"fan-out overhead per candidate: {overhead:.2f} s (target <= 2 s)")
    print(f"options grid chose the same configuration in all three runs: {same_options}")
    print(f"same INT16 set with 1 and 2 workers: {same_set} ({one['int16_nodes']} / {two['int16_nodes']})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (timings are only meaningful on an idle machine)")
    alone, both = parallel_capacity()
    print(f"machine at the end: one CPU-bound process {alone:.2f} s alone, two at once {both:.2f} s each")
    return 0 if same_options else 1


if __name__ == "__main__":
    sys.exit(main())
