# The commands README.md gives a new user. Each installs what it needs first.
APT_PACKAGES := libuv1-dev libsqlite3-dev libpng-dev libopenblas-dev pkg-config
SWIFT_BUILD_FLAGS ?=
# A Python with torch and diffusers, for the PyTorch side of `make bench`
# (`make tools-python` makes one in tools/.venv).
BENCH_PYTHON ?= $(firstword $(wildcard tools/.venv/bin/python) $(DIFFUSION_BENCH_PYTHON))

.PHONY: all deps build test bench demo tools-python fixtures clean

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

# The main job: the default Fashion-MNIST model renders every class, 8 of each,
# with classifier-free guidance, into out/demo/ (one class a row of grid.png).
demo: build
	@mkdir -p out/demo
	@printf '%s\n' '{"model": "fashion-mnist", "sampler": "ddim", "steps": 50, "seed": 2026, "count": 80,' \
	  ' "class": [0,0,0,0,0,0,0,0, 1,1,1,1,1,1,1,1, 2,2,2,2,2,2,2,2, 3,3,3,3,3,3,3,3, 4,4,4,4,4,4,4,4,' \
	  '           5,5,5,5,5,5,5,5, 6,6,6,6,6,6,6,6, 7,7,7,7,7,7,7,7, 8,8,8,8,8,8,8,8, 9,9,9,9,9,9,9,9],' \
	  ' "guidance": {"kind": "cfg"}, "grid_columns": 8}' > out/demo/job.json
	.build/release/diffusiond render out/demo/job.json --output out/demo/images --models models
	@echo "grid: $(CURDIR)/out/demo/images/grid.png (rows: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot)"
	@echo "images: $(CURDIR)/out/demo/images/image-0000.png ... image-0079.png"

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
