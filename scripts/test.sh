#!/usr/bin/env bash
# Run the test suite. Uses PostgreSQL and Redis when they answer on their usual local ports (or when
# DATABASE_URL / REDIS_URL are set); otherwise SQLite, and the service-backed tests skip (on CI they fail).
set -euo pipefail
cd "$(dirname "$0")/.."
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${DATABASE_URL:-}" ] && port_open 5432; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/tradeflow"
fi
if [ -z "${REDIS_URL:-}" ] && port_open 6379; then
  export REDIS_URL="redis://127.0.0.1:6379/0"
fi
echo "tests: database=${DATABASE_URL:-sqlite} redis=${REDIS_URL:-none} ci=${CI:-false}"
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
