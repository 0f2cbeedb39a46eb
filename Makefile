# Two set-up commands for users: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run migrate test test-fast bench lint clean screenshots

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

migrate: install
	$(VENV)/bin/tuner migrate

run: install migrate
	@echo "tuneserve on http://127.0.0.1:8000 (API docs: /docs). In another terminal, submit an example:"
	@echo "  curl -s -X POST http://127.0.0.1:8000/jobs -H 'content-type: application/json' -d @examples/digits-mlp.json"
	@echo "  curl -s http://127.0.0.1:8000/jobs/<id>        # status, progress, best_trial, test_metrics"
	$(VENV)/bin/tuner serve --host 127.0.0.1 --port 8000

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench.run_all

# README screenshots (docs/img/jobs.png, docs/img/job.png), taken by the browser test in headless Chromium.
screenshots: install
	TUNER_SCREENSHOTS_DIR=docs/img $(PY) -m pytest -q tests/app/test_web.py -k sqlite

lint: install
	$(VENV)/bin/ruff check tuner app tests bench
	$(VENV)/bin/mypy tuner app

clean:
	rm -rf $(VENV) data artifacts .pytest_cache
