#!/usr/bin/env python3
"""Measures backups and restores of 100,000 keys of 100 B, beside etcd.

    scripts/backup-measure.py BINARY [KEYS]

Starts three quorumd nodes of BINARY on loopback ports in a temporary
directory, loads KEYS keys (default 100,000) of 100 B through /v1/txn (64
per transaction), then times:

- `quorumd snapshot save` (with the file's size), `quorumd snapshot restore`
  of that file into the same cluster (all keys replaced, every node);
- the write latency of single PUTs while no backup runs, and while a
  backup is taken over and over (`GET /v1/snapshot` in a loop), median and
  p99;

then, if `etcd` and `etcdctl` are on PATH, a 3-member etcd cluster with the
same keys: `etcdctl snapshot save` and `etcdctl snapshot restore` (one
member's data dir; etcd restores offline).
"""

import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=b"", timeout=300):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait(cond, what, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def value(i):
    return (f"{i:08d}" * 13)[:100].encode()


def load_quorumd(port, keys):
    for start in range(0, keys, 64):
        ops = [
            {"KV": {"Verb": "set", "Key": f"bench/{i:07d}",
                    "Value": base64.b64encode(value(i)).decode()}}
            for i in range(start, min(start + 64, keys))
        ]
        s, b = request(port, "PUT", "/v1/txn", json.dumps(ops).encode())
        if s != 200:
            sys.exit(f"txn: {s} {b[:200]}")


def latencies(port, n, key):
    out = []
    for i in range(n):
        t = time.perf_counter()
        s, _ = request(port, "PUT", f"/v1/kv/{key}/{i}", b"x" * 100)
        out.append((time.perf_counter() - t) * 1000)
        if s != 200:
            sys.exit(f"put: {s}")
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


def timed(args, env=None):
    t = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return took, r.stdout


def quorumd(binary, keys, tmp):
    nodes = [(i, free_port(), free_port()) for i in (1, 2, 3)]
    cfg = os.path.join(tmp, "cluster.toml")
    with open(cfg, "w") as f:
        f.write(f'[cluster]\nname = "bench"\ndata_dir = "{tmp}/data"\n')
        f.write('heartbeat_interval = "1s"\npeer_timeout = "3s"\n')
        for i, p, a in nodes:
            f.write(f'[[node]]\nid = {i}\naddr = "127.0.0.1:{p}"\nadmin = "127.0.0.1:{a}"\n')
    procs = []
    for i, _, _ in nodes:
        log = open(os.path.join(tmp, f"node-{i}.log"), "w")
        procs.append(subprocess.Popen(
            [binary, "run", "--cluster", cfg, "--node-id", str(i)],
            stderr=log, env={**os.environ, "RUST_LOG": "warn"}))
    try:
        admin = nodes[0][2]
        wait(lambda: request(admin, "GET", "/ready")[0] == 200, "the cluster")
        t = time.perf_counter()
        load_quorumd(admin, keys)
        print(f"quorumd: loaded {keys} keys of 100 B in {time.perf_counter() - t:.1f} s")
        quiet = latencies(admin, 200, "quiet")

        backup = os.path.join(tmp, "quorumd.qbak")
        took, _ = timed([binary, "snapshot", "save", "--cluster", cfg, backup])
        print(f"quorumd snapshot save: {took * 1000:.0f} ms, {os.path.getsize(backup)} bytes")
        took, _ = timed([binary, "snapshot", "restore", "--cluster", cfg, backup])
        print(f"quorumd snapshot restore (3 nodes, through Raft): {took * 1000:.0f} ms")
        s, b = request(nodes[2][2], "GET", "/v1/kv/bench/?keys&stale")
        print(f"  node 3 holds {len(json.loads(b)) if s == 200 else 0} keys under bench/")

        stop = threading.Event()
        runs = [0]

        def backups():
            while not stop.is_set():
                request(admin, "GET", "/v1/snapshot?stale")
                runs[0] += 1

        th = threading.Thread(target=backups)
        th.start()
        busy = latencies(admin, 200, "busy")
        stop.set()
        th.join()
        print(f"write latency, single PUTs of 100 B (median / p99): {quiet[0]:.1f} / "
              f"{quiet[1]:.1f} ms idle; {busy[0]:.1f} / {busy[1]:.1f} ms while backups run "
              f"back to back ({runs[0]} backups meanwhile)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def etcd(keys, tmp):
    if not shutil.which("etcd") or not shutil.which("etcdctl"):
        print("etcd: not installed, skipped")
        return
    members = [(f"e{i}", free_port(), free_port()) for i in (1, 2, 3)]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p, _ in members)
    procs = []
    for n, p, c in members:
        procs.append(subprocess.Popen(
            ["etcd", "--name", n, "--data-dir", os.path.join(tmp, n),
             "--listen-peer-urls", f"http://127.0.0.1:{p}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
             "--listen-client-urls", f"http://127.0.0.1:{c}",
             "--advertise-client-urls", f"http://127.0.0.1:{c}",
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{n}.log"), "w")))
    client = members[0][2]
    env = {**os.environ, "ETCDCTL_API": "3"}
    endpoint = f"http://127.0.0.1:{client}"
    try:
        wait(lambda: request(client, "GET", "/health")[0] == 200, "etcd")
        t = time.perf_counter()
        for start in range(0, keys, 64):
            ops = [{"requestPut": {"key": base64.b64encode(f"bench/{i:07d}".encode()).decode(),
                                   "value": base64.b64encode(value(i)).decode()}}
                   for i in range(start, min(start + 64, keys))]
            s, b = request(client, "POST", "/v3/kv/txn", json.dumps({"success": ops}).encode())
            if s != 200:
                sys.exit(f"etcd txn: {s} {b[:200]}")
        print(f"etcd: loaded {keys} keys of 100 B in {time.perf_counter() - t:.1f} s")
        snap = os.path.join(tmp, "etcd.db")
        took, _ = timed(["etcdctl", "--endpoints", endpoint, "snapshot", "save", snap], env)
        print(f"etcdctl snapshot save: {took * 1000:.0f} ms, {os.path.getsize(snap)} bytes")
        took, _ = timed(["etcdctl", "snapshot", "restore", snap, "--name", "e1",
                         "--data-dir", os.path.join(tmp, "restored"),
                         "--initial-cluster", initial,
                         "--initial-advertise-peer-urls", f"http://127.0.0.1:{members[0][1]}"],
                        env)
        print(f"etcdctl snapshot restore (one member's data dir, offline): {took * 1000:.0f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    keys = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    tmp = tempfile.mkdtemp(prefix="quorumd-backup-measure-")
    try:
        quorumd(binary, keys, tmp)
        etcd(keys, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
