#!/usr/bin/env python3
"""Counts elections while one node's log fsyncs stall.

    scripts/stall-measure.py DEBUG_BINARY [SECONDS] [DELAY]

Starts three nodes of DEBUG_BINARY (the fault hook exists in debug builds
only) on loopback, with node VICTIM's fsyncs stalling DELAY (default
300ms) for SECONDS (default 60) under a write load of single PUTs through
every node, once with the leader as the victim and once with a follower.
Prints the term changes (elections), the writes acknowledged, their median
and p99 latency, and whether every acknowledged write is on every node.
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=b"", timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def status(port):
    try:
        s, b = request(port, "GET", "/admin/cluster/status", timeout=5)
        return json.loads(b) if s == 200 else None
    except OSError:
        return None


def run(binary, seconds, delay, victim_is_leader):
    tmp = tempfile.mkdtemp(prefix="quorumd-stall-")
    nodes = [(i, free_port(), free_port()) for i in (1, 2, 3)]
    cfg = os.path.join(tmp, "cluster.toml")
    with open(cfg, "w") as f:
        f.write(f'[cluster]\nname = "stall"\ndata_dir = "{tmp}/data"\n')
        f.write('heartbeat_interval = "1s"\npeer_timeout = "3s"\n')
        for i, p, a in nodes:
            f.write(f'[[node]]\nid = {i}\naddr = "127.0.0.1:{p}"\nadmin = "127.0.0.1:{a}"\n')
    switch = os.path.join(tmp, "stall-now")
    victim = 1 if victim_is_leader else 3
    procs = []
    for i, _, _ in nodes:
        env = {**os.environ, "RUST_LOG": "warn"}
        if i == victim:
            env["QUORUMD_FAULT_FSYNC_DELAY"] = delay
            env["QUORUMD_FAULT_FSYNC_DELAY_FILE"] = switch
        procs.append(subprocess.Popen([binary, "run", "--cluster", cfg, "--node-id", str(i)],
                                      stderr=open(os.path.join(tmp, f"n{i}.log"), "w"), env=env))
    try:
        end = time.time() + 30
        while time.time() < end:
            s = status(nodes[0][2])
            if s and s.get("leader_id") == 1:
                break
            time.sleep(0.1)
        term0 = status(nodes[0][2])["term"]
        open(switch, "w").close()
        acked, lat = [], []
        t_end = time.time() + seconds
        i = 0
        while time.time() < t_end:
            port = nodes[i % 3][2]
            key = f"load/{i:06d}"
            t = time.perf_counter()
            try:
                s, _ = request(port, "PUT", f"/v1/kv/{key}", b"x" * 100)
            except OSError:
                s = 0
            if s == 200:
                acked.append(key)
                lat.append((time.perf_counter() - t) * 1000)
            i += 1
        os.remove(switch)
        terms = [status(p)["term"] for _, _, p in nodes]
        time.sleep(2)
        kept = all(
            set(acked) <= set(json.loads(request(p, "GET", "/v1/kv/load/?keys&stale")[1]))
            for _, _, p in nodes)
        lat.sort()
        who = "leader" if victim_is_leader else "follower"
        print(f"{delay} fsync stalls on the {who} for {seconds} s: {max(terms) - term0} elections, "
              f"{len(acked)} writes acknowledged (median {statistics.median(lat):.0f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1]:.0f} ms), every acknowledged write on every "
              f"node: {kept}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    delay = sys.argv[3] if len(sys.argv) > 3 else "300ms"
    run(binary, seconds, delay, True)
    run(binary, seconds, delay, False)


if __name__ == "__main__":
    main()
