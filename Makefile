# ckd: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Extra arguments for `ckd demo`, e.g. make demo ARGS="--rounds 1"
ARGS   ?=
# Where torch and torchvision come from (empty: pip's own indexes). PyTorch's CPU-only wheels, which
# the Docker image installs, map no CUDA libraries: a peer process holds about 280 MB less (README,
# Benchmarks, scale). make venv VENV=.venv-cpu TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: demo test test-faults test-deploy test-docker compose-test lint bench $(BENCHES) bench-gpu bench-compose flower venv data clean protos

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first and pinned, so pip takes them from local wheels where it can
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Debian's dataset-fashion-mnist when the files are missing and apt exists; else ckd falls back
# to torchvision's download at run time.
data:
	@if [ ! -f $(FMNIST) ] && [ -z "$$CKD_DATA_DIR" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: venv data
	$(VENV)/bin/ckd demo --out runs/demo $(ARGS)

# style, formatting and likely bugs (ruff), types (mypy), the import contracts in pyproject.toml (lint-imports)
lint: venv
	$(VENV)/bin/ruff check peer server tests bench
	$(VENV)/bin/ruff format --check peer server tests bench
	$(VENV)/bin/mypy peer server
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports

test: venv data lint
	$(PY) -m pytest -q

# the tests marked `faults` (`make test` leaves them out: minutes of real processes killed and
# restarted, on top of its own); CI runs both
test-faults: venv data
	$(PY) -m pytest -q -m faults

# Flower's deployment engine with SuperNode authentication, and peers on their own files as
# SuperNodes (minutes of real SuperLinks and SuperNodes; `make test` leaves them out); CI runs it
test-deploy: venv data
	$(PY) -m pytest -q -m deploy

# docker-compose.yml for real (README, "Docker"): as root, installs docker.io, docker-compose and
# debootstrap with apt where missing, starts dockerd without bridge or iptables where no engine
# runs, builds the image, runs 10 peers small on loopback, checks results.json, stops that dockerd.
compose-test: data
	docker/compose-test.sh tools
	docker/compose-test.sh all

# the tests marked `docker` (`make test` leaves them out: the first image build takes minutes)
test-docker: venv data
	docker/compose-test.sh tools
	$(PY) -m pytest -q -m docker


# Every benchmark, each also on its own (bench-NAME); results under bench/results/, then the
# README's tables re-rendered from them (bench/readme.py). Hours on 2 cores.
BENCHES := bench-fmnist10 bench-auto bench-paper bench-hetero bench-tabular bench-forest-search bench-column-fill bench-precision bench-grpc bench-flower bench-fuzz bench-faults bench-privacy bench-cf-speed bench-scale bench-wire bench-dirichlet20
bench: $(BENCHES)
	$(PY) bench/readme.py

bench-fmnist10: venv data
	$(PY) bench/fmnist10.py
# the default release and its stopping rule (rounds until no peer improved)
bench-auto: venv data
	$(PY) bench/fmnist10.py --set rounds=auto --out bench/results/fmnist10_auto.json
# the paper's release (--privacy paper) and its stopping rule (rounds until no peer improved)
bench-paper: venv data
	$(PY) bench/fmnist10.py --privacy paper --set rounds=auto --out bench/results/fmnist10_paper_auto.json
bench-hetero: venv data
	$(PY) bench/fmnist10.py --hetero
# 20 CNN peers under Dirichlet label skew (alpha 0.1 and 0.5) against FedAvg, local-only and pooled
# on the same split, as FedCDA (ICLR 2024) reports it; writes bench/results/dirichlet20.json
bench-dirichlet20: venv data
	$(PY) bench/dirichlet20.py
bench-tabular: venv
	$(PY) bench/tabular.py
	$(PY) bench/tabular.py --dataset wine
# a forest teacher's leaf-box search against the gradient-free one on the digits table, 5 seeds
# under the paper and guarded releases; writes bench/results/forest_search.json
bench-forest-search: venv
	$(PY) bench/forest_search.py
bench-column-fill: venv
	$(PY) bench/column_fill.py
bench-precision: venv data
	$(PY) bench/precision.py
bench-grpc: venv data
	$(PY) bench/grpc_fmnist10.py --compare
# fmnist-10 over gRPC in float32 and compact encodings, bytes by kind, against FedAvg's bytes per round
bench-wire: venv data
	$(PY) bench/wire.py
bench-flower: venv data
	$(PY) bench/flower_fmnist10.py --compare
bench-fuzz: venv
	$(PY) bench/fuzz.py
# listed after bench-fuzz: faults.json repeats fuzz.json's case and crash counts
bench-faults: venv data
	$(PY) bench/faults.py
# counterfactual search speed per teacher kind (cnn, mlp, forest) against a per-example loop and
# the floor of its passes; writes bench/results/cf_speed.json
bench-cf-speed: venv data
	$(PY) bench/cf_speed.py
# on whatever torch device there is (CUDA when present): a CNN peer's training, evaluation and
# counterfactual search; writes bench/results/gpu_check.json. Not part of make bench: meant for a
# machine with a GPU (on one without, it measures the CPU)
bench-gpu: venv data
	$(PY) bench/gpu_check.py --device $(or $(DEVICE),auto)
	$(PY) bench/readme.py

# fmnist-10 through docker-compose against `ckd launch` on the same seeds, and peers on their own
# files against parts (bench/compose_fmnist10.py); writes bench/results/compose_fmnist10.json. Needs
# root and what `make compose-test` installs, so not part of make bench; about 40 minutes on 2 cores
bench-compose: venv data
	docker/compose-test.sh tools
	$(PY) bench/compose_fmnist10.py --own-data
	$(PY) bench/readme.py

# fmnist-10 as a Flower app in simulation, 10 SuperNodes (README, "Flower"). The local SuperLink
# it starts keeps running; stop it by its PID (ss -ltnpH 'sport = :39091').
FLOWER_CPUS ?= $(shell nproc)
# run-config overrides, e.g. make flower FLOWER_CONFIG="rounds=1"
FLOWER_CONFIG ?=
flower: venv data
	PATH=$(abspath $(VENV))/bin:$$PATH FLWR_HOME=$(CURDIR)/.flwr FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
	$(VENV)/bin/flwr run . --stream -c "out='$(CURDIR)/runs/flower' $(FLOWER_CONFIG)" \
	  --federation-config "num-supernodes=10 client-resources-num-cpus=1 init-args-num-cpus=$(FLOWER_CPUS)"

# The privacy sweep on fmnist-10 (every release knob against the attacks; hours on 2 cores).
# Add e.g. ARGS="--only 0,22" for some settings; writes bench/results/privacy.json.
bench-privacy: venv data
	$(PY) bench/privacy.py $(ARGS)
	$(PY) bench/plot_privacy.py

# 2 to 32 peer processes over gRPC, all pairs against a fan-out of 3: round time, bytes, memory
bench-scale: venv data
	$(PY) bench/scale.py

clean:
	rm -rf runs .pytest_cache

# Regenerate the committed gRPC code from protos/ckd/v1/*.proto (needs grpcio-tools).
protos:
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/ckd/v1/*.proto
	sed -i -E 's/^from ckd\.v1 import/from protos.ckd.v1 import/' protos/ckd/v1/*_pb2*.py protos/ckd/v1/*_pb2.pyi
