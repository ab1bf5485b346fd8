# rust-celery-worker — developer entry points.
#
#   make venv     Python venv (.venv) with celery[redis] 5.x, pytest, redis, flower, celery-redbeat
#   make build    cargo build (debug binary used by the interop tests)
#   make release  cargo build --release (binary used by `run` and `bench`)
#   make run      release worker on $(BROKER) with the example app
#   make test     cargo test + interop pytest suite
#   make bench    throughput/RSS comparison against the real celery worker
#   make lint     rustfmt + clippy
#   make fuzz     libFuzzer on every wire parser, $(FUZZ_RUNS) inputs (cargo-fuzz, nightly; fuzz/README.md)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.stamp-deps
BROKER ?= $(or $(CELERY_BROKER_URL),redis://127.0.0.1:6379/0)
PYTEST_ARGS ?=
PYTEST_ARGS_PY ?=
PYTEST_ARGS_AMQP ?=
FUZZ_RUNS ?= 10000000

.PHONY: venv build release run test test-rust test-interop bench lint fuzz

venv: $(VENV_STAMP)

$(VENV_STAMP): Makefile
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(VENV_PY) -m pip install --disable-pip-version-check -q 'celery[redis]==5.7.*' pytest pytest-timeout redis flower celery-redbeat \
	  || $(VENV_PY) -m pip install --disable-pip-version-check -q 'celery[redis]>=5,<6' pytest pytest-timeout redis flower celery-redbeat
	$(VENV_PY) -c 'import celery, kombu, redis, pytest; print("celery", celery.__version__, "kombu", kombu.__version__)'
	touch $@

build:
	cargo build

release:
	cargo build --release

run: release venv
	@set -euo pipefail; \
	broker='$(BROKER)'; \
	if ! redis-cli -u "$$broker" ping >/dev/null 2>&1; then \
	  hostport="$${broker#*://}"; hostport="$${hostport#*@}"; hostport="$${hostport%%/*}"; \
	  host="$${hostport%%:*}"; port="$${hostport##*:}"; \
	  [ "$$port" = "$$hostport" ] && port=6379; \
	  case "$$host" in \
	    localhost|127.0.0.1|::1|"") \
	      echo "no Redis at $$broker; starting redis-server on port $$port" >&2; \
	      redis-server --daemonize yes --port "$$port" --save '' --appendonly no >/dev/null; \
	      for i in $$(seq 50); do redis-cli -p "$$port" ping >/dev/null 2>&1 && break; sleep 0.1; done ;; \
	    *) echo "Redis at $$broker does not answer" >&2; exit 1 ;; \
	  esac; \
	fi; \
	export CELERY_BROKER_URL="$$broker"; \
	export CELERY_RESULT_BACKEND="$${CELERY_RESULT_BACKEND:-$$broker}"; \
	unset RCW_TEST_TASKS; \
	export VIRTUAL_ENV="$(CURDIR)/$(VENV)"; \
	cd python && exec ../target/release/rust-celery-worker -A app.workers --loglevel=info

test-rust:
	cargo test

test-interop: venv
	$(VENV)/bin/pytest interop -q $(PYTEST_ARGS)

# Every part always runs; the target fails if any failed. The interop suite
# runs three times, side by side (its tests wait on workers far more than they
# use the CPU: load stays under 1 on 2 cores): Rust-native tasks on Redis;
# every task as a Python body in our prefork pool (INTEROP_WORKER=rust-python);
# Rust-native tasks on RabbitMQ (INTEROP_BROKER=amqp, a vhost of its own).
# The first streams; the others' output is printed when they end.
test: venv
	@rc=0; mkdir -p target; \
	cargo test || rc=1; \
	cargo build --quiet || rc=1; \
	( INTEROP_WORKER=rust-python $(VENV)/bin/pytest interop -q $(PYTEST_ARGS_PY) \
	    > target/interop-python-bodies.log 2>&1; echo $$? > target/interop-python-bodies.rc ) & \
	( INTEROP_BROKER=amqp $(VENV)/bin/pytest interop -q $(PYTEST_ARGS_AMQP) \
	    > target/interop-amqp.log 2>&1; echo $$? > target/interop-amqp.rc ) & \
	$(VENV)/bin/pytest interop -q $(PYTEST_ARGS) || rc=1; \
	wait; \
	for pass in python-bodies amqp; do \
	  echo "=== interop pass: $$pass"; cat target/interop-$$pass.log; \
	  [ "$$(cat target/interop-$$pass.rc)" = 0 ] || rc=1; \
	done; \
	exit $$rc

bench: venv release
	$(VENV_PY) bench/bench.py $(BENCH_ARGS)

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# The long, coverage-guided run; `make test` runs the short stable one
# (tests/wire_fuzz.rs). The corpus starts from Celery's captured samples.
fuzz:
	RCW_FUZZ_CORPUS=$(CURDIR)/fuzz/corpus/wire cargo test --release --test wire_fuzz -- --ignored write_seed_corpus
	cd fuzz && cargo +nightly fuzz run wire -O corpus/wire -- -runs=$(FUZZ_RUNS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
