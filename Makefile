# The commands README.md gives a new user. Each installs what it needs first.
APT_PACKAGES := libuv1-dev libsqlite3-dev libpq-dev libpng-dev libopenblas-dev pkg-config groff-base postgresql iproute2
SWIFT_BUILD_FLAGS ?=
# A Python with torch and diffusers, for the PyTorch side of `make bench`
# (`make tools-python` makes one in tools/.venv).
BENCH_PYTHON ?= $(firstword $(wildcard tools/.venv/bin/python) $(DIFFUSION_BENCH_PYTHON))

.PHONY: all deps build test test-postgres test-cluster bench soak fuzz sanitize demo install stage tools-python fixtures clean

all: build

# Installs the Debian packages the C targets link against, when any is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

build: deps
	swift build -c release $(SWIFT_BUILD_FLAGS)

test: deps
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	swift test --skip-build $(SWIFT_BUILD_FLAGS)

# The daemon's test suite again with every test daemon's queue in PostgreSQL
# (a private server the tests start); tests that read the SQLite files are skipped.
test-postgres: deps
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	DIFFUSIOND_TEST_QUEUE=postgresql swift test --skip-build --filter DiffusionDaemonTests $(SWIFT_BUILD_FLAGS)

# The shared queue's fault test alone (docs/cluster.md): 3 hosts in network
# namespaces, 300 jobs, 10 kill -9, a server restart, a partition; about 70 s a run
# (make test runs it too, beside the rest).
test-cluster: deps
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	swift test --skip-build --filter FaultTests $(SWIFT_BUILD_FLAGS)

# The main job: diffusiond with a local configuration in out/demo renders the
# default Fashion-MNIST model's every class, 8 of each (one class a row of
# grid.png), submitted with diffctl, plus a job dropped in the spool.
demo: build
	sh tools/demo.sh

bench: build
	.build/release/diffusion-bench $(if $(BENCH_PYTHON),--python $(BENCH_PYTHON))

# kill -9 the daemon 50 times while it renders 20 jobs; reports what it found.
soak: build
	.build/release/diffusion-bench --soak 50

# Every parser a user reaches (job JSON, TOML, safetensors, npy, socket framing,
# PNG, checkpoints) under libFuzzer with AddressSanitizer, each from its seed
# corpus in Tests/Fuzz for FUZZ_RUNS executions or FUZZ_SECONDS, whichever
# comes first; prints executions and crashes per target (tools/fuzz.sh).
FUZZ_RUNS ?= 1000000
FUZZ_SECONDS ?= 300
FUZZ_RUNTIME = $(firstword $(wildcard $(dir $(realpath $(shell command -v swiftc)))../lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a))
fuzz: deps
	@test -n "$(FUZZ_RUNTIME)" || { echo "no libclang_rt.fuzzer_no_main in the Swift toolchain"; exit 1; }
	swift build -c release --product diffusion-fuzz --scratch-path .build-fuzz --sanitize=address \
	  -Xswiftc -sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table -Xcc -fsanitize=fuzzer-no-link \
	  -Xswiftc -use-ld=lld -Xlinker -u -Xlinker LLVMFuzzerRunDriver \
	  -Xlinker --export-dynamic-symbol=LLVMFuzzerRunDriver -Xlinker $(FUZZ_RUNTIME) -Xlinker -lstdc++
	sh tools/fuzz.sh .build-fuzz/release/diffusion-fuzz $(FUZZ_RUNS) $(FUZZ_SECONDS)

# The daemon's test suite (real processes) under ThreadSanitizer, then under
# AddressSanitizer, each in a build folder of its own. The runtimes are linked
# into the executables; --export-dynamic lets the plugins they dlopen use them.
# Deadlines stretch tenfold; ASan's quarantine is kept small so that the memory
# bounds the tests measure are the daemon's, not the sanitizer's. The fault test
# (300 jobs on 3 hosts) is left to make test-cluster: tenfold, it outlasts the rest.
sanitize: deps
	for s in thread address; do \
	  swift build --build-tests --sanitize=$$s --scratch-path .build-$$s -Xlinker --export-dynamic && \
	  DIFFUSIOND_TEST_TIME_SCALE=10 LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp ASAN_OPTIONS=quarantine_size_mb=8 \
	    swift test --skip-build --sanitize=$$s --scratch-path .build-$$s \
	    --filter DiffusionDaemonTests --skip FaultTests || exit 1; done

# Binaries, plugins, the default model, the configuration (kept if present), the
# systemd units, sysusers.d and tmpfiles.d entries, the plugin header with its
# pkg-config file, man pages and shell completions, under PREFIX (paths in the
# units follow it); then the service's user. DESTDIR stages a package: `make
# stage DESTDIR=... BIN=DIR` does the copying alone, from binaries in BIN.
PREFIX ?= /usr/local
BIN ?= .build/release
VERSION := $(shell sed -n 's/.*programVersion = "\(.*\)"/\1/p' Sources/DiffusionRender/RenderOutput.swift)
install: build
	$(MAKE) stage
	@if [ -z "$(DESTDIR)" ] && ! getent passwd diffusiond > /dev/null; then \
	  if command -v systemd-sysusers > /dev/null; then systemd-sysusers $(PREFIX)/lib/sysusers.d/diffusiond.conf; \
	  else useradd --system --user-group --home-dir /var/lib/diffusiond --no-create-home --shell /usr/sbin/nologin diffusiond; fi; fi
	@echo "installed; start with: systemctl daemon-reload && systemctl enable --now diffusiond.socket"

stage:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/diffusiond/plugins \
	  $(DESTDIR)$(PREFIX)/share/diffusiond/models $(DESTDIR)$(PREFIX)/share/doc/diffusiond/examples \
	  $(DESTDIR)/etc/diffusiond $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/lib/sysusers.d \
	  $(DESTDIR)$(PREFIX)/lib/tmpfiles.d $(DESTDIR)$(PREFIX)/include/diffusiond $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man8 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 755 $(BIN)/diffusiond $(BIN)/diffctl $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BIN)/libdiffusion-plugin-*.so $(DESTDIR)$(PREFIX)/lib/diffusiond/plugins/
	for model in fashion-mnist fashion-mnist-text fashion-mnist-14 fashion-mnist-sr; do \
	  rm -rf $(DESTDIR)$(PREFIX)/share/diffusiond/models/$$model; \
	  cp -R models/$$model $(DESTDIR)$(PREFIX)/share/diffusiond/models/; done
	install -m 644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/diffusiond/
	install -m 644 docs/examples/*.json $(DESTDIR)$(PREFIX)/share/doc/diffusiond/examples/
	[ -e $(DESTDIR)/etc/diffusiond/diffusiond.toml ] || install -m 644 etc/diffusiond.toml $(DESTDIR)/etc/diffusiond/
	for unit in diffusiond.service diffusiond.socket; do \
	  sed 's|/usr/local|$(PREFIX)|g' systemd/$$unit > $(DESTDIR)$(PREFIX)/lib/systemd/system/$$unit; done
	install -m 644 etc/sysusers.d/diffusiond.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/
	install -m 644 etc/tmpfiles.d/diffusiond.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/
	install -m 644 Sources/DiffusionPluginABI/diffusion_plugin.h $(DESTDIR)$(PREFIX)/include/diffusiond/
	sed 's|@PREFIX@|$(PREFIX)|; s|@VERSION@|$(VERSION)|' etc/diffusion-plugin.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/diffusion-plugin.pc
	python3 tools/man.py command $(BIN)/diffctl 1 > $(DESTDIR)$(PREFIX)/share/man/man1/diffctl.1
	python3 tools/man.py command $(BIN)/diffusiond 8 > $(DESTDIR)$(PREFIX)/share/man/man8/diffusiond.8
	python3 tools/man.py toml etc/diffusiond.toml diffusiond.toml 5 "diffusiond's configuration" \
	  > $(DESTDIR)$(PREFIX)/share/man/man5/diffusiond.toml.5
	python3 tools/man.py markdown docs/jobs.md diffusiond-jobs 5 "diffusiond's job files" \
	  > $(DESTDIR)$(PREFIX)/share/man/man5/diffusiond-jobs.5
	for command in diffusiond diffctl; do \
	  $(BIN)/$$command --generate-completion-script bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$command && \
	  $(BIN)/$$command --generate-completion-script zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_$$command && \
	  $(BIN)/$$command --generate-completion-script fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$command.fish || exit 1; done

# The tool Python: torch and diffusers from PyPI, for benchmarks and fixtures only.
tools-python:
	python3 -m venv tools/.venv
	tools/.venv/bin/pip install --quiet torch diffusers safetensors numpy

# Regenerates the diffusers reference fixtures under Tests/ (needs tools-python).
fixtures:
	tools/.venv/bin/python tools/reference/make_fixtures.py
	tools/.venv/bin/python tools/reference/make_sampler_fixtures.py
	PYTHONPATH=tools/reference tools/.venv/bin/python tools/reference/make_render_fixtures.py
	tools/.venv/bin/python tools/reference/make_latent_fixtures.py
	PYTHONPATH=tools/reference tools/.venv/bin/python tools/reference/make_cascade_fixtures.py

clean:
	rm -rf .build
