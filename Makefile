# Two entry points (see README): `make demo` and `make test`.
# Both install what is missing (apt packages, then a virtualenv with the pip
# dependencies) and are fast when everything is already there.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# astrometry.net and the Tycho-2 index files used by solve-field and by the
# simulator's real star fields.
APT_PACKAGES := astrometry.net \
	astrometry-data-tycho2-07-littleendian \
	astrometry-data-tycho2-08-littleendian \
	astrometry-data-tycho2-09-littleendian \
	astrometry-data-tycho2-10-19-littleendian

DEMO_OBS  ?= LOAO
DEMO_DIR  ?= demo
DEMO_SIZE ?= 1024

.PHONY: demo test apt venv clean

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

demo: apt venv
	$(BIN)/gppy simulate $(DEMO_OBS) $(DEMO_DIR)/raw --seed 1 --size $(DEMO_SIZE) --data-dir $(DEMO_DIR)/data
	$(BIN)/gppy process $(DEMO_OBS) $$(ls -d $(DEMO_DIR)/raw/*/ | head -n 1) --ncores 2 --data-dir $(DEMO_DIR)/data

test: apt venv
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR)
