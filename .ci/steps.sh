# Sourced by .ci/gpu and .ci/gpu-distill, after they set $out: each step's command and output go to a log in OUT_DIR,
# and a failed step is counted in $fails, so that the next step still runs.
fails=0
run() {  # run LOG CMD...: append CMD's output to OUT/LOG, count a failure; returns CMD's exit status
    echo "== $(date -Is) ${*:2}" | tee -a "$out/$1"
    "${@:2}" >>"$out/$1" 2>&1
    local rc=$?
    if [ "$rc" -ne 0 ]; then fails=$((fails + 1)); echo "   failed (exit $rc)" | tee -a "$out/$1"; fi
    return "$rc"
}
