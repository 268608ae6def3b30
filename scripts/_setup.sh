# Shared by scripts/demo and scripts/test: install Debian packages that are missing, then make
# .venv with sluicegate installed. Usage: source it, then `setup_machine PKG...` and `setup_venv EXTRAS`.

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "sluicegate setup: installing $* with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# setup_machine BINARY=PACKAGE...: install PACKAGE when BINARY is not on the PATH.
setup_machine() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "sluicegate needs Python 3.11 or newer; python3 is $(python3 --version)" >&2
    exit 1
  }
}

# setup_venv [EXTRAS]: .venv with sluicegate installed (editable), plus the extras named.
setup_venv() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${1:+[$1]}"
}
