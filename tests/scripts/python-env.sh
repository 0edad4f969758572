# Sourced by the test scripts: `python_env DIR PACKAGE...` makes (once) a virtualenv of
# the check's own under DIR/venv, installs the packages named there (pinned by the caller:
# the versions its check was written against; pip does nothing when they are in), and
# sets `py` to its python.
python_env() {
  local dir=$1
  shift
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  [ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet "$@"
  py="$dir/venv/bin/python"
}
