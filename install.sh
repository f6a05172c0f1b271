#!/usr/bin/env bash
# Install the lab into a virtual environment with Python >= 3.12 (what requirements.txt is pinned for).
#
#   bash install.sh [--venv DIR] [--keep-jax] [--python PATH] [--which-python]
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
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
keep_jax=0
which_only=0
python="${PYTHON:-}"
minimum_minor=12

fail() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) [ $# -ge 2 ] || fail "--venv needs a directory"; venv="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || fail "--python needs an interpreter"; python="$2"; shift 2 ;;
    --keep-jax) keep_jax=1; shift ;;
    --which-python) which_only=1; shift ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
"${pip[@]}" install --quiet --upgrade pip
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
