"""``/jobs/{id}/importance`` and ``/jobs/{id}/plots/{kind}`` on a small finished job."""

import json
import re

import pytest

from app.services import plots
from app.worker import Worker


@pytest.fixture
def finished_job(client, spec_dict, settings):
    """A job of 4 trials (one hyperparameter varies a lot) run to the end in-process."""
    spec = spec_dict(budget={"n_trials": 4, "max_epochs": 3}, pruner={"kind": "none"})
    job_id = client.post("/jobs", json=spec).json()["id"]
    w = Worker(settings)
    for _ in range(30):
        w.run_once()
        if client.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed"):
            break
    assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    return job_id


def test_importance_409_before_enough_trials_then_values(client, spec_dict, finished_job):
    queued = client.post("/jobs", json=spec_dict()).json()["id"]
    r = client.get(f"/jobs/{queued}/importance")
    assert r.status_code == 409
    assert r.json()["detail"] == f"importance needs at least {plots.MIN_COMPLETE_FOR_IMPORTANCE} complete trials; 0 so far"

    for evaluator in ("fanova", "ped_anova", "mean_decrease_impurity"):
        r = client.get(f"/jobs/{finished_job}/importance", params={"evaluator": evaluator})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["evaluator"] == evaluator and body["n_complete"] == 4
        assert set(body["importances"]) == {"lr", "batch_size", "dropout", "weight_decay"}
        assert sum(body["importances"].values()) == pytest.approx(1.0)
    assert client.get(f"/jobs/{finished_job}/importance", params={"evaluator": "nope"}).status_code == 422
    assert client.get("/jobs/nope/importance").status_code == 404


def test_importance_is_cached_per_job_evaluator_and_count(client, finished_job, monkeypatch):
    first = client.get(f"/jobs/{finished_job}/importance").json()
    calls = []
    monkeypatch.setattr(plots, "sample_study", lambda *a, **k: calls.append(a))
    assert client.get(f"/jobs/{finished_job}/importance").json() == first
    assert calls == []


@pytest.mark.parametrize("kind", plots.KINDS)
def test_plot_json_and_html(client, finished_job, kind):
    r = client.get(f"/jobs/{finished_job}/plots/{kind}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    fig = r.json()
    assert set(fig) >= {"data", "layout"} and fig["data"], fig
    html = client.get(f"/jobs/{finished_job}/plots/{kind}", params={"format": "html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "Plotly.newPlot" in html.text
    assert re.search(r"<script[^>]*\bsrc=", html.text) is None  # nothing fetched from elsewhere
    assert len(html.text) > 1_000_000  # plotly.js is inlined


def test_intermediate_plot_marks_pruned_trials_and_keeps_numbers(client, settings, spec_dict):
    spec = spec_dict(budget={"n_trials": 4, "max_epochs": 6},
                     pruner={"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                     search_space={"lr": {"low": 1e-5, "high": 3e-1, "log": True}})
    job_id = client.post("/jobs", json=spec).json()["id"]
    w = Worker(settings)
    for _ in range(30):
        w.run_once()
        if client.get(f"/jobs/{job_id}").json()["status"] == "succeeded":
            break
    trials = client.get(f"/jobs/{job_id}/trials").json()["items"]
    fig = client.get(f"/jobs/{job_id}/plots/intermediate").json()
    names = {tr["name"] for tr in fig["data"]}
    expected = {f"Trial{t['number']}" + (" (pruned)" if t["state"] == "pruned" else "")
                for t in trials if t["intermediate_values"]}
    assert names == expected
    pruned = [tr for tr in fig["data"] if tr["name"].endswith("(pruned)")]
    assert pruned and all(tr["line"]["dash"] == "dot" for tr in pruned)


def test_unknown_plot_kind_is_404_json(client, finished_job):
    r = client.get(f"/jobs/{finished_job}/plots/pie")
    assert r.status_code == 404
    assert r.json()["detail"].startswith("no plot kind 'pie'; one of: history, intermediate")
    assert client.get("/jobs/nope/plots/history").status_code == 404


def test_importance_plot_409_while_too_early(client, spec_dict):
    queued = client.post("/jobs", json=spec_dict()).json()["id"]
    assert client.get(f"/jobs/{queued}/plots/importance").status_code == 409
    assert json.loads(client.get(f"/jobs/{queued}/plots/history").text)["data"] == []


def test_plots_of_a_sample_keep_real_trial_numbers(settings, monkeypatch):
    """A sample with gaps in the numbering (best 3 + recent 5 of 30) draws every kind, labelled by real number."""
    import optuna

    from app.db import make_storage
    from app.services.trial_sample import SampleLimits, sample_study

    storage = make_storage(settings.database_url)
    study = optuna.create_study(study_name="gaps", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        x, y = trial.suggest_float("x", -3, 3), trial.suggest_int("y", 0, 4)
        for step in range(1, 4):
            trial.report((x - 1) ** 2 + y + 1 / step, step)
        return (x - 1) ** 2 + y

    study.optimize(objective, n_trials=30)
    limits = SampleLimits(best=3, recent=5)
    sample = sample_study(storage, "gaps", limits)
    best3 = sorted(study.trials, key=lambda t: t.value)[:3]
    expected = sorted({t.number for t in best3} | set(range(25, 30)))
    assert [t.number for t in sample.trials] == expected
    assert {t.number: t.params for t in sample.trials} == {n: study.trials[n].params for n in expected}
    assert sample.trials[-1].intermediate_values == study.trials[-1].intermediate_values

    monkeypatch.setattr(plots, "PLOT_SAMPLE", limits)
    monkeypatch.setattr(plots, "CURVE_SAMPLE", SampleLimits(best=3, recent=5, max_steps=2))
    history = plots.figure("history", storage, "job", "gaps")
    assert sorted(history.data[0].x) == expected
    curves = plots.figure("intermediate", storage, "job", "gaps")
    assert sorted(int(tr.name[5:]) for tr in curves.data) == expected
    assert all(len(tr.x) == 2 and tr.x[-1] == 3 for tr in curves.data)  # downsampled, last step kept
    for kind in ("parallel_coordinate", "slice", "contour", "edf", "importance"):
        assert plots.figure(kind, storage, "job", "gaps").data


# ------------------------------------------------------------------ issue 20: work bounded in dimensions
N_DIMS = 20


@pytest.fixture
def wide_job(client, spec_dict, settings):
    """A job whose study has 20 parameters (x00..x19) over 30 trials; x17 and x03 drive the objective."""
    import optuna

    from app.db import make_storage

    r = client.post("/jobs", json=spec_dict())
    job_id, study_name = r.json()["id"], r.json()["study_name"]
    study = optuna.create_study(study_name=study_name, storage=make_storage(settings.database_url),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        xs = {f"x{i:02d}": trial.suggest_float(f"x{i:02d}", 0, 1) for i in range(N_DIMS)}
        return 10 * xs["x17"] + 5 * xs["x03"] + 0.01 * sum(xs.values())

    study.optimize(objective, n_trials=30)
    return job_id


def _axes(layout, name="xaxis"):
    return [k for k in layout if re.fullmatch(rf"{name}\d*", k)]


def test_plots_of_many_dimensions_draw_a_bounded_number(client, wide_job):
    cases = {"slice": plots.MAX_PARAMS, "parallel_coordinate": plots.MAX_PARAMS, "contour": plots.MAX_CONTOUR_PARAMS}
    for kind, limit in cases.items():
        r = client.get(f"/jobs/{wide_job}/plots/{kind}")
        assert r.status_code == 200, r.text
        assert r.headers["x-plot-params"] == f"{limit}/{N_DIMS}"
        fig = r.json()
        meta = fig["layout"]["meta"]
        assert len(meta["params"]) == limit and meta["params_total"] == N_DIMS
        assert meta["params_chosen_by"] == "importance (ped_anova)"
        assert {"x17", "x03"} <= set(meta["params"])  # the most important ones are drawn
        assert f"{limit} of {N_DIMS} parameters" in fig["layout"]["title"]["text"]
        if kind == "slice":
            assert len(fig["data"]) == limit and len(_axes(fig["layout"])) == limit
        elif kind == "parallel_coordinate":
            labels = fig["layout"]["xaxis"]["ticktext"]  # one axis per dimension: the objective, then params
            assert len(labels) == limit + 1 and set(labels[1:]) == set(meta["params"])
            assert max(len(tr.get("x") or []) for tr in fig["data"]) == limit + 1  # a line crosses each axis
        else:
            assert len(_axes(fig["layout"])) == limit * limit  # a limit x limit grid of panels
            titled = {fig["layout"][a]["title"]["text"] for a in _axes(fig["layout"])
                      if fig["layout"][a].get("title", {}).get("text")}
            assert titled == set(meta["params"])
        assert len(r.content) < 1_000_000


def test_plot_params_chosen_by_the_caller_and_checked(client, wide_job):
    r = client.get(f"/jobs/{wide_job}/plots/contour", params={"params": "x01, x02"})
    assert r.status_code == 200 and r.headers["x-plot-params"] == f"2/{N_DIMS}"
    assert r.json()["layout"]["meta"]["params"] == ["x01", "x02"]
    assert r.json()["layout"]["meta"]["params_chosen_by"] == "request"
    assert len(_axes(r.json()["layout"])) == 1  # one pair: one panel
    too_many = ",".join(f"x{i:02d}" for i in range(plots.MAX_CONTOUR_PARAMS + 1))
    r = client.get(f"/jobs/{wide_job}/plots/contour", params={"params": too_many})
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == (f"params: a contour plot draws at most {plots.MAX_CONTOUR_PARAMS} "
                                            f"parameters; {plots.MAX_CONTOUR_PARAMS + 1} given")
    assert r.json()["detail"][0]["loc"] == ["query", "params"]
    r = client.get(f"/jobs/{wide_job}/plots/slice", params={"params": "x01,nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith("params: no parameter 'nope'")
    r = client.get(f"/jobs/{wide_job}/plots/history", params={"params": "x01"})
    assert r.status_code == 422 and "only the slice, parallel_coordinate, contour plots" in r.text
    # a job of few parameters draws them all, as before
    r = client.get(f"/jobs/{wide_job}/plots/slice", params={"params": "x05"})
    assert r.status_code == 200 and len(r.json()["data"]) == 1
