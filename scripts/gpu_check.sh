#!/usr/bin/env bash
# The GPU check: what a CUDA machine consumes, feeds and trains at, in one run of under 8 minutes.
#
#   bash scripts/gpu_check.sh --prepare [DIR]   here, with a network: the wheels the GPU machine lacks, into DIR
#                                               (default .whl/, git-ignored: carry it along with the repo)
#   bash scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--people N] [--copy-to DIR]
#                                               on the GPU machine: installs nothing from the network, measures
#   bash scripts/gpu_check.sh --dry-run         print the plan and touch nothing
#
# What it measures, into --out (default results/gpu/: JSON + a short Markdown, named after the GPU, the
# cores and the data), each step as `feedbench tune` measures (scripts/gpu_check.py):
#   consume   resnet50 and resnet18 at 224x224, bf16, channels_last, batches 64-512
#   feed      each pipeline through DeviceFeeder to the GPU with 8 and 16 workers, on the generated sample
#             (--people 300: 2,100 images, so an epoch outlasts the read-ahead)
#   e2e       each pipeline's fastest feed point training each model in fit's loop, against the tuner's forecast
#   tune      `feedbench tune --device cuda` as a user runs it (recommendation.json into --out)
#   fit       `python -m training.fit --pipeline best` for 2 epochs: whether the tuner's prediction held
# Each step's failure is logged and the next step runs; the report says which steps failed, and the exit
# status is 1 if any did. The machine reaches no package registry: wheels come from --wheels (DALI's is too
# large to carry, so its rows fail with the install hint where it is not installed, and the rest runs).
# --copy-to DIR: the report, the log, the recommendation and fit's summary, flat, into DIR as well.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

MODE=run
WHEELS=.whl
OUT_DIR=results/gpu
PEOPLE=300
COPY_TO=
TOTAL_S=${GPU_CHECK_SECONDS:-450}  # every step together; the report is kept 30 s of it
TARGET_PYTHON=${GPU_CHECK_PYTHON_VERSION:-3.12}  # the GPU machine's python3 (--prepare fetches wheels for it)
# The GPU machine has torch, timm, OpenCV, scipy and the rest; these it lacks (albumentations and its needs,
# simplejpeg). --prepare fetches the versions installed here, the ones the tests ran with.
CARRIED=(albumentations albucore simsimd stringzilla pydantic pydantic-core annotated-types typing-inspection
         simplejpeg)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)
WHEELS_MAX_MIB=40  # the repo and the wheels travel together, within 64 MiB

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }

while (($#)); do
    case $1 in
        --dry-run) MODE=dry-run ;;
        --prepare) MODE=prepare; if [[ ${2:-} && $2 != --* ]]; then WHEELS=$2; shift; fi ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
        --people) PEOPLE=${2:?--people needs a number}; shift ;;
        --copy-to) COPY_TO=${2:?--copy-to needs a folder}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
[[ $PEOPLE =~ ^[1-9][0-9]*$ ]] || die "--people must be a positive whole number, got '$PEOPLE'"

# Here the project's .venv; the GPU machine has none (it is not carried), and its python3 holds torch.
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi

# ---------------------------------------------------------------- --prepare

prepare() {
    mkdir -p "$WHEELS" || die "cannot create $WHEELS"
    local platforms=() name version
    for name in "${PLATFORMS[@]}"; do platforms+=(--platform "$name"); done
    for name in "${CARRIED[@]}"; do
        version=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null) \
            || die "$name is not installed in $PY (make venv first): --prepare fetches the versions tested here"
        echo "gpu_check: fetching $name==$version for Python $TARGET_PYTHON"
        "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version "$TARGET_PYTHON" --implementation cp "${platforms[@]}" -d "$WHEELS" "$name==$version" \
            || die "could not fetch $name==$version (no network, or no wheel for Python $TARGET_PYTHON)"
    done
    local mib
    mib=$(du -sm "$WHEELS" | cut -f1)
    ((mib <= WHEELS_MAX_MIB)) || die "$WHEELS holds $mib MiB, more than $WHEELS_MAX_MIB MiB: it would not travel"
    echo "gpu_check: $(ls "$WHEELS"/*.whl | wc -l) wheels, $mib MiB, in $WHEELS"
}

if [[ $MODE == prepare ]]; then
    prepare
    exit 0
fi

# ---------------------------------------------------------------- the steps

DATA=${GPU_CHECK_DATA:-${TMPDIR:-/tmp}/feedbench-gpu-check/sample-p$PEOPLE}
RUN_DIR=${TMPDIR:-/tmp}/feedbench-gpu-check/fit-$$
SITE=${TMPDIR:-/tmp}/feedbench-gpu-check/site
DEADLINE=$((SECONDS + TOTAL_S - 30))

log() { printf '[gpu_check %3ds] %s\n' "$SECONDS" "$*" | tee -a "$LOG"; }

step() {  # NAME LIMIT_S COMMAND...: run it within its limit and what is left; log its status; never stop the script
    local name=$1 limit=$2
    shift 2
    if [[ $MODE == dry-run ]]; then
        printf '  %-8s at most %3ss: %s\n' "$name" "$limit" "$*"
        return 0
    fi
    local left=$((DEADLINE - SECONDS))
    if ((left < 15)); then
        log "step $name skipped: the time is spent"
        printf '%s\tskipped (no time left)\t0\n' "$name" >>"$STEPS"
        return 0
    fi
    ((limit > left)) && limit=$left
    log "step $name (at most ${limit}s): $*"
    local started=$SECONDS status rc
    # bash -c runs commands and this script's exported functions alike, under one timeout.
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${limit}s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    ((rc == 0)) || FAILED+=("$name")
    log "step $name: $status"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" >>"$STEPS"
}

show_gpu() {
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    "$PY" -c 'import torch, sys
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
}

install_carried_wheels() {
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "no wheels in $WHEELS (bash scripts/gpu_check.sh --prepare, here): pipelines that need them fail"
        return 0
    fi
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "$WHEELS"/*.whl
}

fit_with_recommendation() {  # two epochs with the recommendation; fit's summary says whether the prediction held
    if [[ ! -f $OUT_DIR/recommendation.json ]]; then
        echo "no $OUT_DIR/recommendation.json: the tune step wrote none"
        return 1
    fi
    "$PY" -m training.fit --pipeline best --recommendation "$OUT_DIR/recommendation.json" --data "$DATA" \
        --epochs 2 --device cuda --out "$RUN_DIR" && cp "$RUN_DIR/summary.json" "$OUT_DIR/fit-summary.json"
}

report_name() {
    local gpu
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr 'A-Z' 'a-z' \
          | sed -e 's/nvidia//' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
    echo "gpu-check-${gpu:-nogpu}-$(nproc)c-p$PEOPLE"
}

copy_results() {  # the reports, flat, into --copy-to (a folder that comes back from the machine)
    mkdir -p "$COPY_TO" && cp "$OUT_DIR/$NAME.json" "$OUT_DIR/$NAME.md" "$LOG" "$COPY_TO/" \
        && cp "$OUT_DIR"/recommendation.json "$OUT_DIR"/fit-summary.json "$COPY_TO/" 2>/dev/null
    return 0
}

FAILED=()
if [[ $MODE == dry-run ]]; then
    echo "gpu_check plan (python: $PY; results into $OUT_DIR; every step together at most ${TOTAL_S}s):"
else
    mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
    # What an earlier run left must not stand in for this one's (fit would train with a stale recommendation).
    rm -rf "$OUT_DIR/parts" "$OUT_DIR/recommendation.json" "$OUT_DIR/fit-summary.json"
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export PY WHEELS SITE OUT_DIR RUN_DIR DATA
    export -f show_gpu install_carried_wheels fit_with_recommendation
fi
NAME=$(report_name)  # the conditions in the names: the GPU, the cores, the data
LOG=$OUT_DIR/$NAME.log
STEPS=$OUT_DIR/$NAME-steps.tsv
if [[ $MODE == run ]]; then : >"$LOG"; : >"$STEPS"; fi

step gpu 30 show_gpu
step wheels 60 install_carried_wheels
step data 150 "$PY" -m bench.cli data sample "$DATA" --people "$PEOPLE"
step consume 100 "$PY" scripts/gpu_check.py consume --out "$OUT_DIR"
step feed 120 "$PY" scripts/gpu_check.py feed --out "$OUT_DIR" --data "$DATA"
step e2e 90 "$PY" scripts/gpu_check.py e2e --out "$OUT_DIR" --data "$DATA"
step tune 150 "$PY" -m bench.cli tune --device cuda --data "$DATA" --workers-max 16 --budget-s 90 --out "$OUT_DIR"
step fit 100 fit_with_recommendation
DEADLINE=$((DEADLINE + 30))  # the report's own share
step report 30 "$PY" scripts/gpu_check.py report --out "$OUT_DIR" --steps "$STEPS" --name "$NAME"

if [[ $MODE == dry-run ]]; then
    echo "report: $OUT_DIR/$NAME.json and .md; log $LOG${COPY_TO:+; copied into $COPY_TO}"
    exit 0
fi
[[ -n $COPY_TO ]] && copy_results
if ((${#FAILED[@]})); then
    log "done, with failed steps: ${FAILED[*]} (see $LOG); report $OUT_DIR/$NAME.md"
    exit 1
fi
log "done: $OUT_DIR/$NAME.md"
