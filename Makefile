# Set-up and the two jobs the README opens with. `make train` and `make test` create the virtual
# environment on first use, with the pinned torch/torchvision from constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test test-slow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile

# pyproject's addopts leave out the tests marked slow; test-slow runs only them. The tests of one
# process run two at a time (one core each, a file's tests together so its fixtures are built once);
# then the multi-process tests (marked dist) run one at a time, each with every core.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -m 'not slow and not dist' -n 2 --dist loadfile --durations=15
	OMP_NUM_THREADS=1 $(PY) -m pytest -m 'not slow and dist' --durations=15

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) bench/ddp_scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
