#!/usr/bin/env bash
# Where an idle round trip waits: traces the scheduler while the end-to-end harness pings
# through one subject (idle, 2 ms apart, as `cargo xtask bench` does) and prints every kind
# of wake-up on the way, waker -> woken thread, with how long the woken thread waited for a
# CPU ("sch delay") and whether that CPU had been idle for over a millisecond before ("cold":
# on a virtual machine whose idle vCPUs halt, the hypervisor must run the vCPU again first).
# Run as root from the repository root after
# `cargo build --release -p connectopus -p connectopus-cni -p bench -p connectopus-tests --bins`
# (what `cargo xtask` builds); needs perf (Debian: linux-perf) and python3.
#
#   bench/wakeups.sh [SUBJECT] [OUT_DIR] [WARM_US]
#       (defaults: pair/connectopus-dtls, target/wakeups, 0)
#
# SUBJECT is a harness subject id (`e2e --only`), e.g. pair/nebula for the same picture of a
# peer. WARM_US > 0 runs, during the pings, one thread per CPU pinned to it that sleeps
# WARM_US microseconds in a loop: an outside stand-in for guest halt polling
# (cpuidle-haltpoll), which keeps idle vCPUs from going cold (docs/performance.md).
#
# Writes OUT_DIR/sched.data (perf sched record -a, one second of the pings),
# OUT_DIR/timehist.txt, OUT_DIR/e2e.log and OUT_DIR/summary.txt.
set -euo pipefail
subject="${1:-pair/connectopus-dtls}"
out="${2:-target/wakeups}"
warm_us="${3:-0}"
mkdir -p "$out"
command -v perf >/dev/null || { echo "wakeups.sh: needs perf (apt-get install linux-perf)"; exit 1; }
command -v python3 >/dev/null || { echo "wakeups.sh: needs python3"; exit 1; }
[ -x target/release/e2e ] || { echo "wakeups.sh: build first: cargo build --release -p connectopus -p connectopus-cni -p bench -p connectopus-tests --bins"; exit 1; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

if [ "$warm_us" -gt 0 ]; then
    for cpu in $(seq 0 $(($(nproc) - 1))); do
        python3 -c "import os, time
os.sched_setaffinity(0, {$cpu})
while True: time.sleep($warm_us / 1e6)" &
        pids+=($!)
    done
fi

CONNECTOPUS_BIN_DIR="${CONNECTOPUS_BIN_DIR:-$PWD/target/release}" target/release/e2e \
    --reps 1 --seconds 1 --udp-seconds 1 --pings 1000 --load 0 --only "$subject" \
    --out "$out/e2e" > "$out/e2e.log" 2>&1 &
e2e=$!
pids+=($e2e)
# The harness pings before its transfers: wait for its ping, then trace one second of it.
for _ in $(seq 1 1200); do
    pgrep -x ping -P "$e2e" >/dev/null && break
    sleep 0.05
done
pgrep -x ping -P "$e2e" >/dev/null || { echo "wakeups.sh: the harness never pinged"; cat "$out/e2e.log"; exit 1; }
sleep 0.2
ps -eo pid,args | grep -E "connectopus|nebula|wireguard|boringtun" | grep -v grep > "$out/processes.txt" || true
perf sched record -a -o "$out/sched.data" -- sleep 1 > "$out/perf-record.txt" 2>&1
wait "$e2e" || { echo "wakeups.sh: the harness failed"; tail -20 "$out/e2e.log"; exit 1; }
perf sched timehist -i "$out/sched.data" -w 2>/dev/null > "$out/timehist.txt"

python3 - "$out/timehist.txt" > "$out/summary.txt" <<'EOF'
import collections, re, statistics, sys
# perf sched timehist -w: a switch-out line per run of a task (time, cpu, task, wait time,
# sch delay, run time, in ms) and an "awakened:" line per wake-up (time, cpu, waker, woken).
run = re.compile(r'^\s*([\d.]+)\s+\[(\d+)\]\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$')
wake = re.compile(r'^\s*([\d.]+)\s+\[(\d+)\]\s+(\S+)\s+awakened:\s+(\S+)')
def name(task):
    m = re.match(r'(.+?)\[(\d+)(?:/(\d+))?\]', task)
    return f"{m[1]} (pid {m[3] or m[2]})" if m else task
woken, idle_until, pairs = {}, {}, collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = wake.match(line)
    if m:
        woken[m[4]] = (name(m[3]), int(m[2]))
        continue
    m = run.match(line)
    if not m:
        continue
    end, cpu, task, delay, ran = float(m[1]), int(m[2]), m[3], float(m[5]), float(m[6])
    start = end - ran / 1000
    if task == '<idle>':
        idle_until[cpu] = (ran, end)
        continue
    waker = woken.pop(task, None)
    if waker is None:
        continue
    idle_ms, idle_end = idle_until.get(cpu, (0.0, 0.0))
    cold = idle_ms > 1.0 and abs(idle_end - start) < 50e-6
    pairs[(waker[0], name(task))].append((delay * 1000, waker[1] == cpu, cold))
print("waker -> woken: wake-ups in the second traced; sch delay (µs) p50 / p90;")
print("on the waker's CPU; onto a CPU idle for over 1 ms (cold), and their p50")
for (waker, task), v in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
    if len(v) < 20 or task.startswith(('perf', 'sleep', 'e2e', 'python3')):
        continue
    d = sorted(x[0] for x in v)
    cold = sorted(x[0] for x in v if x[2])
    same = sum(1 for x in v if x[1])
    cold_p50 = f"{statistics.median(cold):6.0f}" if cold else "     -"
    print(f"  {waker:28} -> {task:28} {len(v):5}  {statistics.median(d):6.0f} / "
          f"{d[int(len(d) * 0.9)]:6.0f}   same CPU {same:4}   cold {len(cold):4} ({cold_p50})")
EOF
echo "subject $subject, warm ${warm_us} µs; processes:"
cat "$out/processes.txt"
cat "$out/summary.txt"
grep -E "ping p50" "$out/e2e.log" | head -1
