//! Rego with regorus: every `*.rego` under the policy directory is compiled into one engine at
//! load time and warmed up; each request evaluates a clone of that prepared engine under a
//! wall-clock limit. Undefined results, errors and time-outs never allow.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::{ApprovalRequest, Decision, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("cannot read policy directory {}: {err}", path.display())]
    Dir { path: PathBuf, err: std::io::Error },
    #[error("cannot read {}: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Compile { path: PathBuf, msg: String },
    #[error("no module declares package '{package}' in {}", dir.display())]
    MissingPackage { package: String, dir: PathBuf },
    #[error("package '{package}': {msg}")]
    Rule { package: String, msg: String },
}

/// The compiled policies of one configuration.
#[derive(Clone)]
pub struct PolicySet {
    engine: Engine,
    files: Vec<PathBuf>,
}

/// Longest `binding_message` (Auth0's limit).
pub const BINDING_MESSAGE_MAX: usize = 64;

fn rego_files(dir: &Path, tests: bool) -> Result<Vec<PathBuf>, PolicyLoadError> {
    let entries = std::fs::read_dir(dir).map_err(|err| PolicyLoadError::Dir {
        path: dir.to_path_buf(),
        err,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".rego") && (tests || !name.ends_with("_test.rego"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// An engine holding every module of `dir` (with `*_test.rego` files when `tests`).
pub fn engine_for_dir(dir: &Path, tests: bool) -> Result<(Engine, Vec<PathBuf>), PolicyLoadError> {
    let files = rego_files(dir, tests)?;
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(true);
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|err| PolicyLoadError::Read {
            path: path.clone(),
            err,
        })?;
        engine
            .add_policy(path.display().to_string(), text)
            .map_err(|e| PolicyLoadError::Compile {
                path: path.clone(),
                msg: e.to_string(),
            })?;
    }
    Ok((engine, files))
}

impl PolicySet {
    /// Compile `dir` and check that each of `packages` has a `decision` rule that evaluates
    /// on a sample input (this also runs regorus's one-time analysis, so clones skip it).
    pub fn load(
        dir: &Path,
        packages: &[&str],
        timeout: Duration,
    ) -> Result<PolicySet, PolicyLoadError> {
        if packages.is_empty() && !dir.is_dir() {
            return Ok(PolicySet {
                engine: Engine::new(),
                files: Vec::new(),
            });
        }
        let (mut engine, files) = engine_for_dir(dir, false)?;
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: timeout,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        });
        let declared = engine
            .get_packages()
            .map_err(|e| PolicyLoadError::Compile {
                path: dir.to_path_buf(),
                msg: e.to_string(),
            })?;
        for package in packages {
            if !declared
                .iter()
                .any(|d| d.strip_prefix("data.") == Some(package))
            {
                return Err(PolicyLoadError::MissingPackage {
                    package: package.to_string(),
                    dir: dir.to_path_buf(),
                });
            }
            let mut warm = engine.clone();
            warm.set_input(sample_input());
            let result =
                warm.eval_rule(entrypoint(package))
                    .map_err(|e| PolicyLoadError::Rule {
                        package: package.to_string(),
                        msg: format!("data.{package}.decision: {e}"),
                    })?;
            drop(result);
            // Prepare the shared engine too, so per-request clones start analysed.
            engine.set_input(sample_input());
            let _ = engine.eval_rule(entrypoint(package));
        }
        Ok(PolicySet { engine, files })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Evaluate `data.<package>.decision` on `input`.
    pub fn decide(&self, entrypoint: &str, input: Value) -> Result<Decision, String> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let value = engine
            .eval_rule(entrypoint.to_string())
            .map_err(|e| e.to_string())?;
        interpret(&value)
    }
}

/// The entry point evaluated for a route's policy package.
pub fn entrypoint(package: &str) -> String {
    format!("data.{package}.decision")
}

fn sample_input() -> Value {
    super::input::build(
        "warm-up",
        super::input::RequestInfo {
            method: "GET",
            path: "/",
            ..Default::default()
        },
        &Value::new_object(),
        None,
    )
}

fn binding_message_ok(m: &str) -> bool {
    !m.is_empty()
        && m.chars().count() <= BINDING_MESSAGE_MAX
        && m.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "+-_.,:#".contains(c))
}

/// The policy's `decision` object → `Decision`. Anything unexpected is an error (→ deny).
pub fn interpret(v: &Value) -> Result<Decision, String> {
    match v {
        Value::Undefined => {
            return Err("decision is undefined (declare `default decision := {...}`)".into())
        }
        Value::Object(_) => {}
        _ => return Err("decision is not an object".into()),
    }
    let allow = match &v["allow"] {
        Value::Bool(b) => *b,
        Value::Undefined => return Err("decision.allow is missing".into()),
        _ => return Err("decision.allow is not a boolean".into()),
    };
    let reason = match &v["reason"] {
        Value::String(s) => Some(s.to_string()),
        Value::Undefined | Value::Null => None,
        _ => return Err("decision.reason is not a string".into()),
    };
    if !allow {
        return Ok(Decision::Deny(Refusal::PolicyDenied {
            reason: reason.unwrap_or_else(|| "denied by policy".into()),
        }));
    }
    let approval = &v["require_approval"];
    match approval {
        Value::Undefined | Value::Null | Value::Bool(false) => Ok(Decision::Allow),
        Value::Object(_) => approval_request(approval).map(Decision::RequireApproval),
        _ => Err("decision.require_approval is not an object".into()),
    }
}

fn approval_request(a: &Value) -> Result<ApprovalRequest, String> {
    let binding_message = match &a["binding_message"] {
        Value::String(s) if binding_message_ok(s) => s.to_string(),
        Value::String(_) => {
            return Err(format!(
                "binding_message must be 1-{BINDING_MESSAGE_MAX} characters of letters, digits, spaces and +-_.,:#"
            ))
        }
        _ => return Err("require_approval.binding_message is missing".into()),
    };
    let details = match &a["authorization_details"] {
        Value::Undefined => serde_json::Value::Array(vec![]),
        d => {
            let json = d.to_json_str().map_err(|e| e.to_string())?;
            serde_json::from_str(&json).map_err(|e| e.to_string())?
        }
    };
    let ok = details.as_array().is_some_and(|items| {
        items
            .iter()
            .all(|i| i.get("type").is_some_and(|t| t.is_string()))
    });
    if !ok {
        return Err(
            "authorization_details must be an array of objects with a string `type`".into(),
        );
    }
    let scope = match &a["scope"] {
        Value::String(s) => Some(s.to_string()),
        _ => None,
    };
    let expiry = a["expiry"].as_u64().ok();
    Ok(ApprovalRequest {
        binding_message,
        authorization_details: details,
        scope,
        expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::{interpret, PolicySet};
    use crate::policy::{Decision, Refusal};
    use regorus::Value;
    use std::time::Duration;

    fn v(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    #[test]
    fn interpret_allow_and_deny() {
        assert_eq!(
            interpret(&v(r#"{"allow":true,"reason":"ok"}"#)),
            Ok(Decision::Allow)
        );
        assert_eq!(
            interpret(&v(r#"{"allow":false,"reason":"too much"}"#)),
            Ok(Decision::Deny(Refusal::PolicyDenied {
                reason: "too much".into()
            }))
        );
    }

    #[test]
    fn interpret_rejects_garbage() {
        assert!(interpret(&Value::Undefined).is_err());
        assert!(interpret(&v(r#"{"allow":"yes"}"#)).is_err());
        assert!(interpret(&v(r#"{"reason":"x"}"#)).is_err());
        assert!(interpret(&v("true")).is_err());
    }

    #[test]
    fn interpret_approval() {
        let d = interpret(&v(
            r#"{"allow":true,"require_approval":{"binding_message":"Pay INV-1: 120 EUR",
                "authorization_details":[{"type":"payment","amount":120}]}}"#,
        ))
        .unwrap();
        match d {
            Decision::RequireApproval(a) => {
                assert_eq!(a.binding_message, "Pay INV-1: 120 EUR");
                assert_eq!(a.authorization_details[0]["amount"], 120);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(interpret(&v(
            r#"{"allow":true,"require_approval":{"binding_message":"<script>"}}"#
        ))
        .is_err());
        let long = "x".repeat(65);
        let doc = format!(r#"{{"allow":true,"require_approval":{{"binding_message":"{long}"}}}}"#);
        assert!(interpret(&v(&doc)).is_err());
    }

    fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn load_checks_packages_and_time_limit_denies() {
        let dir = policy_dir(&[(
            "p.rego",
            "package p\ndefault decision := {\"allow\": false}\n\
             decision := {\"allow\": true} if { input.request.method == \"GET\" }\n\
             slow if { some i in numbers.range(1, 100000000); i < 0 }\n\
             loop := {\"allow\": true} if { slow }\n",
        )]);
        assert!(PolicySet::load(dir.path(), &["nope"], Duration::from_millis(50)).is_err());
        let set = PolicySet::load(dir.path(), &["p"], Duration::from_millis(20)).unwrap();
        let input = v(r#"{"request":{"method":"GET"}}"#);
        assert_eq!(
            set.decide("data.p.decision", input.clone()),
            Ok(Decision::Allow)
        );
        // A runaway rule hits the time limit and errors (the gateway then denies).
        assert!(set.decide("data.p.loop", input).is_err());
    }
}
