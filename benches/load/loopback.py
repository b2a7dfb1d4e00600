"""Helpers shared by the load scripts in benches/load: free ports, small HTTP calls, waiting for
a server, and reading a process's RSS and the gateway's metrics. Loopback only."""
import os
import socket
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait(url, secs=60, any_status=False):
    """Until `url` answers 2xx (or, with `any_status`, answers at all)."""
    end = time.time() + secs
    while time.time() < end:
        try:
            http("GET", url, timeout=2)
            return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.2)
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} not ready")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(admin, name):
    _, text = http("GET", f"{admin}/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
