#!/usr/bin/env bash
# Create or update the project virtualenv in .venv/ (idempotent).
#
#   1. system headers pillow-simd needs (libjpeg-dev, zlib1g-dev) via apt when root
#   2. python -m venv .venv            (PYTHON=... to choose the interpreter)
#   3. torch/torchvision pinned, then `pip install -e '.[test,ray,lightning,wandb,hpo]'`
#   4. Pillow -> pillow-simd swap (built from source, AVX2 when the CPU has it);
#      it runs after every pip step, since any resolve that pulls Pillow undoes it
#   5. a short summary
#
# Normally run through `make venv` (also `make test` / `make bench`), which reruns
# it only when pyproject.toml or this script changed.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=".venv"
VPY="$VENV/bin/python"
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
STAMP="$VENV/.feedbench-stamp"
WHEELHOUSE_ROOT="$VENV/.pillow-simd-wheels"

# No pip cache: the venv alone is ~7 GB (torch's CUDA build), and a cache of the downloads would
# double what the extras take on a small disk.
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive

if [[ -t 2 ]]; then B=$'\e[1m' Y=$'\e[1;33m' R=$'\e[1;31m' N=$'\e[0m'; else B= Y= R= N=; fi
log()  { printf '%s[bootstrap]%s %s\n' "$B" "$N" "$*" >&2; }
warn() { printf '%s[bootstrap] WARNING:%s %s\n' "$Y" "$N" "$*" >&2; }
die()  { printf '%s[bootstrap] ERROR:%s %s\n' "$R" "$N" "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- 1. system packages
have_header() {  # name -> found in a standard include dir?
    local h
    for h in /usr/include/"$1" /usr/include/*/"$1" /usr/local/include/"$1"; do
        [[ -e $h ]] && return 0
    done
    return 1
}

command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON=...)"

missing_pkgs=()
have_header jpeglib.h || missing_pkgs+=(libjpeg-dev)
have_header zlib.h    || missing_pkgs+=(zlib1g-dev)
command -v cc >/dev/null 2>&1 || missing_pkgs+=(gcc)
py_include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [[ ! -e $py_include/Python.h ]]; then
    # Only Debian's own python gets its headers from python3-dev.
    case "$(command -v "$PYTHON")" in
        /usr/bin/*) missing_pkgs+=(python3-dev) ;;
        *) die "Python.h not found in $py_include: install the development headers for $PYTHON" ;;
    esac
fi

if ((${#missing_pkgs[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing system packages needed to build pillow-simd: ${missing_pkgs[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >&2
        have_header jpeglib.h && have_header zlib.h \
            || die "installed ${missing_pkgs[*]} but jpeglib.h / zlib.h are still not found"
    else
        die "missing system packages needed to build pillow-simd: ${missing_pkgs[*]}
    install them first, e.g.:  sudo apt-get install -y ${missing_pkgs[*]}"
    fi
else
    log "system build deps present (libjpeg, zlib headers, cc, Python.h)"
fi

# ---------------------------------------------------------------- 2. virtualenv
# A full disk fails pip late and obscurely ("OSError: [Errno 28]" mid-install): say so first.
NEED_GB=9
if [[ ! -e $STAMP ]]; then
    free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
    ((free_gb >= NEED_GB)) || warn "only ${free_gb} GB free here; a new $VENV needs about ${NEED_GB} GB (torch's CUDA build is ~5.5 GB)"
fi
if [[ -x $VPY ]] && "$VPY" -c 'import sys' >/dev/null 2>&1; then
    log "using existing $VENV ($("$VPY" -V 2>&1))"
else
    [[ -e $VENV ]] && { warn "$VENV exists but is broken; recreating it"; rm -rf "$VENV"; }
    log "creating $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    "$PYTHON" -m venv "$VENV" \
        || die "'$PYTHON -m venv' failed (on Debian/Ubuntu system python: apt-get install python3-venv)"
    log "upgrading pip"
    "$VPY" -m pip install -q --upgrade pip >&2
fi
pip_() { "$VPY" -m pip "$@"; }

# ---------------------------------------------------------------- 4. pillow-simd swap
pil_providers() {  # prints e.g. "pillow-simd" or "pillow" or "pillow,pillow-simd" or ""
    "$VPY" - <<'PY'
import importlib.metadata as m
print(",".join(sorted({d.lower() for d in m.packages_distributions().get("PIL", [])})))
PY
}

swap_pillow() {
    local providers
    providers="$(pil_providers)"
    if [[ $providers == pillow-simd ]] && "$VPY" -c 'import PIL, PIL.Image' >/dev/null 2>&1; then
        log "pillow-simd already provides PIL; no swap needed"
        return 0
    fi
    log "PIL currently provided by: ${providers:-nothing}; swapping in pillow-simd"

    local cc="cc" flavour="plain"
    if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
        cc="cc -mavx2"; flavour="avx2"
    else
        warn "CPU has no AVX2 (or /proc/cpuinfo unreadable): building pillow-simd without -mavx2"
    fi

    # Build once per flavour into a wheelhouse inside .venv, so later re-swaps (after a
    # pip step reinstalls Pillow) take seconds instead of a full source build.
    local wheelhouse="$WHEELHOUSE_ROOT/$flavour"
    if ! compgen -G "$wheelhouse/pillow_simd-*.whl" >/dev/null; then
        log "building pillow-simd from source with CC=\"$cc\" (takes a minute or two)"
        mkdir -p "$wheelhouse"
        CC="$cc" pip_ wheel -q --no-cache-dir --no-deps --no-binary pillow-simd \
            -w "$wheelhouse" pillow-simd >&2 \
            || die "pillow-simd build failed (needs libjpeg-dev, zlib1g-dev, a C compiler)"
    else
        log "reusing pillow-simd wheel from $wheelhouse"
    fi

    # Pillow and pillow-simd own the same files: remove both, then install the SIMD one.
    local d
    for d in pillow pillow-simd; do
        if [[ ,$providers, == *,$d,* ]] || pip_ show -q "$d" >/dev/null 2>&1; then
            pip_ uninstall -y -q "$d" >&2
        fi
    done
    rm -rf "$VENV"/lib/python*/site-packages/PIL  # leftovers of a half-removed copy
    pip_ install -q --no-deps --no-index --force-reinstall "$wheelhouse"/pillow_simd-*.whl >&2

    providers="$(pil_providers)"
    [[ $providers == pillow-simd ]] || die "after the swap PIL is provided by '${providers}', expected pillow-simd"
    "$VPY" -c 'import PIL, PIL.Image' || die "pillow-simd installed but 'import PIL.Image' fails"
    printf '%s\n' "CC=$cc" > "$wheelhouse/BUILD_FLAGS"
    log "swap done: $("$VPY" -c 'import PIL; print("PIL", PIL.__version__, "from", PIL.__file__)')"
}

# ---------------------------------------------------------------- 3. packages
log "installing $TORCH_PIN $TORCHVISION_PIN"
pip_ install -q "$TORCH_PIN" "$TORCHVISION_PIN" >&2
swap_pillow

# The ray, lightning, wandb and hpo extras too: the suite runs their tests (tests/test_ray.py,
# test_lightning.py, test_wandb.py, test_hpo.py), which skip without them.
log "installing feedbench (editable) with the test, ray, lightning, wandb and hpo extras"
pip_ install -q -e '.[test,ray,lightning,wandb,hpo]' >&2
swap_pillow

# ---------------------------------------------------------------- 5. summary
"$VPY" - >&2 <<'PY'
import importlib.metadata as m, sys
def ver(d):
    try: return m.version(d)
    except m.PackageNotFoundError: return "not installed"
import torch, PIL, PIL.features as f
dali = next((ver(d) for d in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110")
             if ver(d) != "not installed"), "not installed")
print("[bootstrap] summary")
print(f"  python      {sys.version.split()[0]} ({sys.executable})")
print(f"  torch       {torch.__version__} (cuda build {torch.version.cuda}, cuda available: {torch.cuda.is_available()})")
print(f"  PIL         {PIL.__version__} from {','.join(m.packages_distributions()['PIL'])}, "
      f"libjpeg-turbo: {f.check_feature('libjpeg_turbo')}, jpeg {f.version('jpg')}")
print(f"  DALI        {dali}")
PY
for f in "$WHEELHOUSE_ROOT"/*/BUILD_FLAGS; do
    if [[ -e $f ]]; then printf '  pillow-simd built with %s\n' "$(cat "$f")" >&2; fi
done

touch "$STAMP"
log "environment ready: $VENV"
