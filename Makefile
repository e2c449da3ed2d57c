PY ?= .venv/bin/python

.PHONY: setup test lint bench
setup:
	./setup.sh

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check vmt cli tests benchmarks

bench:
	$(PY) benchmarks/video_io.py && $(PY) benchmarks/cli_overhead.py
