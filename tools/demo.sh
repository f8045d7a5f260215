#!/bin/sh
# `make demo`: starts diffusiond with a local configuration in out/demo, submits
# a 10x8 grid of the default model (every class, 8 each, classifier-free
# guidance) through diffctl, drops a second job into the spool, shows the
# progress, prints where the PNGs are, and stops the daemon.
set -eu
bin=.build/release
demo=out/demo
rm -rf "$demo"
mkdir -p "$demo"
cat > "$demo/diffusiond.toml" <<TOML
[paths]
state = "state"
socket = "state/diffusiond.sock"
models = ["../../models"]
TOML
export DIFFUSIOND_SOCKET="$demo/state/diffusiond.sock"

"$bin/diffusiond" --config "$demo/diffusiond.toml" 2> "$demo/daemon.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
for _ in $(seq 200); do "$bin/diffctl" ping > /dev/null 2>&1 && break; sleep 0.05; done
"$bin/diffctl" ping

# A second job, dropped into the spool the documented way: write in tmp/, rename into new/.
printf '%s\n' '{"model": "fashion-mnist", "steps": 50, "count": 4, "seed": 7, "class": 7, "guidance": {"kind": "cfg"}}' \
  > "$demo/state/spool/tmp/sneakers.json"
mv "$demo/state/spool/tmp/sneakers.json" "$demo/state/spool/new/sneakers.json"

labels=""
for class in 0 1 2 3 4 5 6 7 8 9; do for _ in 1 2 3 4 5 6 7 8; do labels="$labels --class $class"; done; done
# shellcheck disable=SC2086
"$bin/diffctl" submit --model fashion-mnist --sampler ddim --steps 50 --count 80 --seed 2026 $labels \
  --guidance cfg --watch

# The spool job may still be rendering.
while [ "$("$bin/diffctl" list --state queued --state running | wc -l)" -gt 1 ]; do sleep 0.2; done
"$bin/diffctl" list

grid=$(ls -d "$PWD/$demo"/state/outputs/*/ | while read -r dir; do [ -e "$dir/image-0079.png" ] && echo "$dir"; done)
echo "grid: ${grid}grid.png (rows: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot)"
echo "images: ${grid}image-0000.png ... image-0079.png; every job's files: $PWD/$demo/state/outputs/"
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "diffusiond stopped (log: $demo/daemon.log)"
