# The two commands a new user needs:
#   make run    set up .venv and execute the course notebooks headless (PROFILE=auto|quick|gpu|smoke|paper; auto: quick on a CPU)
#   make test   set up .venv and run the test suite
#   make lab    set up .venv and open the notebooks in JupyterLab (kernel "Python 3 (apl-course)")
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= auto
OUT     ?= course_output
PY      := $(VENV)/bin/python

.PHONY: run test lab figures mutation setup benchmark results-docs exercises clean

setup: $(VENV)/.installed

# pip's and setuptools' messages go to $(VENV)/install.log, shown only when the install fails
$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV) (once; log in $(VENV)/install.log)"
	@mkdir -p $(VENV)
	@test -x $(PY) || $(PYTHON) -c "import shutil, sys; \
	    free = shutil.disk_usage('$(VENV)').free / 2**30; \
	    free < 8 and sys.exit(f'only {free:.1f} GiB free for $(VENV): the environment needs about \
	8 GiB (torch alone takes 5); free some space, or give VENV=DIR on a larger disk')"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[dev]' && \
	   $(PY) -m ipykernel install --sys-prefix --name python3 \
	       --display-name "Python 3 (apl-course)" ) > $(VENV)/install.log 2>&1 \
	   || { cat $(VENV)/install.log; echo "installing into $(VENV) failed (log above)"; exit 1; }
	@touch $@

run: setup
	@$(PY) -m apl_core course --profile $(PROFILE) --out $(OUT) $(COURSE_ARGS)

lab: setup
	$(PY) -m jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

figures: setup
	$(PY) -m apl_core course --profile quick --out $(OUT) --publish-figures docs/figures

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# docs/results.md's and the README's tables, rewritten from the committed results
results-docs: setup
	$(PY) -m apl_core.results_docs

# the student version of the notebooks: every exercise's solution stripped
exercises: setup
	$(PY) -m apl_core.exercises --out $(OUT)/student

# from scratch: mutmut keeps which tests cover which function in mutants/ and misses edited tests
mutation: setup
	$(PY) -m pip install --quiet mutmut==3.8.1
	rm -rf mutants
	$(PY) benchmarks/mutation_scores.py

benchmark: setup
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/augment_throughput.py

clean:
	rm -rf $(VENV) runs $(OUT) mutants *.egg-info
