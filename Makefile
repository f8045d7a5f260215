# The commands README.md gives a new user. Each installs what it needs first.
APT_PACKAGES := libuv1-dev libsqlite3-dev libpng-dev libopenblas-dev pkg-config
SWIFT_BUILD_FLAGS ?=
# A Python with torch and diffusers, for the PyTorch side of `make bench`
# (`make tools-python` makes one in tools/.venv).
BENCH_PYTHON ?= $(firstword $(wildcard tools/.venv/bin/python) $(DIFFUSION_BENCH_PYTHON))

.PHONY: all deps build test bench tools-python fixtures clean

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

bench: build
	.build/release/diffusion-bench $(if $(BENCH_PYTHON),--python $(BENCH_PYTHON))

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
