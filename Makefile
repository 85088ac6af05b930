# The two commands a new user needs:
#   make run    set up .venv and execute the course notebooks headless (PROFILE=quick|smoke|paper)
#   make test   set up .venv and run the test suite
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= quick
OUT     ?= course_output
PY      := $(VENV)/bin/python

.PHONY: run test setup benchmark clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (apl-course)" >/dev/null
	touch $@

run: setup
	$(PY) -m apl_core course --profile $(PROFILE) --out $(OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

benchmark: setup
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/augment_throughput.py

clean:
	rm -rf $(VENV) runs $(OUT) *.egg-info
