#!/usr/bin/env bash
# `make dev`: the Dagster UI on a local SQLite instance (DAGSTER_HOME, default ./dagster_home),
# ready to click. With no GRSAI_API_KEY (in the environment or ./.env) it starts the Grsai
# simulator and points the settings at it, and says so, so that a first "Materialize" or
# create_batch works instead of failing on a missing key.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DAGSTER=${DAGSTER:-$BIN/dagster}
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/dagster_home}
mkdir -p "$DAGSTER_HOME"
if [ ! -e "$DAGSTER_HOME/dagster.yaml" ]; then
  cp "$(dirname "$0")/dev-instance.yaml" "$DAGSTER_HOME/dagster.yaml"
fi

key_in_dotenv() {
  [ -f .env ] && grep -Eq '^[[:space:]]*(export[[:space:]]+)?GRSAI_API_KEY=[^[:space:]]' .env
}

if [ -z "${GRSAI_API_KEY:-}" ] && ! key_in_dotenv; then
  port=${GRSAI_SIMULATOR_PORT:-8787}
  export GRSAI_API_KEY=dev-key-not-secret GRSAI_BASE_URL="http://127.0.0.1:$port"
  "$BIN/grsai-pipeline" simulator --port "$port" --api-key "$GRSAI_API_KEY" &
  sim=$!
  trap 'kill "$sim" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  sleep 0.3  # a simulator that cannot bind its port exits at once
  if ! kill -0 "$sim" 2>/dev/null; then
    echo "make dev: the Grsai simulator did not start on port $port;" \
      "set GRSAI_SIMULATOR_PORT to a free port, or set GRSAI_API_KEY for the real API" >&2
    exit 1
  fi
  echo "make dev: GRSAI_API_KEY is not set, so runs call the local Grsai simulator at" \
    "$GRSAI_BASE_URL (videos are fake)." >&2
  echo "make dev: for the real API, set GRSAI_API_KEY (and GRSAI_BASE_URL if not" \
    "https://grsaiapi.com) in the environment or .env, then run make dev again." >&2
fi

"$BIN/grsai-pipeline" db init
"$DAGSTER" dev -w workspace.yaml "$@"
