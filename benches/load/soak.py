#!/usr/bin/env python3
"""Soak test: mixed load for N minutes across config reloads and a signing-key rotation.

Starts the test OpenID Provider, a small upstream and the gateway on loopback, then runs
worker threads (keep-alive connections) sending a fixed mix whose every answer is known:
  allowed JWT + Rego (200), a policy denial (403), no token (401), a missing scope (403),
  an RFC 8693 token-exchange route (200) and a public route (200).
In the middle: a reload by SIGHUP at 30 % (another, equivalent configuration), a key rotation
at the OP at 50 % (new tokens from then on, signed with a kid the gateway has never seen) and
a second SIGHUP reload at 70 %. Reports requests, unexpected answers (goal 0), the reloads and
JWKS fetches, and the gateway's RSS sampled over the run (goal: flat). Exits non-zero on any
unexpected answer or failed reload. Bounded, loopback only, stops by itself.
Usage: benches/load/soak.py [MINUTES=10] [--bin target/release/portcullis] [--workers 6]
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from loopback import ROOT, free_port, metric, rss_kib, wait
from loopback import http as http_call

SECRET = "portcullis-secret"












def config(gw_port, admin_port, op, up_port, variant):
    """Two equivalent configurations: the same answers for the load, different files."""
    extra = ""
    headers = ""
    if variant == "b":
        headers = "\n    policy_headers: [x-request-id]"
        extra = f"""  - name: extra
    match: {{ path_prefix: /extra }}
    upstream: "http://127.0.0.1:{up_port}"
    public: true
"""
    return f"""version: 1
listen: "127.0.0.1:{gw_port}"
admin: {{ listen: "127.0.0.1:{admin_port}" }}
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
policies: {{ dir: "{ROOT}/policies" }}
limits: {{ token_cache_entries: {10000 if variant == "a" else 20000} }}
issuers:
  - name: corp
    issuer: "{op}"
    jwks_uri: "{op}/jwks"
    audiences: ["https://api.portcullis.test"]
    roles:
      claim: roles
      grants:
        finance: ["invoices:read", "invoices:pay"]
        viewer: ["invoices:read"]
clients:
  - {{ name: gw, token_endpoint: "{op}/token", client_id: portcullis, client_secret_env: SOAK_SECRET }}
routes:
  - name: invoices
    match: {{ path_prefix: /invoices, methods: [GET] }}
    upstream: "http://127.0.0.1:{up_port}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"], agents: ["agent-1"] }}
    policy: invoices{headers}
  - name: payments
    match: {{ path_prefix: /payments }}
    upstream: "http://127.0.0.1:{up_port}"
    auth: {{ issuer: corp, require_scopes: ["invoices:pay"] }}
  - name: billing
    match: {{ path_prefix: /billing }}
    upstream: "http://127.0.0.1:{up_port}"
    auth: {{ issuer: corp }}
    credentials:
      token_exchange: {{ client: gw, resource: ["https://billing.downstream.test"], scope: "invoices:read" }}
  - name: public
    match: {{ path_prefix: /public }}
    upstream: "http://127.0.0.1:{up_port}"
    public: true
{extra}"""


class Tokens:
    """Tokens the workers use; replaced after the key rotation."""

    def __init__(self, op):
        self.op = op
        self.lock = threading.Lock()
        self.refresh()

    def mint(self, body):
        _, raw = http_call("POST", f"{self.op}/test/token", json.dumps(body).encode(),
                           {"content-type": "application/json"})
        return json.loads(raw)["access_token"]

    def refresh(self):
        alice = [self.mint({"sub": "alice", "client_id": "agent-1", "scope": "invoices:read invoices:pay"})
                 for _ in range(4)]
        bob = [self.mint({"sub": "bob", "client_id": "agent-1", "scope": "invoices:read invoices:pay"})
               for _ in range(4)]
        with self.lock:
            self.alice, self.bob = alice, bob

    def pick(self, i):
        with self.lock:
            return self.alice[i % len(self.alice)], self.bob[i % len(self.bob)]


# (name, path template, who, expected status)
MIX = [
    ("allowed", "/invoices/finance/INV-{i}", "alice", 200),
    ("policy_denied", "/invoices/sales/INV-{i}", "alice", 403),
    ("no_token", "/invoices/finance/INV-{i}", None, 401),
    ("missing_scope", "/payments/{i}", "bob", 403),
    ("token_exchange", "/billing/{i}", "alice", 200),
    ("public", "/public/{i}", None, 200),
]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {name: 0 for name, *_ in MIX}
        self.errors = 0
        self.samples = []  # first unexpected answers

    def record(self, name, ok, detail):
        with self.lock:
            self.requests[name] += 1
            if not ok:
                self.errors += 1
                if len(self.samples) < 20:
                    self.samples.append({"t": round(time.time(), 1), "kind": name, "got": detail})


def worker(n, port, tokens, stats, stop):
    conn = None
    i = n * 1_000_000
    while not stop.is_set():
        i += 1
        name, path, who, want = MIX[i % len(MIX)]
        alice, bob = tokens.pick(i)
        headers = {}
        if who:
            headers["Authorization"] = f"Bearer {alice if who == 'alice' else bob}"
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path.format(i=i % 1000), headers=headers)
            r = conn.getresponse()
            body = r.read()
            ok = r.status == want
            detail = f"{r.status} {body[:200].decode('utf-8', 'replace')}"
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:  # a dropped connection is an error too
            ok, detail = False, repr(e)
            if conn is not None:
                conn.close()
            conn = None
        stats.record(name, ok, detail)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minutes", nargs="?", type=float, default=10.0)
    ap.add_argument("--bin", help="gateway binary (default: release build, built if missing)")
    ap.add_argument("--workers", type=int, default=6)
    args = ap.parse_args()
    duration = args.minutes * 60
    binary = args.bin
    if not binary:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release", "portcullis")
        if not os.path.exists(binary):
            subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "portcullis"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="portcullis-soak-")
    procs = []
    failures = []
    try:
        op_port, up_port, gw_port, admin_port = (free_port() for _ in range(4))
        op = f"http://127.0.0.1:{op_port}"
        env = dict(os.environ, PARENT_PID=str(os.getpid()))
        procs.append(subprocess.Popen(["node", "op.mjs", str(op_port)], cwd=os.path.join(ROOT, "tests/peers"),
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts/demo_upstream.py"), str(up_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(f"{op}/jwks")
        path = os.path.join(work, "soak.yaml")
        with open(path, "w") as f:
            f.write(config(gw_port, admin_port, op, up_port, "a"))
        log = open(os.path.join(work, "gateway.log"), "w")
        gw_env = dict(os.environ, SOAK_SECRET=SECRET, PORTCULLIS_LOG="warn")
        gw = subprocess.Popen([binary, "run", "--config", path], env=gw_env, stdout=subprocess.DEVNULL, stderr=log)
        procs.append(gw)
        admin = f"http://127.0.0.1:{admin_port}"
        wait(f"{admin}/readyz")

        tokens = Tokens(op)
        stats = Stats()
        stop = threading.Event()
        threads = [threading.Thread(target=worker, args=(n, gw_port, tokens, stats, stop), daemon=True)
                   for n in range(args.workers)]
        started = time.time()
        for t in threads:
            t.start()

        events = []
        plan = [(0.3, "reload", "b"), (0.5, "rotate", None), (0.7, "reload", "a")]
        generation = 1
        rss = []
        sample_every = max(1.0, duration / 120)
        next_sample = started
        while time.time() - started < duration:
            now = time.time()
            if now >= next_sample:
                rss.append((round(now - started, 1), rss_kib(gw.pid)))
                next_sample += sample_every
            if plan and now - started >= plan[0][0] * duration:
                _, what, variant = plan.pop(0)
                at = round(now - started, 1)
                if what == "reload":
                    with open(path + ".new", "w") as f:
                        f.write(config(gw_port, admin_port, op, up_port, variant))
                    os.replace(path + ".new", path)
                    os.kill(gw.pid, signal.SIGHUP)
                    generation += 1
                    end = time.time() + 30
                    while metric(admin, "portcullis_config_generation") < generation and time.time() < end:
                        time.sleep(0.2)
                    got = int(metric(admin, "portcullis_config_generation"))
                    events.append({"t": at, "event": f"SIGHUP reload to config {variant}", "generation": got})
                    if got != generation:
                        failures.append(f"reload to config {variant} not applied (generation {got})")
                else:
                    _, raw = http_call("POST", f"{op}/test/rotate")
                    tokens.refresh()
                    events.append({"t": at, "event": "key rotation at the OP", **json.loads(raw)})
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.time() - started
        rss.append((round(elapsed, 1), rss_kib(gw.pid)))

        reload_errors = int(metric(admin, 'portcullis_config_reloads_total{outcome="error"}'))
        if reload_errors:
            failures.append(f"{reload_errors} reloads failed")
        _, raw = http_call("GET", f"{op}/test/stats")
        op_stats = json.loads(raw)
        total = sum(stats.requests.values())
        settled = [kib for t, kib in rss if t >= elapsed * 0.2] or [kib for _, kib in rss]
        step = max(1, len(rss) // 12)
        result = {
            "minutes": round(elapsed / 60, 2),
            "workers": args.workers,
            "binary": binary,
            "requests": total,
            "requests_per_second": round(total / elapsed),
            "by_kind": stats.requests,
            "errors": stats.errors,
            "error_samples": stats.samples,
            "events": events,
            "reloads_ok": int(metric(admin, 'portcullis_config_reloads_total{outcome="ok"}')),
            "reloads_error": reload_errors,
            "gateway_jwks_fetches": int(metric(admin, 'portcullis_jwks_refresh_total{issuer="corp",outcome="success"}')),
            "op_jwks_requests": op_stats["jwks"],  # includes this script's readiness probe
            "op_token_requests": op_stats["token"],
            "rss_kib": {
                "start": rss[0][1],
                "after_warmup_min": min(settled),
                "max": max(kib for _, kib in rss),
                "end": rss[-1][1],
                "growth_after_warmup_kib": rss[-1][1] - settled[0],
                "samples": [f"{t}s {kib}" for t, kib in rss[::step] + ([rss[-1]] if (len(rss) - 1) % step else [])],
            },
            "failures": failures,
        }
        print(json.dumps(result, indent=2))
        if stats.errors or failures:
            log.flush()
            with open(os.path.join(work, "gateway.log")) as f:
                tail = [l for l in f if '"ERROR"' in l or '"WARN"' in l][-10:]
            sys.stderr.write("gateway warnings/errors (last 10):\n" + "".join(tail))
            return 1
        return 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
