#!/usr/bin/env bash
# The CPU target of the "Speed" issue: ResNet-18, batch 128, our training images/s >= 2.5x the
# tutorial baseline's, measured by `resnet-cifar bench` (both pipelines in one run, interleaved
# windows, medians). Prints one JSON line per repeat and, at the end, the median over repeats.
#
#   bash benchmarks/cpu_bench.sh                 # 3 repeats, defaults below
#   REPEATS=1 STEPS=6 bash benchmarks/cpu_bench.sh --model resnet20
#
# The machine may be shared: every line carries the load average before and after; compare runs
# only at similar load, and prefer the median over repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REPEATS=${REPEATS:-3}
out=$(mktemp)
for i in $(seq "$REPEATS"); do
    "$PY" -m resnet_cifar bench --device cpu --model resnet18 --batch-size 128 \
        --steps "${STEPS:-10}" --warmup "${WARMUP:-2}" --windows "${WINDOWS:-5}" --json "$@" | tee -a "$out"
done
"$PY" - "$out" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(k):
    vals = [r[k] for r in rows if r.get(k) is not None]
    return round(statistics.median(vals), 2) if vals else None
print(json.dumps({"repeats": len(rows), "train_img_s": med("train_img_s"),
                  "baseline_train_img_s": med("baseline_train_img_s"), "ratio": med("ratio"),
                  "eval_img_s": med("eval_img_s"), "baseline_eval_img_s": med("baseline_eval_img_s"),
                  "loadavg": [r["loadavg_before"] for r in rows]}))
PYEOF
rm -f "$out"
