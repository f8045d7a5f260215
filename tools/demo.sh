#!/bin/sh
# `make demo`: starts diffusiond with a local configuration in out/demo, submits
# a 10x8 grid of the default model (every class, 8 each, classifier-free
# guidance) and a prompt grid of the text-to-image model through diffctl, drops
# another job into the spool, shows the progress, prints where the PNGs are, and
# stops the daemon.
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

# The text-to-image model: a grid of ten prompts (a row each, four seeds), one
# job file with a prompt per image, guided by CFG at the model's recommended scale.
prompts=""
for prompt in "a photo of a t-shirt" "a pair of jeans" "a black and white picture of a sweater" "a dress" "a coat" \
  "sandals" "a shirt" "running shoes" "a handbag" "an image of a boot"; do
  for _ in 1 2 3 4; do prompts="$prompts\"$prompt\", "; done
done
printf '{"model": "fashion-mnist-text", "steps": 30, "count": 40, "seed": 11, "grid_columns": 4, "prompt": [%s]}\n' \
  "${prompts%, }" > "$demo/prompts.json"
"$bin/diffctl" submit "$demo/prompts.json" --watch

# The spool job may still be rendering.
while [ "$("$bin/diffctl" list --state queued --state running | wc -l)" -gt 1 ]; do sleep 0.2; done
"$bin/diffctl" list

grid=$(ls -d "$PWD/$demo"/state/outputs/*/ | while read -r dir; do [ -e "$dir/image-0079.png" ] && echo "$dir"; done)
echo "grid: ${grid}grid.png (rows: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot)"
echo "images: ${grid}image-0000.png ... image-0079.png; every job's files: $PWD/$demo/state/outputs/"
text=$(ls -d "$PWD/$demo"/state/outputs/*/ | while read -r dir; do grep -q '"prompt"' "$dir/job.json" 2>/dev/null && echo "$dir"; done)
echo "prompt grid: ${text}grid.png (rows: t-shirt, jeans, sweater, dress, coat, sandals, shirt, running shoes, handbag, boot)"
kill -TERM $daemon
wait $daemon
trap - EXIT
echo "diffusiond stopped (log: $demo/daemon.log)"
