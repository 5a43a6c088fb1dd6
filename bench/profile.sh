#!/usr/bin/env bash
# Profiles a link's data path in the demo's mesh (foo—bar over DTLS, bar—baz over TCP+TLS,
# in network namespaces): one iperf3 TCP stream across the link (foo -> bar for `dtls`,
# bar -> baz for `tls`), `perf record -a -g` across the whole machine meanwhile, and a flame
# graph of it (inferno). Run as root from the repository root after
# `cargo build --release -p connectopus -p connectopus-cni -p bench -p connectopus-tests --bins` (what `cargo xtask` builds); needs perf
# (Debian: linux-perf) and inferno (`cargo install inferno`).
#
#   bench/profile.sh [SECONDS] [OUT_DIR] [dtls|tls]      (defaults: 10, target/profile, dtls)
#
# Writes OUT_DIR/perf.data, OUT_DIR/folded.txt (collapsed stacks), OUT_DIR/flamegraph.svg and
# OUT_DIR/summary.txt (the share of samples by process and by the categories
# docs/performance.md reports).
set -euo pipefail
seconds="${1:-10}"
out="${2:-target/profile}"
link="${3:-dtls}"
case "$link" in
    dtls) from=foo; to=bar ;;
    tls) from=bar; to=baz ;;
    *) echo "profile.sh: the link is dtls or tls, not $link"; exit 1 ;;
esac
mkdir -p "$out"
command -v perf >/dev/null || { echo "profile.sh: needs perf (apt-get install linux-perf)"; exit 1; }
command -v inferno-collapse-perf >/dev/null || { echo "profile.sh: needs inferno (cargo install inferno)"; exit 1; }

log="$out/demo.log"
# The demo's mesh: foo—bar over DTLS with a PSK, bar—baz over TCP+TLS; it stays up until
# SIGINT and removes everything it made.
target/release/demo > "$log" 2>&1 &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    grep -q "# from foo" "$log" 2>/dev/null && break
    sleep 0.1
done
for _ in $(seq 1 600); do
    grep -q "# from $to" "$log" 2>/dev/null && break
    sleep 0.1
done
from_ns=$(grep "# from $from" "$log" | head -1 | awk '{print $4}')
to_ns=$(grep "# from $to" "$log" | head -1 | awk '{print $4}')
# The receiver's mesh address: the one on its TUN device.
to_addr=$(ip netns exec "$to_ns" ip -6 -o addr show dev "cx-$to" scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
[ -n "$from_ns" ] && [ -n "$to_ns" ] && [ -n "$to_addr" ] || { echo "profile.sh: the demo did not start"; cat "$log"; exit 1; }

ip netns exec "$to_ns" iperf3 -s -1 -B "$to_addr" -p 5299 > "$out/iperf3-server.txt" 2>&1 &
sleep 1
ip netns exec "$from_ns" iperf3 -6 -c "$to_addr" -p 5299 -t $((seconds + 2)) > "$out/iperf3.txt" 2>&1 &
client=$!
sleep 1
perf record -F 999 -a -g -o "$out/perf.data" -- sleep "$seconds" 2> "$out/perf-record.txt"
wait $client || true
# Only the data path's processes (and the kernel's idle and softirq threads): other jobs on a
# shared machine stay out of the picture.
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf \
    | grep -E '^(connectopus|worker-|iperf3|swapper|ksoftirqd|kworker)' > "$out/folded.txt"
inferno-flamegraph --title "Connectopus $link link, one TCP stream $from -> $to ($(uname -r))" \
    < "$out/folded.txt" > "$out/flamegraph.svg"
python3 - "$out/folded.txt" > "$out/summary.txt" <<'EOF'
import collections, sys
procs, cats, total = collections.Counter(), collections.Counter(), 0
rules = [
    ("crypto (AES-GCM/ChaCha20, aws-lc)", ("aws_lc", "aes_gcm", "aesni", "chacha", "poly1305", "gcm_")),
    ("copies (kernel and user memcpy)", ("copy_user", "memcpy", "memmove", "copy_to_iter", "copy_from_iter", "_copy_")),
    ("checksums", ("csum", "checksum")),
    ("split and coalesce (connectopus-offload)", ("connectopus_offload",)),
    ("io_uring and syscalls", ("io_uring", "entry_SYSCALL", "do_syscall", "__x64_sys")),
    ("TUN device", ("tun_", "tun::")),
    ("UDP (GSO/GRO)", ("udp", "__udp")),
    ("TCP stack", ("tcp_",)),
    ("scheduler and idle", ("schedule", "cpuidle", "do_idle", "intel_idle", "default_idle", "acpi_idle")),
]
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    procs[stack.split(";", 1)[0]] += n
    frames = stack.lower()
    for name, keys in rules:
        if any(k in frames.rsplit(";", 1)[-1] for k in keys):
            cats[name] += n
            break
    else:
        cats["other"] += n
print(f"samples: {total}")
print("by process (top 8):")
for p, n in procs.most_common(8):
    print(f"  {100 * n / total:5.1f} %  {p}")
print("by leaf function category:")
for c, n in cats.most_common():
    print(f"  {100 * n / total:5.1f} %  {c}")
EOF
cat "$out/summary.txt"
grep -E "sender|receiver" "$out/iperf3.txt" || true
