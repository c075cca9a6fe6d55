#!/usr/bin/env python3
"""Measures the SPEC §6 numbers on this machine, in one run, and prints them
as the rows of BENCHMARKS.md.

    cargo build --release && python3 benches/spec6.py [--duration 10] [--quick]

Every ratio compares two measurements taken in this run, alternating
between the two sides for --rounds rounds and keeping each side's median
(the machine is shared: absolute rates drift). The node's packet shards are
pinned to cores 1.., the load generator to core 0. Every process it starts
is stopped before it exits; all traffic stays on 127.0.0.1.

Subcommands:
    spec6.py             everything below except coturn
    spec6.py coturn      registrations and pings against coturn's STUN
                         (run by benches/peer-coturn.sh, which installs it), with
                         each engine (io_uring and recvmmsg) on its own node
    spec6.py population  memory per entry and lookups at 10^7 entries vs
                         10^3 (10^6 with --quick)
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKY = os.path.join(ROOT, "target", "release", "sky")
NODE = "127.0.0.1:7720"
BASELINE = "127.0.0.1:7721"
NODE2 = "127.0.0.1:7722"
STUN = "127.0.0.1:3478"
TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def cpu_seconds(pid):
    """User + system CPU seconds of a process and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Server:
    """A server process, stopped on exit whatever happens."""

    def __init__(self, argv, probe_ping=True, address=NODE, patience=10):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + patience
        while probe_ping:
            ok = subprocess.run(
                [SKY, "probe", "ping", "--sky", address, "--timeout", "0.2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ).returncode == 0
            if ok:
                break
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                sys.exit(f"spec6: {argv[0]} did not start")
        if not probe_ping:
            time.sleep(0.5)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def node(engine="uring", shards=None, capacity=1_000_000, address=NODE, keepalive=25):
    # Gossip on an ephemeral port: two nodes run at once here, and neither
    # may take 7701 from a node running on this machine.
    argv = [SKY, "node", "--listen", address, "--metrics", "off", "--engine", engine,
            "--intros-per-second", "255", "--capacity", str(capacity),
            "--keepalive-secs", str(keepalive), "--gossip", "127.0.0.1:0", "--check", "0",
            # Every registration comes from this one IP: its per-source
            # budget is the whole table.
            "--max-per-ip", str(capacity), "--max-per-prefix", str(capacity),
            # ... and each new address costs one of its signature checks.
            "--checks-per-source", "65535"]
    if shards:
        argv += ["--shards", str(shards)]
    return Server(argv, address=address)


def prefilled(entries, address):
    """A real node whose table holds `entries` synthetic entries, filled in
    process (10^7 signed registrations through the socket would take the
    node 7.7 core-minutes of signature checks, the generator 5 more to derive and
    sign, and the last such setup gave up at 8.35 M)."""
    argv = [SKY, "bench", "--serve-node", str(entries), "--listen", address, "--engine", "uring"]
    return Server(argv, address=address, patience=300)


def baseline(engine="uring", shards=0):
    argv = [SKY, "bench", "--serve-baseline", "--listen", BASELINE, "--engine", engine,
            "--shards", str(shards)]
    return Server(argv, address=BASELINE)


def bench(server, target, mode, duration, population=1000, rate=None, one_at_a_time=False,
          synthetic=False, source_ips=None):
    """Runs sky bench; the report includes the server's CPU while measuring.
    Paced runs (latency) use 4 sockets, so the generator's own loop stays
    short; peak runs use 32. Lookups come from 16 loopback IPs: a node
    introduces at most 127 lookups a second per caller IP and target, and
    from one IP over 1,000 targets most would go unintroduced (less work
    than the baseline, which introduces every one)."""
    if source_ips is None:
        source_ips = 16 if mode.startswith("lookup") else 1
    argv = [SKY, "bench", "--sky", target, "--mode", mode, "--duration", str(duration),
            "--population", str(population), "--json", "--server-pid", str(server.pid)]
    if CORES > 1:
        argv += ["--pin", "0"]
    if rate:
        argv += ["--rate", str(int(rate)), "--clients", "4", "--window", "64"]
    if one_at_a_time:
        argv += ["--clients", "1", "--window", "1"]
    if synthetic:
        argv += ["--synthetic"]
    if source_ips > 1:
        argv += ["--source-ips", str(source_ips)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"spec6: sky bench failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def alternate(runs, rounds, key=lambda r: r["ops_per_sec"]):
    """Runs each (name, thunk) in turn, `rounds` times, and returns for each
    name the run with the median `key` (the rate by default), plus under
    "ratios" the per-round
    ratio of the first to the second (adjacent runs see the same drift of
    a shared machine; the median of those ratios is the robust figure)."""
    results = {name: [] for name, _ in runs}
    for _ in range(rounds):
        for name, thunk in runs:
            results[name].append(thunk())
    out = {name: sorted(rs, key=key)[len(rs) // 2] for name, rs in results.items()}
    first, second = runs[0][0], runs[1][0]
    out["ratios"] = sorted(a["ops_per_sec"] / b["ops_per_sec"]
                           for a, b in zip(results[first], results[second]))
    return out


def ratio_text(ratios):
    median = ratios[len(ratios) // 2]
    return f"{median:.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"


def row(what, measured, ratio, target, command):
    print(f"| {what} | {measured} | {ratio} | {target} | `{command}` |", flush=True)


def header():
    print("| what | measured | ratio | SPEC §6 target | command |")
    print("| --- | --- | --- | --- | --- |")


def fmt_ops(r):
    cpu = r.get("server_cpu")
    cpu = f"server CPU {cpu:.0%}, " if cpu is not None else ""
    return f"{r['ops_per_sec']:,.0f}/s ({cpu}loss {r['loss_ratio']:.2%})"


def spec6(duration, quick, rounds):
    header()
    # The node and the no-logic baseline run side by side (same engine, one
    # shard each on core 1; the idle one costs nothing), and the generator
    # alternates between them.
    with node() as n, baseline() as b:
        m = alternate([
            ("node", lambda: bench(n, NODE, "lookup-online", duration)),
            ("baseline", lambda: bench(b, BASELINE, "lookup-online", duration)),
        ], rounds)
        peak, ceiling = m["node"], m["baseline"]
        half_rate = peak["ops_per_sec"] / 2
        h = alternate([
            ("node", lambda: bench(n, NODE, "lookup-online", duration, rate=half_rate)),
            ("baseline", lambda: bench(b, BASELINE, "lookup-online", duration, rate=half_rate)),
        ], rounds, key=lambda r: r["rtt"]["p99_us"])
        half, ceiling_half = h["node"], h["baseline"]
        o = alternate([
            ("node", lambda: bench(n, NODE, "lookup-online", duration, one_at_a_time=True)),
            ("baseline", lambda: bench(b, BASELINE, "lookup-online", duration, one_at_a_time=True)),
        ], rounds, key=lambda r: r["rtt"]["p99_us"])
        single, ceiling_single = o["node"], o["baseline"]
        offline = bench(n, NODE, "lookup-offline", duration)
        reg = bench(n, NODE, "register", duration)
        ping = bench(n, NODE, "ping", duration)
    row("lookups (online: reply + introduction) vs no-logic baseline",
        f"node {fmt_ops(peak)}; baseline {fmt_ops(ceiling)} (medians)", ratio_text(m["ratios"]),
        "≥ 0.85",
        f"spec6.py (lookup-online, {duration:g} s, population 1000, median of {rounds})")
    row("egress per online lookup", f"{peak['reply_bytes_per_op']:.0f} B reply + "
        f"{peak['introduction_bytes_per_op']:.0f} B introduction = "
        f"{peak['reply_bytes_per_op'] + peak['introduction_bytes_per_op']:.0f} B", "—", "≤ 64 B",
        "sky bench --mode lookup-online")
    row("egress per offline lookup", f"{offline['reply_bytes_per_op']:.0f} B", "—", "≤ 16 B (§3)",
        "sky bench --mode lookup-offline")
    row("egress per registration", f"{reg['reply_bytes_per_op']:.0f} B", "—", "≤ 48 B (§3)",
        "sky bench --mode register")
    row("egress per keepalive", "0 B (no reply; asserted on the wire by tests/it/egress.rs)", "—",
        "0 B (§3)", "cargo test --test it egress")
    row("registrations, node alone (coturn ratio: peer-coturn.sh)", fmt_ops(reg), "—", "—",
        "sky bench --mode register")
    row("pings, node alone (coturn ratio: peer-coturn.sh)", fmt_ops(ping), "—", "—",
        "sky bench --mode ping")
    row(f"p99 round trip at half the peak rate (lookups; median p99 of {rounds})",
        f"node {half['rtt']['p99_us']:.0f} µs at {half['ops_per_sec']:,.0f}/s "
        f"(p50 {half['rtt']['p50_us']:.0f}, p99.9 {half['rtt']['p999_us']:.0f}); "
        f"baseline {ceiling_half['rtt']['p99_us']:.0f} µs at the same rate "
        f"(p50 {ceiling_half['rtt']['p50_us']:.0f}, p99.9 {ceiling_half['rtt']['p999_us']:.0f})",
        f"{half['rtt']['p99_us'] / max(ceiling_half['rtt']['p99_us'], 1):.2f} of baseline",
        "≤ 200 µs", f"sky bench --mode lookup-online --rate {int(half_rate)} --clients 4")

    row("round trip, one lookup at a time (no queueing)",
        f"node p50 {single['rtt']['p50_us']:.0f} µs, p99 {single['rtt']['p99_us']:.0f} µs, "
        f"p99.9 {single['rtt']['p999_us']:.0f} µs at {single['ops_per_sec']:,.0f}/s; baseline p50 "
        f"{ceiling_single['rtt']['p50_us']:.0f}, p99 {ceiling_single['rtt']['p99_us']:.0f}, "
        f"p99.9 {ceiling_single['rtt']['p999_us']:.0f}",
        f"{single['rtt']['p99_us'] / max(ceiling_single['rtt']['p99_us'], 1):.2f} of baseline", "—",
        "sky bench --mode lookup-online --clients 1 --window 1")

    # io_uring against recvmmsg, same load, side by side.
    with node() as u, node(engine="mmsg", address=NODE2) as mm:
        e = alternate([
            ("uring", lambda: bench(u, NODE, "lookup-online", duration)),
            ("mmsg", lambda: bench(mm, NODE2, "lookup-online", duration)),
        ], rounds)
    row("engines: io_uring vs recvmmsg (lookups)",
        f"uring {fmt_ops(e['uring'])}; mmsg {fmt_ops(e['mmsg'])}",
        ratio_text(e["ratios"]), "—",
        f"spec6.py (node --engine uring / mmsg, median of {rounds})")

    row("heap allocations per datagram, steady state", "0 (core, io_uring and recvmmsg engines)",
        "—", "0", "cargo test -p sky-node --test alloc")
    population(duration, quick, rounds)


def population(duration, quick, rounds):
    # Cost growth and memory per entry at 10^7 entries. Two real nodes side
    # by side, one holding 10^3 entries and one 10^7, each filled in process
    # (`sky bench --serve-node`); the generator alternates between them,
    # looking up their (synthetic) populations from 16 loopback IPs, as
    # many callers would: a node introduces at most 127 lookups a second
    # per caller IP and target, and from one IP over 1,000 targets most
    # lookups would go unintroduced (less work for the small node). The
    # table is allocated for its capacity at start, so memory per entry is
    # the large node's RSS less the small one's, over the entries between.
    big = 1_000_000 if quick else 10_000_000
    small = 1_000
    with prefilled(big, NODE) as large_node, prefilled(small, NODE2) as small_node:
        after = rss_bytes(large_node.pid)
        before = rss_bytes(small_node.pid)
        look = lambda server, target, n: bench(server, target, "lookup-online", duration,
                                               population=n, synthetic=True)
        g = alternate([
            ("large", lambda: look(large_node, NODE, big)),
            ("small", lambda: look(small_node, NODE2, small)),
        ], rounds)
    per_entry = (after - before) / (big - small)
    introduced = {k: g[k]["introduced"] / max(g[k]["answered"], 1) for k in ("large", "small")}
    row(f"memory per presence entry at {big:,} entries", f"{per_entry:.1f} B "
        f"(RSS {after / 2**20:.0f} MiB, a node of {small:,}: {before / 2**20:.0f} MiB)", "—",
        "≤ 64 B (performance v2: ≤ 48 B)",
        f"spec6.py (RSS of a node holding {big:,} less one holding {small:,})")
    row(f"lookups/s at {big:,} entries vs at {small:,}",
        f"{fmt_ops(g['large'])} vs {fmt_ops(g['small'])} (medians; introduced "
        f"{introduced['large']:.0%} vs {introduced['small']:.0%})", ratio_text(g["ratios"]),
        "≥ 0.9 (performance v2: ≥ 0.95)",
        f"sky bench --serve-node {big} / --mode lookup-online --synthetic --source-ips 16 "
        f"(median of {rounds})")


def coturn(duration, rounds):
    header()
    # coturn gets what one node shard gets: one core (core 1, like shard 0)
    # and one relay thread; STUN only, UDP only, no CLI, logging to stdout.
    stun = Server(["taskset", "-c", "1" if CORES > 1 else "0", "turnserver", "-n", "--stun-only",
                   "--listening-ip", "127.0.0.1", "--listening-port", "3478", "--no-cli",
                   "--no-tls", "--no-dtls", "--no-tcp", "--log-file", "stdout", "--simple-log",
                   "--relay-threads", "1"], probe_ping=False)
    # Both engines, each its own node (one loaded at a time): which one
    # `--engine auto` picks flips between starts on a machine where they
    # are close, so the rows name the engine.
    with stun, node(shards=1, engine="uring") as u, \
            node(shards=1, engine="mmsg", address=NODE2) as mm:
        runs = [("coturn", lambda: bench(stun, STUN, "stun", duration))]
        for engine, n, at in [("io_uring", u, NODE), ("recvmmsg", mm, NODE2)]:
            for mode in ["register", "ping"]:
                runs.append((f"{mode} {engine}",
                             lambda n=n, at=at, mode=mode: bench(n, at, mode, duration)))
        results = {name: [] for name, _ in runs}
        for _ in range(rounds):
            for name, thunk in runs:
                results[name].append(thunk())
    if all(r["answered"] == 0 for r in results["coturn"]):
        sys.exit("spec6: coturn answered no STUN request")
    st = sorted(results["coturn"], key=lambda r: r["ops_per_sec"])[rounds // 2]
    for what, mode in [("registrations", "register"), ("pings", "ping")]:
        for engine in ["io_uring", "recvmmsg"]:
            rs = results[f"{mode} {engine}"]
            r = sorted(rs, key=lambda r: r["ops_per_sec"])[rounds // 2]
            # Per round: the node's run against the coturn run of the same
            # round (adjacent runs see the same drift of a shared machine).
            ratios = sorted(a["ops_per_sec"] / b["ops_per_sec"]
                            for a, b in zip(rs, results["coturn"]))
            row(f"{what} vs coturn STUN Binding ({engine} engine)",
                f"node {fmt_ops(r)}; coturn {fmt_ops(st)} (medians)", ratio_text(ratios),
                "≥ 1.5 (performance v2: ≥ 2.0)", f"benches/peer-coturn.sh (median of {rounds})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="spec6", choices=["spec6", "coturn", "population"])
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--quick", action="store_true", help="10^6 instead of 10^7 entries")
    ap.add_argument("--rounds", type=int, default=5, help="alternating runs per ratio")
    a = ap.parse_args()
    if not os.path.exists(SKY):
        sys.exit("spec6: build first: cargo build --release")
    print(f"<!-- {time.strftime('%Y-%m-%d')} on {CORES} cores, {os.uname().release} -->")
    if a.what == "coturn":
        coturn(a.duration, a.rounds)
    elif a.what == "population":
        header()
        population(a.duration, a.quick, a.rounds)
    else:
        spec6(a.duration, a.quick, a.rounds)


if __name__ == "__main__":
    main()
