PY ?= .venv/bin/python

.PHONY: setup test test-fast test-newest lock lint bench
setup:
	./setup.sh

test:
	$(PY) -m pytest -q

# the fast loop: the unit layer, without the tests marked slow (end-to-end and signal runs, training);
# `make test` is the full suite, what CI runs
test-fast:
	$(PY) -m pytest -q -m "not slow"

# the suite against the newest release of every dependency (a separate venv; .venv keeps the lock)
test-newest:
	VMT_DEPS=newest VMT_VENV=.venv-newest ./setup.sh
	.venv-newest/bin/python -m pytest -q

# rewrite constraints.txt from a fresh install of the newest releases (then test it and commit)
lock:
	scripts/lock.sh

lint:
	$(PY) -m ruff check vmt cli tests benchmarks

bench:
	$(PY) benchmarks/video_io.py && $(PY) benchmarks/cli_overhead.py
