# Two entry points for a fresh machine with only Python 3.11+: `make demo` and `make test`.
# Each creates or updates the local virtualenv .venv from setup.cfg first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint test-oldest test-all bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,experiments]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m experiments.demo

# Two worker processes: most of the suite's time is single-threaded XLA compilation.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 -m "not slow"

# The linter (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check moejax experiments tests

# The same suite on the oldest versions setup.cfg admits (.ci/oldest.txt), in .venv-oldest.
test-oldest:
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet -c .ci/oldest.txt -e '.[test,experiments]'
	.venv-oldest/bin/python -m pytest -q -n 2 -m "not slow"

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# The scale benchmark also needs tensorly (the full-tensor baseline); not needed by the tests.
bench: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[bench]'
	$(VENV)/bin/python -m experiments.bench_recover

clean:
	rm -rf $(VENV) .venv-oldest build *.egg-info
