#!/usr/bin/env bash
# Set up everything thermoflow needs on this machine: Debian packages (as root, Chromium too), a virtual
# environment inside the project with thermoflow and its test tools, and Kafka's jars.
# Safe to run again: each step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
need_debs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_debs+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_debs+=(postgresql)
command -v java >/dev/null 2>&1 || need_debs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_debs+=(maven)
command -v openssl >/dev/null 2>&1 || need_debs+=(openssl)  # the tests' TLS certificates
# The browser tests' headless Chromium (tests/support/browser.py): Debian's, driven by Playwright
# for Python, whose own browser download cannot work on a machine without that host.
[ -x /usr/bin/chromium ] || need_debs+=(chromium)
if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_debs[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
  else
    echo "setup: missing ${need_debs[*]}: install them (apt-get install ${need_debs[*]}) and run again" >&2
    exit 1
  fi
fi

# TimescaleDB where this project's machines carry a build of it (../shared/timescaledb, a README
# inside): the local stack then preloads it, and the tests run the storage tests on it as well.
# Anywhere else thermoflow keeps plain PostgreSQL tables, and everything works without it.
for dir in "$(dirname "$PWD")/shared/timescaledb" /work/shared/timescaledb; do
  [ -x "$dir/install" ] || continue
  if [ "$(id -u)" != 0 ]; then
    echo "setup: $dir/install needs root: going on with plain PostgreSQL" >&2
  elif ! "$dir/install"; then
    echo "setup: TimescaleDB from $dir did not install: going on with plain PostgreSQL" >&2
  fi
  break
done

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: thermoflow needs Python 3.11+, $PYTHON is $("$PYTHON" --version)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The exact set CI tested: every dependency pinned in requirements.lock (`make lock` renews it
# from pyproject.toml), then thermoflow itself without resolving anything again.
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] || [ requirements.lock -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  touch .venv/.installed
fi
.venv/bin/thermoflow stack fetch
