#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The seed's echo servers, re-created in Python 3 (standard library only) as measuring sticks.

echod began (2013, Python 2) as small servers of this kind; `make bench` runs these beside echod's
thread and fork models, which are the same model written in Swift: one blocking loop per
connection. Not part of the product.

    seed_server.py thread|fork [PORT] [--buffer BYTES]

thread: one thread per connection. fork: one process per connection (the kernel reaps children:
SIGCHLD ignored). Each connection: recv up to --buffer bytes (default 65536, the C baseline's
read size), sendall them back, until the peer closes its side, then close. TCP_NODELAY as the
other servers of the benchmark set it, so Nagle's algorithm does not decide the figures.
Listens on 127.0.0.1 and prints "port N" once it listens. SIGTERM: the fork server passes it to
its children (its process group, when it leads one: start it with setsid) and exits 0; the thread server exits 0.
"""
import argparse
import os
import signal
import socket
import sys
import threading


def echo(conn, size):
    try:
        while True:
            data = conn.recv(size)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["thread", "fork"])
    ap.add_argument("port", type=int, nargs="?", default=0)
    ap.add_argument("--buffer", type=int, default=65536)
    args = ap.parse_args()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    print(f"port {listener.getsockname()[1]}", flush=True)

    if args.model == "fork":
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

        def stop(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # Only its own group: started as a group leader (run.py uses a new session), never
            # the group of whoever started it.
            if os.getpgrp() == os.getpid():
                try:
                    os.killpg(0, signal.SIGTERM)
                except OSError:
                    pass
            os._exit(0)
        signal.signal(signal.SIGTERM, stop)
    else:
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    threading.stack_size(256 * 1024)

    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        except OSError as e:
            print(f"seed_server: accept: {e}", file=sys.stderr, flush=True)
            continue
        if args.model == "thread":
            threading.Thread(target=echo, args=(conn, args.buffer), daemon=True).start()
            continue
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            listener.close()
            echo(conn, args.buffer)
            os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
