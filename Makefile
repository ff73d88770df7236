# Two commands set everything up on a fresh machine with Python 3.10+:
#   make serve   install, train the default model if there is none, serve it on 8080 (HTTP) / 8081 (gRPC)
#   make test    install with test extras and run every test
#   make lint    ruff (its configuration is in pyproject.toml)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= models/default
HTTP_PORT ?= 8080
GRPC_PORT ?= 8081
PYTEST_ARGS ?=

.PHONY: venv serve train test lint render-manifests kind-up e2e-kind image bench clean

$(VENV)/.installed: pyproject.toml setup.py predictor/_h2.c predictor/nghttp2_abi.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,eval,test]'
	touch $@

venv: $(VENV)/.installed

$(MODEL_DIR)/model-card.json: | $(VENV)/.installed
	$(PY) -m training --out $(MODEL_DIR)

train: $(VENV)/.installed
	$(PY) -m training --out $(MODEL_DIR)

serve: $(VENV)/.installed $(MODEL_DIR)/model-card.json
	$(PY) -m predictor --model_dir $(MODEL_DIR) --http_port $(HTTP_PORT) --grpc_port $(GRPC_PORT)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/report.py

render-manifests:
	bash manifests/render.sh

kind-up:
	bash manifests/kind-up.sh

e2e-kind:
	bash manifests/e2e-kind.sh

image:
	bash scripts/build-image.sh

clean:
	rm -rf $(VENV) models .pytest_cache build predictor/_h2.*.so
