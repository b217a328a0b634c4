# Sourced by run.sh and .ci/run: one place that makes and fills the project's virtual environment.
#
# The environment lives in .venv inside the checkout, made by the system's own Python 3 (Debian's and
# Ubuntu's /usr/bin/python3 refuse `pip install` outside a virtual environment, PEP 668). Packages are
# installed once per content of the requirements files and pyproject.toml; later runs start at once. The
# nullviz package itself is an editable install of this checkout (the `nullviz` command, `import nullviz` from
# anywhere), so edits take effect without reinstalling.

nullviz_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x /usr/bin/python3 ]; then echo /usr/bin/python3
  else command -v python3 || true
  fi
}

ensure_venv() {  # ensure_venv REQUIREMENTS_FILE
  local req=$1 py stamp
  py=$(nullviz_python)
  if [ -z "$py" ]; then
    echo "nullviz: error: no python3 found; install it (Debian/Ubuntu: sudo apt-get install python3 python3-venv)" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$py" -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      echo "nullviz: error: $py cannot create a virtual environment; install it with: sudo apt-get install python3-venv" >&2
      exit 2
    fi
  fi
  stamp=".venv/.nullviz-installed-$(basename "$req")-$(cat "$req" requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "nullviz: installing $req into .venv (first run only; several minutes, ~7 GB with CUDA-enabled torch)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
    .venv/bin/python -m pip install -q --disable-pip-version-check "setuptools>=64"  # builds the editable install
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    rm -f ".venv/.nullviz-installed-$(basename "$req")-"*
    touch "$stamp"
  fi
}
