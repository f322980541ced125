#!/usr/bin/env bash
# One GPU session in one command: the CUDA tests, the papers' reproductions run side by side on
# the GPU, then training speed on the GPU alone. Made for a lent GPU machine whose python3 holds
# torch (README, "GPU runs"); every part is cut at its own deadline so a fixed
# wall-clock budget always returns results.
#
# usage: benchmarks/gpu_session.sh OUT_DIR [DEADLINE_S=430] [EPOCHS=25]
#   DEEPMIX_DATA must point to a data cache holding mnist.npz and fashion-mnist.npz (and
#   classifiers/ for the sample-quality CNNs, trained there when missing).
# Writes OUT_DIR/{session.log,pytest_cuda.txt,results.tgz}; results.tgz holds every
# reproduction's JSON + Markdown table and its log.
set -u
OUT_DIR=${1:?usage: gpu_session.sh OUT_DIR [DEADLINE_S] [EPOCHS]}
DEADLINE=${2:-430}
EPOCHS=${3:-25}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
WORK=$(mktemp -d)
RES=$WORK/results
mkdir -p "$RES" "$OUT_DIR"
LOG=$OUT_DIR/session.log
log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

log "$(nvidia-smi -L 2>&1 | head -1); $($PY -c 'import torch,sys; print("torch", torch.__version__, "python", sys.version.split()[0], "cuda", torch.cuda.is_available())')"

pids=()
job() {  # job NAME CMD...: run in the background under the deadline, log to RES/NAME.log
    local name=$1; shift
    timeout "$DEADLINE" "$@" >"$RES/$name.log" 2>&1 &
    pids+=($!)
}
# Outlier detection (Table I): one process per cell, three seeds each.
for arch in A B C D E F G; do
    for data in mnist fashion-mnist; do
        job "outliers_${arch}_${data}" $PY benchmarks/reproduce/outliers.py --archs $arch \
            --datasets $data --epochs "$EPOCHS" --seeds 0 1 2 --device "$DEVICE" \
            --out "$RES/outliers_${arch}_${data}"
    done
done
# Classification (Table IV): B + C(10,2), three seeds per data set.
for data in mnist fashion-mnist; do
    job "classification_$data" $PY benchmarks/reproduce/classification.py --datasets $data \
        --epochs "$EPOCHS" --seeds 0 1 2 --threads 1 --device "$DEVICE" \
        --out "$RES/classification_$data"
done
# Sample quality (Table III): one model per class, 10 epochs at batch 20 (3000 steps each).
for cell in "fashion-mnist E" "fashion-mnist F" "fashion-mnist A B" "mnist E F"; do
    set -- $cell
    data=$1; shift
    job "sample_quality_${data}_$(echo "$@" | tr -d ' ')" $PY benchmarks/reproduce/sample_quality.py \
        --datasets $data --archs "$@" --epochs 10 --threads 1 --device "$DEVICE" \
        --out "$RES/sample_quality_${data}_$(echo "$@" | tr -d ' ')"
done
log "started ${#pids[@]} reproduction jobs (deadline ${DEADLINE} s, ${EPOCHS} epochs)"

# The CUDA tests run beside them: correctness does not depend on a quiet GPU.
timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$OUT_DIR/pytest_cuda.txt" 2>&1
log "CUDA tests: $(tail -1 "$OUT_DIR/pytest_cuda.txt")"

for p in "${pids[@]}"; do wait "$p"; done
log "reproduction jobs ended"
for f in "$RES"/*.md; do [ -f "$f" ] && { echo "== $(basename "$f")"; cat "$f"; } >>"$LOG"; done

# Speed on the GPU alone (no other job left).
timeout 90 $PY benchmarks/train_speed.py --archs 1L 2L-c B E F --device "$DEVICE" \
    --json "$RES/train_speed_cuda.json" >>"$LOG" 2>&1
cp -r "${DEEPMIX_DATA:-$HOME/.cache/deepmix}/classifiers" "$RES/" 2>/dev/null
tar -czf "$OUT_DIR/results.tgz" -C "$WORK" results
log "done"
