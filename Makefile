# The commands README.md gives a new user. Each installs what it needs first.
APT_PACKAGES := libuv1-dev libsqlite3-dev libpng-dev libopenblas-dev pkg-config
SWIFT_BUILD_FLAGS ?=
# A Python with torch and diffusers, for the PyTorch side of `make bench`
# (`make tools-python` makes one in tools/.venv).
BENCH_PYTHON ?= $(firstword $(wildcard tools/.venv/bin/python) $(DIFFUSION_BENCH_PYTHON))

.PHONY: all deps build test bench soak fuzz sanitize demo install tools-python fixtures clean

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
sanitize: deps
	for s in thread address; do \
	  swift build --build-tests --sanitize=$$s --scratch-path .build-$$s -Xlinker --export-dynamic && \
	  swift test --skip-build --sanitize=$$s --scratch-path .build-$$s --filter DiffusionDaemonTests || exit 1; done

# Binaries, plugins, the default model, the configuration (kept if present) and
# the systemd units, under PREFIX (paths in the units follow it), and the
# service's user. DESTDIR stages a package.
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/diffusiond/plugins \
	  $(DESTDIR)$(PREFIX)/share/diffusiond/models $(DESTDIR)$(PREFIX)/share/doc/diffusiond \
	  $(DESTDIR)/etc/diffusiond $(DESTDIR)/etc/systemd/system
	install -m 755 .build/release/diffusiond .build/release/diffctl $(DESTDIR)$(PREFIX)/bin/
	install -m 644 .build/release/libdiffusion-plugin-*.so $(DESTDIR)$(PREFIX)/lib/diffusiond/plugins/
	rm -rf $(DESTDIR)$(PREFIX)/share/diffusiond/models/fashion-mnist
	cp -R models/fashion-mnist $(DESTDIR)$(PREFIX)/share/diffusiond/models/
	install -m 644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/diffusiond/
	[ -e $(DESTDIR)/etc/diffusiond/diffusiond.toml ] || install -m 644 etc/diffusiond.toml $(DESTDIR)/etc/diffusiond/
	for unit in diffusiond.service diffusiond.socket; do \
	  sed 's|/usr/local|$(PREFIX)|g' systemd/$$unit > $(DESTDIR)/etc/systemd/system/$$unit; done
	@if [ -z "$(DESTDIR)" ] && ! getent passwd diffusiond > /dev/null; then \
	  useradd --system --home-dir /var/lib/diffusiond --no-create-home --shell /usr/sbin/nologin diffusiond; fi
	@echo "installed; start with: systemctl daemon-reload && systemctl enable --now diffusiond.socket"

# The tool Python: torch and diffusers from PyPI, for benchmarks and fixtures only.
tools-python:
	python3 -m venv tools/.venv
	tools/.venv/bin/pip install --quiet torch diffusers safetensors numpy

# Regenerates the diffusers reference fixtures under Tests/ (needs tools-python).
fixtures:
	tools/.venv/bin/python tools/reference/make_fixtures.py
	tools/.venv/bin/python tools/reference/make_sampler_fixtures.py
	PYTHONPATH=tools/reference tools/.venv/bin/python tools/reference/make_render_fixtures.py

clean:
	rm -rf .build
