#!/usr/bin/env bash
# Runs on the GPU machine from /work/main's copy: every queued helper tree in
# .gpu-queue/NAME.tar.xz with its script NAME.sh, one after another, each
# under its own timeout (NAME.secs or the first number of NAME.request),
# within QUEUE_BUDGET seconds in all; results packed into $OUT/queue.tgz
# after each job.
set -u
Q=$PWD/.gpu-queue; R=/tmp/qres; mkdir -p $R
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} CUDA_CACHE_DISABLE=1
T0=$(date +%s); BUDGET=${QUEUE_BUDGET:-570}
for name in ${QUEUE_ORDER:-$(cd $Q && ls -tr *.tar.xz | sed 's/.tar.xz//')}; do
  secs=$(cat "$Q/$name.secs" 2>/dev/null || awk '{print $1; exit}' "$Q/$name.request" 2>/dev/null || echo 120)
  left=$(( BUDGET - ($(date +%s) - T0) ))
  if (( left < 30 )); then echo "SKIPPED $name: $left s left"; continue; fi
  (( secs > left )) && secs=$left
  mkdir -p /tmp/q/$name $R/$name
  tar -C /tmp/q/$name -xJf "$Q/$name.tar.xz"
  cp "$Q/$name.sh" /tmp/q/$name/queue-job.sh
  t=$(date +%s)
  (cd /tmp/q/$name && RESULT=$R/$name timeout -k 5 "$secs" bash queue-job.sh > $R/$name/run.log 2>&1; echo "exit $? (limit $secs s)" >> $R/$name/run.log)
  echo "[$(( $(date +%s) - T0 )) s] $name: $(( $(date +%s) - t )) s, $(tail -1 $R/$name/run.log)"
  tail -12 $R/$name/run.log | head -11 | cut -c1-220
  tar czf ${OUT:-/tmp}/queue.tgz -C $R .   # after each job: a later one that overruns cannot lose the earlier results
done
