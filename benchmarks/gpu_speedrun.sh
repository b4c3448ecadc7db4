#!/usr/bin/env bash
# The speedrun rows on a CUDA card (benchmarks/README.md S35-S37), in one call of the device tool:
#
#   mkdir -p gpu && cp ../shared/data/cifar10-jpeg-train.tar.gz gpu/     # *.tar.gz is git-ignored
#   run(command="bash benchmarks/gpu_speedrun.sh gpu/cifar10-jpeg-train.tar.gz $OUT 520", carry=["gpu"], timeout_s=580)
#   run(command="bash benchmarks/gpu_speedrun.sh gpu/cifar10-jpeg-train.tar.gz $OUT 200 s38", carry=["gpu"], timeout_s=240)
#
# The fourth argument picks the jobs: `rows` (default) for S35-S37 and issue 16's gpu_session.py,
# `s38` for S38's four 1-PFLOP variants at n=3 (second call, after S36 missed 92.0%).
# Jobs run in order of what they are for, each under its own time limit, none started past the
# deadline (seconds from the start): the device's time is short and one call must bring back
# whatever finished. Every job is the plain `train` CLI; its run directories (without checkpoints,
# predictions and reports) come back as OUT/runs.tar.gz, repacked after each job, so a call cut
# short still returns the jobs that ended. If the first job fails, nothing else is tried: the
# same failure would repeat, and the time is worth more to a corrected second call.
# Then, with what is left, issue 16's benchmarks/gpu_session.py (bench, `fast` preset, sync check).
set -u
archive=$1
out=$2
deadline=${3:-520}
phase=${4:-rows}
start=$(date +%s)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 RESNET_CIFAR_NO_PROGRESS=1
data=/tmp/rc-data
runs=/tmp/rc-runs
mkdir -p "$data" "$runs" "$out"
log=$out/driver.log

say() { echo "[$(($(date +%s) - start))s] $*" | tee -a "$log"; }
left() { echo $((deadline - ($(date +%s) - start))); }
pack() {
    tar -czf "$out/runs.tar.gz" -C "$runs" --exclude=checkpoints --exclude=tensorboard \
        --exclude=predictions.npz --exclude=report . 2>/dev/null
}

job() {   # NAME LIMIT_S TRAIN_ARGS...
    local name=$1 limit=$2 rc t0
    shift 2
    if [ "$(left)" -lt 40 ]; then say "skip $name: $(left)s left"; return 1; fi
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    say "start $name (limit ${limit}s): train $*"
    t0=$(date +%s)
    timeout -k 5 "$limit" python3 -m resnet_cifar train "$@" --device cuda --dataset folder \
        --data-dir "$data" --out "$runs/$name" > "$runs/$name.log" 2>&1
    rc=$?
    say "end $name: rc $rc after $(($(date +%s) - t0))s"
    grep -E "^(device|epoch|done|[0-9]+ seeds|warning|error)" "$runs/$name.log" | tail -60 >> "$log"
    [ $rc -ne 0 ] && tail -25 "$runs/$name.log" >> "$log"
    pack
    return $rc
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
    echo "cpu cores: $(nproc)"
} >> "$log" 2>&1
tar -xzf "$archive" -C "$data" && say "unpacked $(find "$data" -name '*.jpg' | wc -l) images"

if [ "$phase" = s38 ]; then
    # S38: airbench96's augmentation (4-px translation + 12-px cutout) on the wide and the deep net,
    # a wider net for fewer epochs (S26's), the deep net narrower for longer. All at <= 1.0 PFLOP.
    common=(--preset speedrun --seeds 0,1,2 --compile off --no-report)
    job wide125_aug 60 "${common[@]}" --width 1.25 --epochs 20 --cutout 12 --crop-padding 4 ||
        { say "first job failed: stopping"; exit 1; }
    job deep125_aug 60 "${common[@]}" --model speedrun_resnet_deep --width 1.25 --epochs 15 --cutout 12 --crop-padding 4
    job wide150 60 "${common[@]}" --width 1.5 --epochs 14
    job deep100 60 "${common[@]}" --model speedrun_resnet_deep --width 1 --epochs 22
    say "done"
    exit 0
fi

# S36: the 1-PFLOP target at n=3 (the only target of issue 17 not yet met), deep recipe first.
job deep125 200 --preset speedrun --model speedrun_resnet_deep --width 1.25 --epochs 15 --seeds 0,1,2 \
    --compile off --no-report || { say "first job failed: stopping"; exit 1; }
# S35: the preset on CUDA (bf16) with compile on, as it ran then (it now defaults to off, S37), 3 seeds in one process.
job preset 200 --preset speedrun --seeds 0,1,2 --compile on
# S37: the same seed 0 eager.
job preset_eager 60 --preset speedrun --seed 0 --compile off --no-report
# S36: the wide recipe at n=3.
job wide125 180 --preset speedrun --width 1.25 --epochs 20 --seeds 0,1,2 --compile off --no-report

if [ "$(left)" -ge 150 ]; then
    say "gpu_session.py with $(left)s"
    timeout -k 5 "$(left)" python3 benchmarks/gpu_session.py --data-dir "$data" --out-dir "$out" \
        --budget "$(($(left) - 20))" --train-timeout "$(($(left) - 90))" > "$runs/gpu_session.log" 2>&1
    say "gpu_session.py: rc $?"
    tail -30 "$runs/gpu_session.log" >> "$log"
    pack
else
    say "gpu_session.py skipped: $(left)s left"
fi
say "done"
