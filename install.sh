#!/usr/bin/env bash
# Install the lab into a virtual environment with Python >= 3.12 (what requirements.txt is pinned for).
#
#   bash install.sh [--venv DIR] [--keep-jax] [--python PATH] [--which-python]
#   bash install.sh --download DIR [--for-python 3.12] [--for-platform manylinux_2_28_x86_64] [--extra cuda13]
#   bash install.sh --offline DIR [--venv DIR] [--keep-jax]
#
# The interpreter: --python or $PYTHON when given; else the first of python3, python3.12, python3.13,
# python3.14 on PATH that is 3.12 or newer; else the oldest 3.12+ under pyenv's versions
# ($PYENV_ROOT, `pyenv root`, or ~/.pyenv). None found: one line saying what to install, exit 2.
# --venv: where the environment goes (default .venv beside this script); an existing one is reused
#   when its Python is 3.12+, and refused with one line when it is older.
# --keep-jax: for machines whose JAX is preinstalled (GPU images ship jax 0.11.2 with its CUDA
#   plugin): the environment sees the interpreter's site-packages, and everything but jax/jaxlib is
#   installed with the installed JAX held at its version (a pip constraint), so it is not replaced.
# --which-python: print the interpreter it would use, and stop.
# Air-gapped machines (compute nodes without internet): on a machine with internet, --download fills
#   DIR with the wheels of requirements.txt (binary only) for --for-python (default 3.12) and
#   --for-platform (default manylinux_2_28_x86_64: glibc 2.28, taking every older manylinux tag), plus
#   jax[EXTRA] when --extra is given (cuda13 for GPUs); copy DIR over, then --offline DIR installs
#   from it alone (pip --no-index), with --keep-jax as above to keep an image's JAX.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
keep_jax=0
which_only=0
download=""
offline=""
for_python=3.12
for_platform=manylinux_2_28_x86_64
extra=""
python="${PYTHON:-}"
minimum_minor=12

fail() { echo "error: $*" >&2; exit 2; }
# whether option $1 has a value after it (not another option)
needs_value() { [ $# -ge 2 ] && [[ "$2" != --* ]]; }

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) needs_value "$@" || fail "--venv needs a directory"; venv="$2"; shift 2 ;;
    --python) needs_value "$@" || fail "--python needs an interpreter"; python="$2"; shift 2 ;;
    --keep-jax) keep_jax=1; shift ;;
    --which-python) which_only=1; shift ;;
    --download) needs_value "$@" || fail "--download needs a directory"; download="$2"; shift 2 ;;
    --offline) needs_value "$@" || fail "--offline needs the directory --download filled"; offline="$2"; shift 2 ;;
    --for-python) needs_value "$@" || fail "--for-python needs a version such as 3.12"; for_python="$2"; shift 2 ;;
    --for-platform) needs_value "$@" || fail "--for-platform needs a pip platform tag"; for_platform="$2"; shift 2 ;;
    --extra) needs_value "$@" || fail "--extra needs a jax extra such as cuda13 or tpu"; extra="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) fail "unknown argument '$1' (see bash install.sh --help)" ;;
  esac
done

# "3.12" when the interpreter runs and is 3.12 or newer; nothing otherwise.
recent_enough() {
  "$1" -c "import sys; v = sys.version_info; print(f'{v[0]}.{v[1]}') if v >= (3, $minimum_minor) else None" \
    2>/dev/null | grep -E '^3\.[0-9]+$' || true
}

find_python() {
  local candidate root
  for candidate in python3 python3.12 python3.13 python3.14; do
    if command -v "$candidate" >/dev/null && [ -n "$(recent_enough "$(command -v "$candidate")")" ]; then
      command -v "$candidate"; return
    fi
  done
  root="${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}"
  for candidate in $(ls -d "$root"/versions/3.* 2>/dev/null | sort -V); do
    if [ -x "$candidate/bin/python3" ] && [ -n "$(recent_enough "$candidate/bin/python3")" ]; then
      echo "$candidate/bin/python3"; return
    fi
  done
}

if [ -n "$python" ]; then
  [ -n "$(recent_enough "$python")" ] || fail "--python / PYTHON '$python' is not a Python 3.$minimum_minor+ interpreter"
else
  python="$(find_python)"
  [ -n "$python" ] || fail "the lab needs Python 3.$minimum_minor or newer, and none was found on PATH (python3, \
python3.12, python3.13, python3.14) or under pyenv's versions; install one (e.g. 'pyenv install 3.12', a python3.12 package of your distribution \
or 'uv python install 3.12') and rerun, or name it with PYTHON=/path/to/python3.12"
fi

if [ "$which_only" = 1 ]; then
  echo "$python"; exit 0
fi

if [ -n "$download" ]; then
  [ -z "$offline" ] || fail "--download and --offline are two steps on two machines; give one"
  [[ "$for_python" =~ ^3\.[0-9]+$ ]] || fail "--for-python '$for_python' is not a version such as 3.12"
  platforms=(--platform "$for_platform")
  if [[ "$for_platform" =~ ^manylinux_2_([0-9]+)_(x86_64|aarch64)$ ]]; then  # glibc 2.N also runs older tags' wheels
    for minor in $(seq $((BASH_REMATCH[1] - 1)) -1 17); do platforms+=(--platform "manylinux_2_${minor}_${BASH_REMATCH[2]}"); done
    platforms+=(--platform "manylinux2014_${BASH_REMATCH[2]}")
  fi
  wanted=(-r "$here/requirements.txt")
  if [ -n "$extra" ]; then
    jax_pin="$(grep -E '^jax==' "$here/requirements.txt" | cut -d' ' -f1)"
    wanted+=("jax[$extra]${jax_pin#jax}")
  fi
  mkdir -p "$download"
  echo "install.sh: downloading wheels for CPython $for_python on $for_platform into $download" >&2
  "$python" -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$for_python" \
    "${platforms[@]}" -d "$download" "${wanted[@]}" || fail "pip download failed (see above): is the package \
index reachable, and does every pin have a wheel for CPython $for_python on $for_platform?"
  cp "$here/requirements.txt" "$download/requirements.txt"
  echo "install.sh: $(ls "$download"/*.whl | wc -l) wheels ($(du -sh "$download" | cut -f1)) in $download; \
on the machine without internet: bash install.sh --offline $download [--keep-jax]" >&2
  exit 0
fi
if [ -n "$offline" ]; then
  [ -d "$offline" ] && ls "$offline"/*.whl >/dev/null 2>&1 || fail "--offline $offline: no wheels there; fill it \
with 'bash install.sh --download $offline' on a machine with internet"
fi

if [ -x "$venv/bin/python" ]; then
  [ -n "$(recent_enough "$venv/bin/python")" ] || fail "$venv holds Python $("$venv/bin/python" -c \
'import sys; print("%d.%d" % sys.version_info[:2])'); the lab needs 3.$minimum_minor+: remove it (rm -r $venv) and rerun"
else
  echo "install.sh: creating $venv with $python (Python $(recent_enough "$python"))" >&2
  if [ "$keep_jax" = 1 ]; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi

pip=("$venv/bin/python" -m pip)
if [ -n "$offline" ]; then
  pip+=(--no-input)
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$offline"  # the folder alone: no index is asked
else
  "${pip[@]}" install --quiet --upgrade pip
fi
if [ "$keep_jax" = 1 ]; then
  held="$("$venv/bin/python" -c 'import jax, jaxlib; print(f"jax=={jax.__version__}\njaxlib=={jaxlib.__version__}")' \
    2>/dev/null)" || fail "--keep-jax: no JAX is installed for $python; install jax first (e.g. 'pip install \
\"jax[cuda13]\"' on a GPU machine, 'pip install \"jax[tpu]\"' on a TPU VM) or drop --keep-jax"
  work="$(mktemp -d)"
  trap 'rm -r "$work"' EXIT
  echo "$held" > "$work/constraints.txt"
  grep -v -E '^(jax|jaxlib)([=<>!~ \[;]|$)' "$here/requirements.txt" > "$work/requirements.txt"
  echo "install.sh: keeping the installed $(echo "$held" | tr '\n' ' ')" >&2
  "${pip[@]}" install --quiet -r "$work/requirements.txt" -c "$work/constraints.txt"
else
  "${pip[@]}" install --quiet -r "$here/requirements.txt"
fi
echo "install.sh: ready; activate it with: . $venv/bin/activate" >&2
