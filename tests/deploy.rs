//! The Kubernetes manifests in deploy/kubernetes, offline: rendered by kustomize (kubectl's),
//! every object validated against the Kubernetes OpenAPI schemas (kubernetes-validate), the
//! gateway config of the ConfigMap passed through `portcullis check` as the pod would mount
//! it, and the security properties asserted — all by tests/deploy/k8s_check.py, with kubectl
//! and kubernetes-validate from PyPI in `.venv` (scripts/test installs
//! tests/peers/requirements-k8s.txt).

#[path = "../src/vault/testdb.rs"]
mod testdb;

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn kubernetes_manifests_render_validate_and_pass_check() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join(".venv/bin/python");
    let kubectl = repo.join(".venv/bin/kubectl");
    let installed = python.exists()
        && kubectl.exists()
        && Command::new(&python)
            .args(["-c", "import kubernetes_validate, yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        testdb::skip(
            "deploy::kubernetes_manifests_render_validate_and_pass_check: .venv lacks kubectl or \
             kubernetes-validate (scripts/test installs tests/peers/requirements-k8s.txt)",
        );
        return;
    }
    let out = Command::new(&python)
        .arg(repo.join("tests/deploy/k8s_check.py"))
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .arg(&kubectl)
        .output()
        .expect("run tests/deploy/k8s_check.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tests/deploy/k8s_check.py failed:\n{report}"
    );
    eprintln!("{report}");
}
