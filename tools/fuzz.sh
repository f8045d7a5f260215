#!/bin/sh
# tools/fuzz.sh FUZZER RUNS SECONDS: each parser target of diffusion-fuzz from its
# seed corpus (Tests/Fuzz/TARGET) for RUNS executions or SECONDS, whichever comes
# first, with leak detection. Found inputs go to out/fuzz/TARGET, crashes to
# out/fuzz/crashes/; a crash becomes a unit test by moving it into Tests/Fuzz/TARGET.
set -u
fuzzer=$1 runs=$2 seconds=$3
mkdir -p out/fuzz/crashes
failed=0
printf '%-12s %12s %10s %8s\n' target executions exec/s crashes
for target in job toml safetensors npy framing png checkpoint; do
    mkdir -p "out/fuzz/$target"
    log="out/fuzz/$target.log"
    "$fuzzer" "$target" -runs="$runs" -max_total_time="$seconds" -max_len=65536 -detect_leaks=1 \
        -print_final_stats=1 -artifact_prefix="out/fuzz/crashes/$target-" \
        "out/fuzz/$target" "Tests/Fuzz/$target" > "$log" 2>&1
    status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    crashes=$(ls out/fuzz/crashes | grep -c "^$target-")
    printf '%-12s %12s %10s %8s\n' "$target" "${executions:-?}" "${speed:-?}" "$crashes"
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then failed=1; tail -n 30 "$log"; fi
done
exit $failed
