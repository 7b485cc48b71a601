# henbackup — the README's two commands, and the steps behind them.
# `make demo` and `make test` install what a fresh Debian 12 machine is missing (as root).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := restic borgbackup rclone openssh-server libsystemd-dev pkg-config gcc python3-dev \
	python3-venv mandoc man-db systemd passwd util-linux e2fsprogs msmtp-mta \
	dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-wheel python3-argparse-manpage python3-systemd lintian mmdebstrap \
	systemd-container python3-shtab bash-completion zsh
RESTIC_TRIXIE := .cache/restic-trixie
# What only `make bench` needs: the peers it measures henbackup against, each in its own
# venv (pinned, so that runs compare like with like), and Debian's borg for borgmatic.
BENCH_APT_PACKAGES := borgbackup
BENCH_PEERS := .cache/bench-peers
BENCH_PEER_PACKAGES := runrestic==0.5.31 crestic==1.1.0 borgmatic==2.1.10
BENCH_HENBACKUP := .cache/bench-henbackup
PROMTOOL := .cache/promtool
DEMO := $(CURDIR)/.demo

.PHONY: demo test lint bench bench-peers bench-henbackup man deb system-packages venv restic-trixie promtool clean

demo: venv
	mkdir -p $(DEMO)/data $(DEMO)/state $(DEMO)/cache $(DEMO)/run
	test -e $(DEMO)/data/hello.txt || { cp -r README.md etc $(DEMO)/data/ && \
		echo "hello from henbackup" > $(DEMO)/data/hello.txt; }
	@echo "henbackup runs on etc/demo.toml: a backup now, then one a few seconds after any"
	@echo "change in .demo/data. Ctrl-C stops it. Events follow, one line each."
	HENBACKUP_DEMO=$(DEMO) STATE_DIRECTORY=$(DEMO)/state CACHE_DIRECTORY=$(DEMO)/cache \
		RUNTIME_DIRECTORY=$(DEMO)/run $(BIN)/henbackup --config etc/demo.toml run

test: venv restic-trixie promtool
	$(BIN)/ruff check henbackup tests bench
	$(BIN)/ruff format --check henbackup tests bench
	$(BIN)/python -m pytest -p no:cacheprovider

lint: venv
	$(BIN)/ruff check --fix henbackup tests bench
	$(BIN)/ruff format henbackup tests bench

bench: venv restic-trixie bench-peers bench-henbackup
	$(BIN)/python -m bench

# henbackup as a user runs it: installed, not editable (the venv's editable-install hook
# costs every command ~11 ms), on Debian's python3 and python3-systemd; this checkout's code,
# installed again at each bench.
bench-henbackup:
	test -x $(BENCH_HENBACKUP)/bin/python || \
		/usr/bin/python3 -m venv --system-site-packages $(BENCH_HENBACKUP)
	$(BENCH_HENBACKUP)/bin/pip install -q --no-deps --no-build-isolation --force-reinstall .

bench-peers:
	$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(BENCH_APT_PACKAGES)"
	for spec in $(BENCH_PEER_PACKAGES); do venv=$(BENCH_PEERS)/$${spec%%==*}; \
		grep -qsx "$$spec" $$venv/installed || \
		{ $(PYTHON) -m venv --clear $$venv && $$venv/bin/pip install -q "$$spec" && \
		  echo "$$spec" > $$venv/installed; } || exit 1; \
	done

# Man pages: henbackup(8) and henbackupctl(1) from the argparse parsers, plus hand-written parts.
MANDATE := $(shell date -u +"%B %-d, %Y")
man: venv
	mkdir -p build/man
	$(BIN)/argparse-manpage --module henbackup.cli.daemon --function get_parser \
		--project-name henbackup --version "$$($(BIN)/henbackup --version | cut -d' ' -f2)" \
		--manual-section 8 --manual-title "System Administration" \
		--description "supervise restic backups" --include man/henbackup.8.include \
		--output build/man/henbackup.8
	$(BIN)/argparse-manpage --module henbackup.cli.ctl --function get_parser \
		--project-name henbackup --version "$$($(BIN)/henbackup --version | cut -d' ' -f2)" \
		--manual-section 1 --manual-title "User Commands" \
		--description "talk to the henbackup daemon" --include man/henbackupctl.1.include \
		--output build/man/henbackupctl.1
	sed -i '1s/"[0-9]*\\-[0-9]*\\-[0-9]*"/"$(MANDATE)"/' build/man/henbackup.8 build/man/henbackupctl.1
	# henbackup.toml(5) is written by hand, in mdoc: copied as it is, its .Dd date included.
	cp man/henbackup.toml.5 build/man/henbackup.toml.5

# The Debian package, built the Debian way from a copy of this checkout (packaging/debian
# as its debian/): exactly one file is left in build/deb, henbackup_VERSION_all.deb.
DEB_SOURCE := build/deb-source/henbackup
deb: system-packages
	rm -rf build/deb build/deb-source
	mkdir -p build/deb $(DEB_SOURCE)
	tar -c --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./.demo \
		--exclude=./build --exclude='*.egg-info' --exclude=__pycache__ --exclude=./packaging \
		--exclude=./.pytest_cache --exclude=./.hypothesis --exclude=./.ruff_cache \
		. | tar -x -C $(DEB_SOURCE)
	cp -r packaging/debian $(DEB_SOURCE)/debian
	# Debian's own python3 and tools, whatever python3 comes first in PATH here.
	cd $(DEB_SOURCE) && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage --build=binary --no-sign
	mv build/deb-source/henbackup_*_all.deb build/deb/
	rm -rf build/deb-source
	lintian --fail-on error,warning build/deb/henbackup_*_all.deb

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(BIN)/henbackup: setup.cfg pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,build]'
	touch $@

venv: system-packages $(BIN)/henbackup

restic-trixie: system-packages
	scripts/fetch-restic-trixie $(RESTIC_TRIXIE)

promtool: system-packages
	scripts/fetch-promtool $(PROMTOOL)

clean:
	rm -rf $(VENV) .cache .demo build *.egg-info
