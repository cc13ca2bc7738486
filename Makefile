# Two entry points: `make demo` and `make test`. Both create .venv and install edgekit with
# every extra on first use; the stamp file makes a second run skip the install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgekit-installed

.PHONY: demo test lint format clean venv sshd

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	# ONNX -> TFLite: onnx2torch without its dependencies (its torchvision would replace the
	# pinned torch; edgekit.backends.tflite.onnx_route explains)
	$(PY) -m pip install --quiet --no-deps onnx2torch==1.5.15
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The ssh benchmark test starts a real sshd on 127.0.0.1; under CI=true it fails without one.
test: lint sshd
	$(VENV)/bin/python -m pytest -q

sshd:
	@command -v sshd >/dev/null || test -x /usr/sbin/sshd || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq openssh-server openssh-client) || \
	  echo "make: could not install openssh-server; the ssh benchmark test skips (fails in CI)"

clean:
	rm -rf $(VENV) build .pytest_cache
