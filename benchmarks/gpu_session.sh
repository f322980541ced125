#!/usr/bin/env bash
# One GPU session in one command: the CUDA tests, the papers' reproductions on the GPU (a queue of
# small jobs, at most MAXJ at a time), then training speed on the GPU alone. Made for a lent GPU
# machine whose python3 holds torch (README, "GPU runs"); the queue stops starting jobs at the
# deadline and every job is cut there, so a fixed wall-clock budget always returns results.
#
# usage: benchmarks/gpu_session.sh OUT_DIR [DEADLINE_S=430] [EPOCHS=25] [SEEDS="0 1 2"]
#   DEEPMIX_DATA must point to a data cache holding mnist.npz and fashion-mnist.npz (and
#   classifiers/ for the sample-quality CNNs, trained there when missing).
#   MAXJ (default 4): jobs at a time. One GPU time-slices between processes: 2 ran at full
#   speed, 5 at about half of it, 20 at about 1/10 (H200, 2026-11-26).
#   PARTS (default "outliers classification sample_quality"): which tables to queue, in order;
#   "outliers_ref" queues the outlier table under the authors' protocol (outliers.py --protocol
#   reference: independent lower layers, their own epochs, 15-80; EPOCHS is not used there).
#   ARCHS (default "F E B A D G C"): the outlier architectures queued, in this order.
#   REF_EPOCHS (default: the protocol's own): epochs of the outliers_ref jobs, for a dry run.
#   SPEED (default 1): 0 skips the closing speed benchmark (90 s).
# Writes OUT_DIR/{session.log,pytest_cuda.txt,results.tgz}; results.tgz holds one JSON + Markdown
# per job, their logs, and the merged outlier table outliers_merged.{json,md}.
set -u
OUT_DIR=${1:?usage: gpu_session.sh OUT_DIR [DEADLINE_S] [EPOCHS] [SEEDS]}
DEADLINE=${2:-430}
EPOCHS=${3:-25}
SEEDS=${4:-0 1 2}
MAXJ=${MAXJ:-4}
PARTS=${PARTS:-outliers classification sample_quality}
ARCHS=${ARCHS:-F E B A D G C}
REF_EPOCHS=${REF_EPOCHS:-}
SPEED=${SPEED:-1}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
WORK=$(mktemp -d)
RES=$WORK/results
mkdir -p "$RES" "$OUT_DIR"
LOG=$OUT_DIR/session.log
START=$(date +%s)
log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - ($(date +%s) - START))); }

log "$(nvidia-smi -L 2>&1 | head -1); $($PY -c 'import torch,sys; print("torch", torch.__version__, "python", sys.version.split()[0], "cuda", torch.cuda.is_available())')"

# The queue: one line per job, "NAME CMD...", longest first so the tail packs well.
QUEUE=$WORK/queue
: >"$QUEUE"
for part in $PARTS; do
    case $part in
    outliers)  # Table I: one job per (architecture, data set, seed)
        for arch in $ARCHS; do
            for data in mnist fashion-mnist; do
                for seed in $SEEDS; do
                    echo "outliers_${arch}_${data}_s$seed benchmarks/reproduce/outliers.py --archs $arch --datasets $data --epochs $EPOCHS --seeds $seed --device $DEVICE --out $RES/outliers_${arch}_${data}_s$seed" >>"$QUEUE"
                done
            done
        done ;;
    outliers_ref)  # Table I as the authors' scripts ran it (80-epoch cells first)
        for arch in $ARCHS; do
            for data in fashion-mnist mnist; do
                for seed in $SEEDS; do
                    echo "outliers_ref_${arch}_${data}_s$seed benchmarks/reproduce/outliers.py --protocol reference --archs $arch --datasets $data --seeds $seed ${REF_EPOCHS:+--epochs $REF_EPOCHS} --device $DEVICE --out $RES/outliers_ref_${arch}_${data}_s$seed" >>"$QUEUE"
                done
            done
        done ;;
    classification)  # Table IV: B + C(10,2)
        for data in mnist fashion-mnist; do
            echo "classification_$data benchmarks/reproduce/classification.py --datasets $data --epochs $EPOCHS --seeds $SEEDS --threads 1 --device $DEVICE --out $RES/classification_$data" >>"$QUEUE"
        done ;;
    sample_quality)  # Table III: one model per class, batch 20
        for cell in "fashion-mnist E" "fashion-mnist F" "fashion-mnist B" "mnist F"; do
            set -- $cell
            echo "sample_quality_$1_$2 benchmarks/reproduce/sample_quality.py --datasets $1 --archs $2 --epochs $EPOCHS --threads 1 --device $DEVICE --out $RES/sample_quality_$1_$2" >>"$QUEUE"
        done ;;
    *) log "unknown part '$part'" ;;
    esac
done
log "$(wc -l <"$QUEUE") jobs queued, at most $MAXJ at a time (deadline ${DEADLINE} s, ${EPOCHS} epochs)"

run_queue() {
    local name cmd started=0
    while read -r name cmd; do
        while [ "$(jobs -rp | wc -l)" -ge "$MAXJ" ]; do wait -n; done
        [ "$(left)" -gt 30 ] || { log "deadline near: $name and later jobs not started"; break; }
        # shellcheck disable=SC2086
        timeout "$(left)" $PY $cmd >"$RES/$name.log" 2>&1 &
        started=$((started + 1))
    done <"$QUEUE"
    wait
    log "queue done: $started jobs started"
}
run_queue &
QPID=$!

# The CUDA tests run beside the queue: correctness does not depend on a quiet GPU.
timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$OUT_DIR/pytest_cuda.txt" 2>&1
log "CUDA tests: $(tail -1 "$OUT_DIR/pytest_cuda.txt")"
wait "$QPID"

if ls "$RES"/outliers_*.json >/dev/null 2>&1; then
    $PY benchmarks/reproduce/outliers.py --merge "$RES"/outliers_*.json --out "$RES/outliers_merged" >>"$LOG" 2>&1
fi
for f in "$RES"/outliers_merged.md "$RES"/classification_*.md "$RES"/sample_quality_*.md; do
    [ -f "$f" ] && { echo "== $(basename "$f")"; cat "$f"; } >>"$LOG"
done

# Speed on the GPU alone (no other job left).
[ "$SPEED" = 0 ] || timeout 90 $PY benchmarks/train_speed.py --archs 1L 2L-c B E F --device "$DEVICE" \
    --json "$RES/train_speed_$DEVICE.json" >>"$LOG" 2>&1
cp -r "${DEEPMIX_DATA:-$HOME/.cache/deepmix}/classifiers" "$RES/" 2>/dev/null
tar -czf "$OUT_DIR/results.tgz" -C "$WORK" results
log "done"
