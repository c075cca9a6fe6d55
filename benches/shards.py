#!/usr/bin/env python3
"""Multi-shard scaling: the node against the no-logic baseline at 1, 2, 4
and 8 packet shards, each loaded by `sky bench --threads T` for several T,
printed as one markdown table for BENCHMARKS.md.

    cargo build --release && python3 benches/shards.py [--shards 1,2,4,8]
        [--threads 1,2,4,8] [--duration 5] [--rounds 3] [--mode lookup-online]

Cores. The node pins its shards to cores 1..S and its control and gossip
threads to core 0 (`sky node`'s own pinning; the baseline runs on the very
same engine). The generator gets every other core: with `taskset` it is
confined to core 0 and cores S+1.. (its threads spread over them);
without it, it runs unpinned and the output says so. A point whose
threads outnumber the generator's cores is skipped (except 1 and 2
threads, measured everywhere: on a 2-core machine they share core 0).

Ratios. For each (shards, threads) point the node and the baseline are
measured alternately for --rounds rounds; the table gives each side's
median rate and the median of the per-round ratios (adjacent runs see the
same drift of a shared machine). Each run is bounded: `sky bench` stops
itself after --duration, and is killed if it has not finished 60 s later.
The population (default 50,000) keeps every target under the node's 255
introductions a second, so that the node, like the baseline, introduces
every lookup; a footnote flags a point where it did not.

Every server it starts is killed with SIGKILL when its shard count is
done, and on any exit. All traffic stays on 127.0.0.1.
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKY = os.path.join(ROOT, "target", "release", "sky")
# Each shard count gets its own pair of ports (7730 + 2i, 7731 + 2i): a
# server killed with SIGKILL may hold its port a moment longer (io_uring
# tears down asynchronously), and the next one must not join it.
PORT = 7730
CORES = os.cpu_count() or 1
TASKSET = shutil.which("taskset")

RUNNING = []


def kill_all():
    """SIGKILL every server still running: nothing outlives the script."""
    for proc in RUNNING:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    RUNNING.clear()


atexit.register(kill_all)


def start(argv, address):
    # The server's log goes to a file, never a pipe nobody drains.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    RUNNING.append(proc)
    deadline = time.time() + 10
    while True:
        ok = subprocess.run(
            [SKY, "probe", "ping", "--sky", address, "--timeout", "0.2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode == 0
        if ok:
            return proc
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            log.seek(0)
            err = log.read().strip().splitlines()[-3:]
            sys.exit(f"shards: {' '.join(argv[:2])} did not start on {address}: {err}")


def node(address, shards, engine):
    # Gossip and the NAT check on ephemeral ports: nothing of a node that
    # may run on this machine is taken. The whole population comes from
    # one IP: its per-source budget is the table's capacity.
    return start([SKY, "node", "--listen", address, "--metrics", "off", "--engine", engine,
                  "--shards", str(shards), "--intros-per-second", "255",
                  "--capacity", "1000000", "--keepalive-secs", "600",
                  "--max-per-ip", "1000000", "--max-per-prefix", "1000000",
                  "--checks-per-source", "65535",
                  "--gossip", "127.0.0.1:0", "--check", "0"], address)


def baseline(address, shards, engine):
    return start([SKY, "bench", "--serve-baseline", "--listen", address,
                  "--engine", engine, "--shards", str(shards)], address)


def generator_cores(shards):
    """The cores the node's shards leave: core 0 (its idle control and
    gossip threads) and every core after its shards."""
    return [0] + list(range(shards + 1, CORES))


def bench(server, target, a, shards, threads):
    argv = [SKY, "bench", "--sky", target, "--mode", a.mode, "--duration", str(a.duration),
            "--threads", str(threads), "--clients", str(32 * threads),
            "--population", str(a.population), "--json", "--server-pid", str(server.pid)]
    if TASKSET:
        argv = [TASKSET, "-c", ",".join(map(str, generator_cores(shards)))] + argv
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=a.duration + 60)
    except subprocess.TimeoutExpired:
        sys.exit(f"shards: sky bench did not finish within {a.duration + 60} s")
    if out.returncode != 0:
        sys.exit(f"shards: sky bench failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def median(xs):
    return sorted(xs)[len(xs) // 2]


def fmt(r):
    cpu = r.get("server_cpu")
    cpu = f", server {cpu:.2f} cores" if cpu is not None else ""
    return f"{r['ops_per_sec']:,.0f}/s ({r['loss_ratio']:.2%} lost{cpu})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default="1,2,4,8")
    ap.add_argument("--threads", default="1,2,4,8")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per ratio")
    ap.add_argument("--mode", default="lookup-online")
    ap.add_argument("--population", type=int, default=50_000)
    ap.add_argument("--engine", default="uring")
    a = ap.parse_args()
    if not os.path.exists(SKY):
        sys.exit("shards: build first: cargo build --release")
    shard_counts = [int(s) for s in a.shards.split(",")]
    thread_counts = [int(t) for t in a.threads.split(",")]
    pinning = ("generator on core 0 and the cores after the shards (taskset)" if TASKSET
               else "generator unpinned (no taskset)")
    print(f"<!-- {time.strftime('%Y-%m-%d')} on {CORES} cores, {os.uname().release}; "
          f"{a.mode}, {a.engine} engine, {a.duration:g} s x {a.rounds} rounds, "
          f"population {a.population}; shards on cores 1..S, {pinning} -->")
    print("| shards | generator threads | node | baseline | node / baseline (rounds) |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    notes = []
    for i, shards in enumerate(shard_counts):
        free = len(generator_cores(shards))
        node_at, baseline_at = f"127.0.0.1:{PORT + 2 * i}", f"127.0.0.1:{PORT + 2 * i + 1}"
        n, b = node(node_at, shards, a.engine), baseline(baseline_at, shards, a.engine)
        for threads in thread_counts:
            if threads > max(free, 2):
                print(f"| {shards} | {threads} | — | — | skipped: {free} generator cores |",
                      flush=True)
                continue
            runs = {"node": [], "baseline": []}
            for _ in range(a.rounds):
                runs["node"].append(bench(n, node_at, a, shards, threads))
                runs["baseline"].append(bench(b, baseline_at, a, shards, threads))
            ratios = sorted(x["ops_per_sec"] / y["ops_per_sec"]
                            for x, y in zip(runs["node"], runs["baseline"]))
            mid = {k: sorted(v, key=lambda r: r["ops_per_sec"])[len(v) // 2]
                   for k, v in runs.items()}
            for r in runs["node"]:
                if r["malformed"] or (a.mode == "lookup-online"
                                      and r["introductions"] < 0.99 * r["answered"]):
                    notes.append(f"{shards} shards, {threads} threads: {r['malformed']} "
                                 f"malformed, {r['introductions']} introductions for "
                                 f"{r['answered']} lookups")
                    break
            print(f"| {shards} | {threads} | {fmt(mid['node'])} | {fmt(mid['baseline'])} | "
                  f"{median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) |",
                  flush=True)
        kill_all()
    for note in notes:
        print(f"\nNote: {note}.")


if __name__ == "__main__":
    main()
