"""Sweeps on Ray (`comptune sweep --ray`), on a local 2-CPU Ray cluster: the rows are the serial
sweep's, a killed driver resumes, a failing task is retried and a run that keeps failing is
reported (and left for the next sweep), a cluster that does not answer is a clear error."""

import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is the optional extra comptune[ray]")

from comptune.study.ray_backend import ray_rows, run_remote  # noqa: E402
from comptune.study.sweep import plan_runs, run_sweep  # noqa: E402
from test_study import assert_same_rows, assets, finished, kill_after, read_rows, sweep_config  # noqa: E402, F401

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the failing task below runs in Ray's workers


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_the_serial_sweeps_and_a_killed_driver_resumes(local_ray, finished, tmp_path):  # noqa: F811
    config, serial_out = finished
    out = tmp_path / "ray"
    first = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, out, ray=True, on_run_done=kill_after(2, first), log=lambda s: None)
    assert [r["run_id"] for r in read_rows(out / "runs.jsonl")] == first
    run_sweep(config, out, ray=True, log=lambda s: None)
    assert_same_rows(out, serial_out)  # chosen edits came back from the workers and were written by the driver


def fail_first_try(config, spec, base):
    """Fails the first time it sees a run (a marker file remembers), then runs it."""
    marker = Path(config.name) / spec.run_id
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"worker lost while running {spec.run_id}")
    return run_remote(config, spec, base)


def always_fail(config, spec, base):
    raise RuntimeError("this run cannot be done")


def test_a_failing_task_is_retried_and_one_that_keeps_failing_is_reported(local_ray, assets, tmp_path):  # noqa: F811
    from comptune.study.sweep import _base_ce, _selections, load_inputs

    markers = tmp_path / "markers"
    markers.mkdir()
    config = sweep_config(assets, name=str(markers), budgets=[4], methods=[dict(name="lora_r1", method="lora", lora_rank=1, lrs=[0.01])])
    inputs = load_inputs(config)
    base = _base_ce(config, inputs, tmp_path / "b", log=lambda s: None)
    todo = plan_runs(config, _selections(config, inputs, tmp_path / "b", log=lambda s: None))
    rows = [row for row, _files in ray_rows(config, todo, base, task=fail_first_try, log=lambda s: None)]
    assert [r.run_id for r in rows] == [s.run_id for s in todo] and all(r.status == "ok" for r in rows)
    assert sorted(p.name for p in markers.iterdir()) == sorted(s.run_id for s in todo)  # each failed once, then ran

    logged = []
    strict = config.model_copy(update={"resources": config.resources.model_copy(update={"max_retries": 1})})
    with pytest.raises(ValueError, match=r"1 run\(s\) failed after 2 tries each .*run the same sweep again"):
        list(ray_rows(strict, todo, base, task=always_fail, log=logged.append))
    assert any("this run cannot be done" in line for line in logged)


def test_a_ray_address_that_does_not_answer_is_a_clear_error(monkeypatch):
    import comptune.study.ray_backend as backend

    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ValueError, match=r"the Ray cluster at 10.0.0.9:6379 does not answer .*ray start --head"):
        backend.connect("10.0.0.9:6379")
