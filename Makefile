# The two commands a new user needs:
#   make run    set up .venv, execute the course notebooks headless and build the course site
#               (course_output/site/index.html; PROFILE=auto|quick|gpu|smoke|paper, auto: quick on a CPU)
#   make test   set up .venv and run the test suite
#   make lab    set up .venv and open the notebooks in JupyterLab (kernel "Python 3 (apl-course)")
#   make site   build the course site again from the notebooks that make run executed
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= auto
OUT     ?= course_output
PY      := $(VENV)/bin/python
KERNEL  := --name apl-course --display-name "Python 3 (apl-course)"

.PHONY: run test lab site setup-cell figures mutation setup benchmark results-docs exercises clean

setup: $(VENV)/.installed

# pip's and setuptools' messages go to $(VENV)/install.log, shown only when the install fails.
# constraints.txt holds torch and torchvision at the tested versions; the notebooks' kernel
# "apl-course" is registered inside $(VENV), where JupyterLab and papermill from it find it.
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "setting up $(VENV) (once; log in $(VENV)/install.log)"
	@mkdir -p $(VENV)
	@test -x $(PY) || $(PYTHON) -c "import shutil, sys; \
	    sys.version_info >= (3, 11) or sys.exit(f'Python {sys.version.split()[0]} is too old: \
	the course needs 3.11 or newer; give one with PYTHON=python3.11'); \
	    free = shutil.disk_usage('$(VENV)').free / 2**30; \
	    free < 8 and sys.exit(f'only {free:.1f} GiB free for $(VENV): the environment needs about \
	8 GiB (torch alone takes 5); free some space, or give VENV=DIR on a larger disk')"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install --upgrade pip && \
	   $(PY) -m pip install -e '.[dev]' -c constraints.txt && \
	   $(PY) -m ipykernel install --sys-prefix $(KERNEL) ) > $(VENV)/install.log 2>&1 \
	   || { cat $(VENV)/install.log; echo "installing into $(VENV) failed (log above)"; exit 1; }
	@touch $@

run: setup
	@$(PY) -m apl_core course --profile $(PROFILE) --out $(OUT) $(COURSE_ARGS)

site: setup
	@$(PY) -m apl_core site --out $(OUT)

lab: setup
	$(PY) -m jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# the notebooks' first code cell (Colab, Kaggle) and kernel, from apl_core/setup_cell.txt
setup-cell: setup
	$(PY) -m apl_core.setup_cell

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
	$(PY) benchmarks/pretext_cost.py

clean:
	rm -rf $(VENV) runs $(OUT) mutants *.egg-info
