"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright for Python.

Skipped when no Chromium is installed (``apt-get install chromium``; ``.ci/run`` installs it).
``TUNER_SCREENSHOTS_DIR=docs/img`` (``make screenshots``) also writes the README's screenshots there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TUNER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium: install it with `sudo apt-get install chromium` (Debian/Ubuntu) "
                    "or set TUNER_CHROMIUM to a Chromium binary; `.ci/run` installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extras)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            yield page
        finally:
            browser.close()


def test_job_list_and_live_job_page_in_chromium(server, spec_dict, browser_page, tmp_path):
    srv = server().start()
    spec = spec_dict(name="iris-mlp", budget={"n_trials": 8, "max_epochs": 12, "timeout_s": 120},
                     pruner={"kind": "median", "n_startup_trials": 4, "n_warmup_steps": 1},  # >= 4 complete: importance
                     search_space={"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "batch_size": {"choices": [16, 32]}},
                     sampler={"kind": "tpe", "seed": 0})
    with srv.client() as http:
        http.post("/jobs", json=spec_dict(name="iris-small", budget={"n_trials": 3}))  # a second row for the list
        job_id = http.post("/jobs", json=spec).json()["id"]

    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    csp: list[str] = []  # the page's Content-Security-Policy must not block anything it needs
    page.on("console", lambda msg: csp.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(f"{srv.url}/")
    row = page.locator(f'tr.job-row[data-id="{job_id}"]')
    row.wait_for(timeout=30_000)
    assert "iris-mlp" in row.inner_text()
    row.locator("a").click()  # follow the job to its page
    page.wait_for_url(f"**/#/jobs/{job_id}")

    # It reaches succeeded by itself (the page polls the API; no reload).
    page.locator("#job-status .status.succeeded").wait_for(timeout=120_000)
    page.locator("#card-test dd").first.wait_for()
    assert "accuracy" in page.locator("#card-test").inner_text()
    assert page.locator("#trials tbody tr").count() == 8
    # The plots are drawn: Plotly's SVG with data traces.
    for kind in ("intermediate", "history", "importance"):
        page.wait_for_function(
            f"() => {{ const el = document.querySelector('#plot-{kind}');"
            " return el && el.querySelector('svg.main-svg') && Number(el.dataset.traces || 0) > 0 &&"
            " el.querySelectorAll('.plot .trace').length > 0; }", timeout=30_000)
    assert page.locator("#plot-intermediate .scatterlayer .trace").count() >= 1
    assert page.locator("#plot-importance .barlayer .trace").count() >= 1
    page.wait_for_timeout(500)  # let the last transitions settle before the picture
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True)

    page.goto(f"{srv.url}/#/")
    page.locator(f'tr.job-row[data-id="{job_id}"] .status.succeeded').wait_for(timeout=10_000)
    page.screenshot(path=str(tmp_path / "jobs.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 360})
    assert not errors, errors
    assert not csp, csp

    # optuna-dashboard's own page, under /dashboard, lists the job's study.
    page.goto(f"{srv.url}/dashboard/")
    page.get_by_text(f"job-{job_id}").first.wait_for(timeout=30_000)

    out = os.environ.get("TUNER_SCREENSHOTS_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for name in ("jobs.png", "job.png"):
            shutil.copyfile(tmp_path / name, Path(out) / name)
    assert (tmp_path / "job.png").stat().st_size > 10_000


def test_api_docs_render_offline_in_chromium(server, browser_page, request):
    """/docs is Swagger UI from the installed package: it renders with every request to this origin only."""
    if "postgres" in request.node.name:
        pytest.skip("a static page: one backend is enough")
    srv = server().start()
    page = browser_page
    requests: list[str] = []
    messages: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.on("console", lambda msg: messages.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: messages.append(str(exc)))
    page.goto(f"{srv.url}/docs")
    page.locator(".swagger-ui .info .title").wait_for(timeout=30_000)
    assert "tuneserve" in page.locator(".swagger-ui .info .title").inner_text()
    page.locator(".opblock-tag", has_text="jobs").first.wait_for(timeout=10_000)
    assert requests and all(url.startswith(srv.url) for url in requests), requests
    assert not messages, messages
