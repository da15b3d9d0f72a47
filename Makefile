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

# pyproject's addopts leave out the tests marked slow; test-slow runs only them. The tests run two at
# a time (pytest-xdist; a file's tests on one worker, so its fixtures are built once). Those marked
# timing (a timeout, a signal or a launcher's failure detection is part of what they check) then run
# two at a time among themselves, where most of them wait rather than compute; last, the SLURM tests,
# which share one cluster, one at a time.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -m 'not slow and not timing' -n 2 --dist loadfile --durations=15
	OMP_NUM_THREADS=1 $(PY) -m pytest -m 'not slow and timing' -n 2 --dist load --ignore tests/slurm --durations=15
	OMP_NUM_THREADS=1 $(PY) -m pytest tests/slurm --durations=15

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) bench/ddp_scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
