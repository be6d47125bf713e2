"""The parallel searches' core protocol (core.search.parallel) without Prefect: the parent's
TrialPool launches worker threads that serve the shared study (an Optuna RDBStorage on SQLite,
with heartbeats); the answers match the one-process searches. The Prefect / PostgreSQL / MLflow
server version with killed workers is tests/scaleout."""
import threading

import optuna
import pytest
from threadpoolctl import threadpool_limits

from core import default_quantization
from core.search import Evaluator
from core.search.accuracy_feedback import int16_trial_objective
from core.search.options import options_trial_objective
from core.search.parallel import CLOSED, DUPLICATE, SPARE, TrialPool, open_storage, serve_study
from core.search.ranking import RANKING_KIND, SimulatedOutputError, ranking_trial_objective
from tests.search.test_accuracy_feedback import SETUP, ends


@pytest.fixture(scope="module")
def env():
    ns = {}
    exec(SETUP, ns)
    net = ns["net"]
    ns["stats"] = net.calibrate(ns["calib"])
    ns["evaluator"] = Evaluator(ns["dataset"], net.input_names, net.input_shapes(), ns["closeness"])
    return ns


def probe_error(env, study):
    """What a worker builds for a ranking study: the simulated output error of the INT8 program
    on the study's first evaluation samples (a new one per call: nothing cached is shared with
    the parent)."""
    import numpy as np

    net = env["net"]
    head = env["evaluator"].samples[:int(study.user_attrs["mixq_samples"])]
    return SimulatedOutputError(net, net.quantize(statistics=env["stats"], quantization_config=default_quantization),
                                {n: np.concatenate([x[n] for x in head]) for n in net.input_names})


def thread_pool(url, make_objective, width=2, tpe=None):
    threads = []

    def launch(study_name, count):
        for _ in range(count):
            def work():
                study = optuna.load_study(study_name=study_name, storage=open_storage(url))
                serve_study(study, make_objective(study), tpe_objective=tpe and (lambda space: tpe(study, space)),
                            poll=0.05, idle_timeout=60)
            t = threading.Thread(target=work, daemon=True)
            t.start()
            threads.append(t)

    pool = TrialPool(width, launch, lambda name: sum(t.is_alive() for t in threads), poll=0.05)
    return pool, threads


def test_options_grid_on_two_workers_matches_one_process(env, tmp_path):
    from core import CalibrationMethod

    net, stats, ev = env["net"], env["stats"], env["evaluator"]
    options = {"calibration_method": [CalibrationMethod.from_str(m) for m in ("min_max", "mse", "percentile")]}
    serial = net.search_quantization_options(stats, env["dataset"], env["closeness"], options, storage=None)
    url = f"sqlite:///{tmp_path}/optuna.db"
    pool, threads = thread_pool(url, lambda study: options_trial_objective(net, stats, ev, options))
    par = net.search_quantization_options(stats, env["dataset"], env["closeness"], options, storage=url,
                                          executor=pool)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)           # close() sent them home
    assert par.best.options == serial.best.options and par.best.accuracy == serial.best.accuracy
    assert sorted((tuple(sorted(c.options.items())), c.accuracy) for c in par.candidates) == \
        sorted((tuple(sorted(c.options.items())), c.accuracy) for c in serial.candidates)
    study = optuna.load_study(study_name=par.study_name, storage=open_storage(url))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(serial.candidates) and all(t.user_attrs.get("worker") for t in complete)
    assert study.user_attrs[CLOSED] is True


def test_accuracy_feedback_on_two_workers(env, tmp_path):
    net, stats, ev = env["net"], env["stats"], env["evaluator"]
    int8, all16 = ends(env)
    target = (int8 + all16) / 2
    # one BLAS thread here and in the worker threads, as on the workers of a real fan-out: OpenBLAS
    # sums in another order with more threads (float passes differ in the last digits)
    limit = threadpool_limits(limits=1)
    serial = env["net"].quantize_with_accuracy_feedback(stats, env["dataset"], default_quantization,
                                                        env["closeness"], target, storage=None,
                                                        max_trials=10).accuracy_feedback
    url = f"sqlite:///{tmp_path}/optuna.db"

    def objective(study):
        if study.user_attrs.get("mixq_kind") == RANKING_KIND:       # the ranking's probes
            return ranking_trial_objective(lambda st: probe_error(env, st))
        return int16_trial_objective(net, stats, ev, default_quantization, study.user_attrs["mixq_target"],
                                     study.user_attrs["mixq_order"])

    def tpe(study, space):
        return int16_trial_objective(net, stats, ev, default_quantization, study.user_attrs["mixq_target"],
                                     study.user_attrs["mixq_order"], tpe_space=space)

    pool, threads = thread_pool(url, objective, tpe=tpe)
    par = env["net"].quantize_with_accuracy_feedback(stats, env["dataset"], default_quantization, env["closeness"],
                                                     target, storage=url, max_trials=10,
                                                     executor=pool).accuracy_feedback
    for t in threads:
        t.join(30)
    limit.restore_original_limits()
    assert not any(t.is_alive() for t in threads)
    # the ranking's per-node passes ran as probe trials on the workers: the same ranking, scores equal
    assert par.ranking == serial.ranking
    names = optuna.get_all_study_names(open_storage(url))
    ranking_study = optuna.load_study(study_name=next(n for n in names if n.startswith("mixq-ranking-")),
                                      storage=open_storage(url))
    probes = [t for t in ranking_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert probes and all(t.user_attrs.get("worker") for t in probes)
    assert sum(len(t.user_attrs["errors"]) for t in probes) == len(serial.ranking) + 1    # INT8 + one per node
    assert ranking_study.user_attrs[CLOSED] is True
    assert par.accuracy >= target
    assert len(par.int16_nodes) <= len(serial.int16_nodes) + 1
    study = optuna.load_study(study_name=par.study_name, storage=open_storage(url))
    trials = study.get_trials()
    counted = [t for t in trials if t.state != optuna.trial.TrialState.FAIL and not t.user_attrs.get(SPARE)]
    assert len(counted) <= 10
    evaluated = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and DUPLICATE not in t.user_attrs]
    sets = [frozenset(t.user_attrs["int16_nodes"]) for t in evaluated]
    assert len(sets) == len(set(sets))                    # no candidate evaluated twice
    fresh = [c for c in par.candidates if not c.resumed]
    assert len(fresh) == par.evaluations == len(evaluated)
