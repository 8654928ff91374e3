# Shared by .verify/fuzz.sh and .verify/fuzz-parallel.sh (sourced, not run).

# The largest input each target is given: room for its seeds and more, while a parser that
# makes gigabytes of a few kilobytes still shows.
max_len() {
  case "$1" in
    model_config | server_ws | prompt_tokens) echo 4096 ;;
    safetensors | gguf | server_upload) echo 8192 ;;
    png_image | png_text) echo 20000 ;;
    *) echo 16384 ;;
  esac
}

# Every target of fuzz/fuzz_targets/ but `any` (which runs any of them).
all_targets() {
  ls fuzz/fuzz_targets | sed 's/\.rs$//' | grep -vx any | sort
}

# One of libFuzzer's final stats from a log: fuzz_stat LOG NAME
fuzz_stat() {
  grep -oE "stat::$2: +[0-9]+" "$1" | awk '{print $2}' | tail -1
}

summary_header() {
  printf '%-15s %10s %7s %8s %7s %7s %6s %8s  %s\n' target execs secs exec/s cov ft corpus rss_mb finding
}

# One table line from a libFuzzer log: summary_line TARGET LOG EXIT_CODE SECONDS [ARTIFACT_DIR]
# (the artifact path libFuzzer printed is shown under ARTIFACT_DIR when given).
summary_line() {
  local t=$1 log=$2 rc=$3 secs=$4 dir=${5:-}
  local execs rate rss last cov ft corp finding artifact
  execs=$(fuzz_stat "$log" number_of_executed_units)
  rate=$(fuzz_stat "$log" average_exec_per_sec)
  rss=$(fuzz_stat "$log" peak_rss_mb)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | awk '{print $2}')
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | awk '{print $2}')
  corp=$(echo "$last" | grep -o 'corp: [0-9]*' | awk '{print $2}')
  finding=none
  if [ "$rc" -ne 0 ]; then
    finding=$(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^,]*|deadly signal|out-of-memory[^)]*' "$log" || echo "exit $rc")
    artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | awk '{print $5}')
    finding="$finding ${artifact:+(${dir:+$dir/}$artifact)}"
  fi
  printf '%-15s %10s %7s %8s %7s %7s %6s %8s  %s\n' "$t" "${execs:-?}" "$secs" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$finding"
}
