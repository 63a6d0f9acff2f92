# Two entry points (see README): `make demo` and `make test`.
# Both install what is missing (apt packages, then a virtualenv with the pip
# dependencies) and are fast when everything is already there.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# astrometry.net and the Tycho-2 index files used by solve-field and by the
# simulator's real star fields; systemd for `systemd-analyze verify` of the unit.
APT_PACKAGES := systemd astrometry.net \
	astrometry-data-tycho2-07-littleendian \
	astrometry-data-tycho2-08-littleendian \
	astrometry-data-tycho2-09-littleendian \
	astrometry-data-tycho2-10-19-littleendian

DEMO_OBS   ?= LOAO
DEMO_DIR   ?= demo
DEMO_DATE  ?= 2024-03-14
DEMO_NIGHTS ?= 2024_0314 2024_0315   # LOAO's night folders from DEMO_DATE on

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

# Two simulated LOAO nights (real Tycho-2 star fields, known truth), each through the
# night routine: the first night's stacks become the templates, the second night's are
# subtracted and its transients found. --refcat: the simulated stars are not in Gaia or PS1.
demo: apt venv
	$(BIN)/gppy simulate $(DEMO_OBS) $(DEMO_DIR)/raw --date $(DEMO_DATE) --nights $(words $(DEMO_NIGHTS))
	for night in $(DEMO_NIGHTS); do \
	  $(BIN)/gppy process $(DEMO_OBS) $(DEMO_DIR)/raw/$$night --data-dir $(DEMO_DIR)/data \
	    --refcat $(DEMO_DIR)/raw/refcat.ecsv || exit 1; \
	done

test: apt venv
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR)
