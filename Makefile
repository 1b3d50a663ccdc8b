# `make demo` and `make test` each set up everything on a fresh machine first:
# a virtual environment with pinned packages, espeak-ng and sox from Debian, and for the
# tests also chromium and its driver (the review page's browser test).

VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo demo-swiss test lint system-packages test-system-packages clean

# Install Debian packages $(2) unless every command in $(1) is on PATH (as root, or with sudo).
apt_install_missing = \
	missing=0; for c in $(1); do command -v $$c >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(2); \
	fi

$(INSTALLED): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -e .
	touch $@

# espeak-ng and sox for the demo and the tests; chromium and its driver for the tests only.
system-packages:
	@$(call apt_install_missing,espeak-ng sox,espeak-ng sox)

test-system-packages: system-packages
	@$(call apt_install_missing,chromium chromedriver,chromium chromium-driver)

demo: $(INSTALLED) system-packages
	$(PYTHON) train.py hparams/demo_tiny_en.yaml

# German, French and Italian espeak-ng voices; the bundled multilingual Whisper base.
demo-swiss: $(INSTALLED) system-packages
	$(PYTHON) train.py hparams/demo_swiss_base.yaml

lint: $(INSTALLED)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: $(INSTALLED) test-system-packages lint
	$(PYTHON) -m pytest -q

clean:
	rm -rf $(VENV) results data
