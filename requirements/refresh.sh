#!/usr/bin/env bash
# Re-resolve the newest versions pyproject.toml allows in a fresh venv, run the test suite with
# them, and only if it passes write them to requirements/lock.txt (review the diff, then commit).
set -euo pipefail
cd "$(dirname "$0")/.."
env=$(mktemp -d)/venv
python3 -m venv "$env"
"$env/bin/pip" install -q -e '.[dev]'
"$env/bin/python" -m pytest -q
{
  sed -n '1,4p' requirements/lock.txt
  echo "# Generated $(date -u +%Y-%m-%d) by: pip freeze --all --exclude-editable (less pip)"
  "$env/bin/pip" freeze --all --exclude-editable | grep -v "^pip=="
} > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "requirements/lock.txt refreshed from $env; the suite passed with it"
