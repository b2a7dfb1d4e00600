#!/usr/bin/env python3
"""Load harness: many concurrent approval holds, and their cost to other traffic.

Starts the test OpenID Provider (manual approval, 30 s CIBA interval), a small upstream and
the gateway (release build) on loopback, then:
  1. measures RSS and the latency of plain authorised requests (JWT + Rego) at rest;
  2. starts N approval holds and waits until the gateway reports N pending:
     sync: N held connections (one CIBA request each);
     async: N requests answered 202 (their connections closed), N pollers left;
     mcp: N MCP 2026-07-28 tools/call (distinct arguments) answered `input_required` after a
          1 s round (connections closed), N pollers left;
  3. measures RSS and the same latency again while they are pending;
  4. sync: closes every held connection (client disconnect) and checks the holds are released.
Each hold pays another invoice (identical calls would join one approval).
LOAD_STATE=redis: async approvals in a redis-server started here (the replicas' setup); the
report then adds Redis's memory and key count. The IdP's token-endpoint polls per second are
measured over 10 s while the holds are pending.
Bounded, loopback only, stops by itself.
Usage: benches/load/approvals.py [N] [sync|async|mcp]
"""
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from loopback import ROOT, free_port, http, metric, rss_kib, wait

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
MODE = sys.argv[2] if len(sys.argv) > 2 else "sync"












def latencies(gw, token, n=500):
    out = []
    for i in range(n):
        t = time.perf_counter()
        status, _ = http("GET", f"{gw}/invoices/finance/INV-{i}", headers={"Authorization": f"Bearer {token}"})
        out.append((time.perf_counter() - t) * 1e6)
        assert status == 200, status
    out.sort()
    return {"p50_us": round(out[len(out) // 2]), "p99_us": round(out[int(len(out) * 0.99)]), "n": n}


def mcp_call(i):
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "load", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
        "name": "pay_invoice", "arguments": {"invoice_id": f"INV-{i}", "amount": 5000}, "_meta": meta}})


STATES = {}


def mcp_request(token, body):
    return (f"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
            "mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: pay_invoice\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode()


async def hold_mcp(port, token, i):
    body = mcp_call(i)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(mcp_request(token, body))
    await writer.drain()
    answer = await reader.read()
    assert b"input_required" in answer, answer[:200]
    STATES[i] = json.loads(answer.split(b"\r\n\r\n", 1)[1])["result"]["requestState"]
    writer.close()


async def approve_and_retry(op, port, token, i):
    """Seconds from the user's approval at the OP to the retry's forwarded answer."""
    _, listed = http("GET", f"{op}/pending")
    mine = [p for p in json.loads(listed) if p["binding_message"] == f"Pay INV-{i} 5000 EUR"]
    http("POST", f"{op}/approve/{mine[0]['auth_req_id']}")
    approved = time.perf_counter()
    call = json.loads(mcp_call(i))
    call["params"]["requestState"] = STATES[i]
    body = json.dumps(call)
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(mcp_request(token, body))
        await writer.drain()
        answer = await reader.read()
        writer.close()
        if b"input_required" not in answer:
            return time.perf_counter() - approved


async def hold(port, token, body, opened, i):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /invoices/finance/INV-{i}/pay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}").encode())
    await writer.drain()
    if MODE == "async":
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), head[:40]
        writer.close()
        return
    opened.append(writer)


async def open_holds(port, token, n):
    body = json.dumps({"amount": 5000, "currency": "EUR"})
    opened = []
    sem = asyncio.Semaphore(32)

    async def one(i):
        async with sem:
            if MODE == "mcp":
                await hold_mcp(port, token, i)
            else:
                await hold(port, token, body, opened, i)

    await asyncio.gather(*(one(i) for i in range(n)))
    return opened


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "portcullis"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="portcullis-load-")
    procs = []
    try:
        op_port, up_port, gw_port, admin_port = (free_port() for _ in range(4))
        op = f"http://127.0.0.1:{op_port}"
        interval = os.environ.get("LOAD_CIBA_INTERVAL", "30")
        env = dict(os.environ, CIBA_INTERVAL=interval, OP_STORE_SIZE=str(N * 4 + 1000), PARENT_PID=str(os.getpid()))
        procs.append(subprocess.Popen(["node", "op.mjs", str(op_port)], cwd=os.path.join(ROOT, "tests/peers"),
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts/demo_upstream.py"), str(up_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(f"{op}/jwks")
        state = ""
        redis_port = None
        if os.environ.get("LOAD_STATE") == "redis":
            redis_port = free_port()
            redis_proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                                           "--save", "", "--appendonly", "no"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(redis_proc)
            time.sleep(0.5)
            state = f'state: {{ backend: redis, redis: {{ url: "redis://127.0.0.1:{redis_port}/0" }} }}\n'
        store = "" if redis_port else f"store: {work}/approvals.db, "
        cfg = f"""version: 1
listen: "127.0.0.1:{gw_port}"
admin: {{ listen: "127.0.0.1:{admin_port}" }}
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
policies: {{ dir: "{ROOT}/policies" }}
approvals: {{ {store}max_pending: {N * 2}, max_pending_per_user: {N * 2} }}
{state}issuers:
  - name: corp
    issuer: "{op}"
    jwks_uri: "{op}/jwks"
    audiences: ["https://api.portcullis.test", "https://mcp.portcullis.test/mcp"]
clients:
  - {{ name: gw, token_endpoint: "{op}/token", client_id: portcullis, client_secret_env: LOAD_SECRET }}
routes:
  - name: invoices
    match: {{ path_prefix: /invoices }}
    upstream: "http://127.0.0.1:{up_port}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: invoices
    policy_body: true
    approval: {{ client: gw, backchannel_endpoint: "{op}/backchannel", max_wait_seconds: 600, mode: {"sync" if MODE == "mcp" else MODE} }}
  - name: mcp
    kind: mcp
    match: {{ path_prefix: /mcp }}
    upstream: "http://127.0.0.1:{up_port}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: mcp_invoices
    mcp: {{ resource: "https://mcp.portcullis.test/mcp" }}
    approval: {{ client: gw, backchannel_endpoint: "{op}/backchannel", max_wait_seconds: 600, mcp: input_required, round_seconds: 1 }}
"""
        path = os.path.join(work, "load.yaml")
        with open(path, "w") as f:
            f.write(cfg)
        gw_env = dict(os.environ, LOAD_SECRET="portcullis-secret", PORTCULLIS_LOG="warn")
        gw = subprocess.Popen([os.path.join(ROOT, "target/release/portcullis"), "run", "--config", path],
                              env=gw_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        admin = f"http://127.0.0.1:{admin_port}"
        wait(f"{admin}/readyz")
        body = json.dumps({"sub": "alice", "scope": "invoices:read invoices:pay", "set": {"dept": "finance"}})
        _, tok = http("POST", f"{op}/test/token", body.encode(), {"content-type": "application/json"})
        token = json.loads(tok)["access_token"]
        if MODE == "mcp":
            body = json.dumps({"sub": "alice", "scope": "invoices:read invoices:pay",
                               "resource": "https://mcp.portcullis.test/mcp"})
            _, tok = http("POST", f"{op}/test/token", body.encode(), {"content-type": "application/json"})
            mcp_token = json.loads(tok)["access_token"]
        base = f"http://127.0.0.1:{gw_port}"
        latencies(base, token, 200)  # warm-up
        before = {"rss_kib": rss_kib(gw.pid), **latencies(base, token)}

        started = time.time()
        loop = asyncio.new_event_loop()
        opened = loop.run_until_complete(open_holds(gw_port, mcp_token if MODE == "mcp" else token, N))
        while metric(admin, "portcullis_approvals_pending") < N and time.time() - started < 300:
            time.sleep(1)
        pending = metric(admin, "portcullis_approvals_pending")
        during = {"pending": int(pending), "rss_kib": rss_kib(gw.pid), **latencies(base, token),
                  "seconds_to_open": round(time.time() - started, 1)}
        _, stats = http("GET", f"{op}/test/stats")
        polls_before, t0 = json.loads(stats)["token"], time.time()
        time.sleep(10)
        _, stats = http("GET", f"{op}/test/stats")
        during["idp_token_requests_per_s"] = round((json.loads(stats)["token"] - polls_before) / (time.time() - t0), 1)
        if redis_port:
            info = subprocess.run(["redis-cli", "-p", str(redis_port), "info", "memory"],
                                  capture_output=True, text=True).stdout
            used = next(int(l.split(":")[1]) for l in info.splitlines() if l.startswith("used_memory:"))
            keys = subprocess.run(["redis-cli", "-p", str(redis_port), "dbsize"], capture_output=True, text=True).stdout
            redis_pid = redis_proc.pid
            during["redis"] = {"used_memory_mib": round(used / 1048576, 1), "keys": int(keys.strip()),
                               "rss_mib": round(rss_kib(redis_pid) / 1024, 1)}
        if MODE == "mcp":
            waits = sorted(loop.run_until_complete(approve_and_retry(op, gw_port, mcp_token, i))
                           for i in range(min(N, 20)))
            during["approval_to_result_ms"] = {
                "p50": round(waits[len(waits) // 2] * 1000), "max": round(waits[-1] * 1000),
                "ciba_interval_s": int(interval), "n": len(waits)}
        for w in opened:
            w.close()
        loop.run_until_complete(asyncio.sleep(1))
        end = time.time()
        while metric(admin, "portcullis_approvals_pending") > 0 and time.time() - end < 60:
            time.sleep(0.5)
        after = {"pending": int(metric(admin, "portcullis_approvals_pending")), "rss_kib": rss_kib(gw.pid)}
        result = {
            "mode": MODE,
            "state": "redis" if redis_port else "embedded",
            "holds": N,
            "before": before,
            "during": during,
            "after_disconnect": after,
            "extra_rss_mib": round((during["rss_kib"] - before["rss_kib"]) / 1024, 1),
            "extra_rss_per_hold_kib": round((during["rss_kib"] - before["rss_kib"]) / max(N, 1), 2),
        }
        print(json.dumps(result, indent=2))
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
