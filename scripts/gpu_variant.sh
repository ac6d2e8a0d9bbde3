#!/usr/bin/env bash
# A build option measured against the checkout's build, on the same machine, with the same
# benchmark, the two builds taking turns (A B A B), as one device call's phase:
#   bash scripts/gpu_variant.sh build NAME VAR=VALUE...   # the variant, in /tmp/variant-NAME
#   bash scripts/gpu_variant.sh bench NAME                # after gpu_check.sh built the checkout
# `build` can run in the background while the GPU tests run (it uses the CPUs only).
# Logs: $LOG (default $OUT/variant-NAME): build.log, bench_{checkout,variant}-{1,2}.md.
#   e.g. bash scripts/gpu_variant.sh build minblocks4 ADAMW8_MIN_BLOCKS_8BIT=4
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-variant}
. "$(dirname "$0")/gpu_env.sh"
[ $# -ge 2 ] || { echo "usage: $0 build NAME VAR=VALUE... | bench NAME"; exit 2; }
what=$1 name=$2; shift 2
case $name in *[!A-Za-z0-9_-]*|'') echo "NAME: letters, digits, _ and - only"; exit 2 ;; esac
DIR=/tmp/variant-$name
LOG=${LOG:-$OUT/variant-$name}
mkdir -p "$LOG"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case $what in
  build)
    for kv in "$@"; do case $kv in ADAMW8_*=*) ;; *) echo "not a build option: $kv"; exit 2 ;; esac; done
    rm -rf "$DIR" && mkdir -p "$DIR"
    (cd "$ROOT" && cp -r adamw8 csrc benchmarks setup.py pyproject.toml README.md "$DIR/") && rm -f "$DIR"/adamw8/_C*.so
    echo "$*" > "$LOG/options.txt"
    (cd "$DIR" && env "$@" python3 setup.py build_ext --inplace) > "$LOG/build.log" 2>&1
    r=$?; echo "variant $name ($*): build exit $r at $(elapsed) s" | tee -a "$LOG/options.txt"; exit $r ;;
  bench)
    [ -f "$LOG/options.txt" ] && ls "$DIR"/adamw8/_C*.so >/dev/null 2>&1 || { echo "variant $name is not built"; exit 1; }
    B="python3 benchmarks/bench_step.py --sets llama-1.26b --dtypes fp32 bf16 --steps 10 --warmup 3 --no-bnb --only adamw8"
    for i in 1 2; do
      (cd "$ROOT" && timeout 90 $B > "$LOG/bench_checkout-$i.md" 2> "$LOG/bench_checkout-$i.err")
      # from its own folder: a script's folder and the working directory come before PYTHONPATH
      (cd "$DIR" && PYTHONPATH="$DIR:${PYTHONPATH:-}" timeout 90 $B > "$LOG/bench_variant-$i.md" 2> "$LOG/bench_variant-$i.err")
    done
    (cd "$DIR" && PYTHONPATH="$DIR:${PYTHONPATH:-}" python3 -c "import adamw8; print('variant imported from', adamw8.__file__)") \
      | tee -a "$LOG/options.txt"
    echo "variant $name: $(head -1 "$LOG/options.txt")"
    for f in "$LOG"/bench_checkout-1.md "$LOG"/bench_variant-1.md "$LOG"/bench_checkout-2.md "$LOG"/bench_variant-2.md; do
      echo "-- $(basename "$f" .md)"; grep -h "^###\|adamw8 AdamW\|torch AdamW" "$f"
    done ;;
  *) echo "usage: $0 build NAME VAR=VALUE... | bench NAME"; exit 2 ;;
esac
