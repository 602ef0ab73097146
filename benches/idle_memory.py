#!/usr/bin/env python3
"""Memory per idle TLS session (docs/memory.md).

Starts the proxy, opens a warm-up wave of sessions and closes it, then
holds N sessions idle after STARTTLS and the second EHLO, and reports
the proxy's RSS before, while held and after they close.

    python3 benches/idle_memory.py BINARY N [--backend tcp|sink]
        [--port P] [--heaptrack OUT]

--backend tcp (default): a trivial SMTP server in this script (one
    thread, selectors) on the next port, so that the backend's cost is
    not in the proxy; --backend sink: the proxy's built-in sink (its
    duplex pipe, buffer and task are then counted too).
--heaptrack OUT: run the proxy under heaptrack (build it with
    `--features system-alloc`: heaptrack does not see jemalloc); the
    report is OUT.zst (or .gz). `heaptrack_print -f OUT.zst -F stacks
    --flamegraph-cost-type peak` gives the bytes held at the peak, which
    is while the N sessions are held.
"""

import argparse
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backend(port, ready):
    """A minimal SMTP server: greeting, 250 to everything, 221 to QUIT."""
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ, None)
    ready.set()
    pending = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    c, _ = ls.accept()
                except OSError:
                    continue
                c.setblocking(True)
                c.sendall(b"220 backend.test ESMTP\r\n")
                c.setblocking(False)
                pending[c] = b""
                sel.register(c, selectors.EVENT_READ, True)
                continue
            c = key.fileobj
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(c)
                pending.pop(c, None)
                c.close()
                continue
            buf = pending[c] + data
            out = b""
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    out += b"250-backend.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n"
                elif verb == b"QUIT":
                    out += b"221 bye\r\n"
                else:
                    out += b"250 ok\r\n"
            pending[c] = buf
            if out:
                c.setblocking(True)
                c.sendall(out)
                c.setblocking(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("n", type=int)
    ap.add_argument("--backend", choices=["tcp", "sink"], default="tcp")
    ap.add_argument("--port", type=int, default=12700)
    ap.add_argument("--heaptrack")
    ap.add_argument("--waves", type=int, default=1)
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="idle-memory-")
    certs = f"{REPO}/certs.example"
    if args.backend == "sink":
        be = f'sink = "{d}/mail"'
    else:
        be = f'servers = ["127.0.0.1:{args.port + 1}"]'
        ready = threading.Event()
        threading.Thread(target=backend, args=(args.port + 1, ready), daemon=True).start()
        ready.wait()
    conf = f"""hostname = "mx1.example.test"
[[listener]]
address = "127.0.0.1:{args.port}"
backend = "b"
[tls]
default_certificate = "mx1"
trust_anchors = "{certs}/ca.pem"
[[certificate]]
name = "mx1"
chain = "{certs}/mx1.example.test/ecdsa/fullchain.pem"
key = "{certs}/mx1.example.test/ecdsa/privkey.pem"
[[backend]]
name = "b"
{be}
[limits]
max_connections = 50000
max_connections_per_ip = 50000
"""
    with open(f"{d}/c.toml", "w") as f:
        f.write(conf)
    # --allow-root: benchmarks run as root; `run` refuses root without it.
    cmd = [args.binary, "run", "--allow-root", "--config", f"{d}/c.toml"]
    if args.heaptrack:
        cmd = ["heaptrack", "-o", args.heaptrack] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=None if os.environ.get("PROXY_STDERR") else subprocess.DEVNULL)

    def proxy_pid():
        if not args.heaptrack:
            return p.pid
        # heaptrack's script runs the proxy (and its interpreter) as children.
        for _ in range(100):
            out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            for child in map(int, out):
                try:
                    with open(f"/proc/{child}/cmdline", "rb") as f:
                        if f.read().split(b"\0")[0] == args.binary.encode():
                            return child
                except OSError:
                    pass
            time.sleep(0.1)
        sys.exit("proxy not started under heaptrack")

    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            c = socket.create_connection(("127.0.0.1", args.port))
            g = c.recv(100)
            c.close()
            if g.startswith(b"220"):
                break
        except OSError:
            pass
        time.sleep(0.1)
    pid = proxy_pid()

    def rss():
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])

    ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")

    def session():
        s = socket.create_connection(("127.0.0.1", args.port))
        f = s.makefile("rb")

        def reply(f):
            while True:
                line = f.readline()
                if line[3:4] != b"-":
                    return line

        reply(f)
        s.sendall(b"EHLO c.test\r\n")
        reply(f)
        s.sendall(b"STARTTLS\r\n")
        reply(f)
        t = ctx.wrap_socket(s, server_hostname="mx1.example.test")
        t.sendall(b"EHLO c.test\r\n")
        r = reply(t.makefile("rb"))
        assert r.startswith(b"250"), r
        return t

    warm = [session() for _ in range(50)]
    for t in warm:
        t.close()
    time.sleep(1.0)
    base = rss()
    for wave in range(args.waves):
        held = [session() for _ in range(args.n)]
        time.sleep(1.0)
        full = rss()
        for t in held:
            t.close()
        time.sleep(2.0)
        after = rss()
        per = (full - base) / args.n
        print(
            f"{os.path.basename(args.binary)} backend={args.backend} wave {wave + 1}: "
            f"base {base} KiB, {args.n} held {full} KiB -> {per:.1f} KiB/session, "
            f"after close {after} KiB",
            flush=True,
        )
    # The proxy itself (under heaptrack, the script's child): heaptrack
    # writes its report once the proxy has exited.
    os.kill(pid, signal.SIGTERM)
    p.wait()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
