# Shared by the multi-process benchmarks (discovery.sh, resilience.sh), sourced after they set
# $binary (the flotilla binary) and $work (the run's scratch directory), and the array
# $bench_scripts (the Python scripts whose processes are theirs): PostgreSQL administration, and a
# cleanup that stops whatever a run left behind and drops the databases listed in $databases.
# A run started in the background records its PID in $runner, so a signal stops it first.

psql_admin() { PGOPTIONS="-c client_min_messages=warning" psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
databases=()
runner=

fleet_cleanup() {
  # A run still going (this script was stopped) stops what it started in its finally block, and
  # must not start more once the sweep below has begun: stop it first (`timeout` passes SIGTERM on
  # and kills it 10 s later).
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    kill -TERM "$runner" 2>/dev/null || true
    wait "$runner" 2>/dev/null || true
  fi
  # The helper stops what it starts; this catches what it left behind if it was killed.
  local pids
  pids=$(cat "$work"/run-*/pids 2>/dev/null || true)
  # Only a PID that is still ours: a stopped process's PID may have been reused.
  local patterns=(-e "$binary")
  local script
  for script in "${bench_scripts[@]}"; do patterns+=(-e "$script"); done
  ours() { grep -qF "${patterns[@]}" "/proc/$1/cmdline" 2>/dev/null; }
  local pid left=()
  for pid in $pids; do
    ours "$pid" && kill -TERM "$pid" 2>/dev/null && left+=("$pid")
  done
  # A product serves on for its deregister delay before it drains: up to 10 s before SIGKILL.
  for _ in $(seq 1 100); do
    [ "${#left[@]}" -eq 0 ] && break
    local alive=()
    for pid in "${left[@]}"; do ours "$pid" && alive+=("$pid"); done
    left=("${alive[@]}")
    sleep 0.1
  done
  for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  local database
  for database in "${databases[@]}"; do
    psql_admin -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
  done
  rm -rf "$work"
}
trap fleet_cleanup EXIT
# Leave through the EXIT trap on a signal as well.
trap 'exit 130' INT
trap 'exit 143' TERM
