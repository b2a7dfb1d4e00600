//! Rego with regorus: every `*.rego` under the policy directory is compiled into one engine at
//! load time and warmed up. Each route's `decision` rule is then compiled to regorus's Rego VM
//! (RVM) bytecode ([`vm`]), run on a per-thread VM; a builtin error there sends the request to
//! the interpreter ([`guard`]). With `engine: interpreter`, for a package the VM cannot take,
//! and under `engine: auto` for one the VM could answer differently, a request evaluates a
//! clone of the prepared engine instead. Both run under a wall-clock limit. Undefined results,
//! errors and time-outs never allow.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::{ApprovalRequest, Decision, Refusal};
use crate::config::model::PolicyEngine;
use vm::{VmAnswer, VmProgram};

mod guard;
mod vm;

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
    /// SHA-256 (hex) of every module's name and text: the policies' revision.
    digest: String,
    /// RVM programs by entry point (`data.<package>.decision`).
    programs: HashMap<String, VmProgram>,
    /// Why the interpreter evaluates an entry point that has no VM program.
    interpreted: HashMap<String, String>,
}

/// The VM program for `entry` under `kind`, or why the interpreter evaluates it. `expected`
/// is the interpreter's answer to the warm-up input.
fn choose(
    engine: &Engine,
    entry: &str,
    kind: PolicyEngine,
    timer: ExecutionTimerConfig,
    expected: &Value,
) -> Result<VmProgram, String> {
    if kind == PolicyEngine::Interpreter {
        return Err("policies.engine: interpreter".into());
    }
    let program = VmProgram::compile(engine, entry, timer)
        .map_err(|e| format!("the Rego VM cannot compile it: {e}"))?;
    if kind == PolicyEngine::Auto {
        if let Some(why) = program.divergence() {
            return Err(format!("the Rego VM could answer it differently: {why}"));
        }
    }
    match program.run(sample_input()) {
        Ok(VmAnswer::Value(answer)) if &answer == expected => Ok(program),
        // The warm-up input gets the default: the interpreter checks that answer anyway.
        Ok(VmAnswer::Recheck) => Ok(program),
        Ok(VmAnswer::Value(answer)) => Err(format!(
            "the Rego VM answers the warm-up input {answer} instead of {expected}"
        )),
        Err(e) => Err(format!("the Rego VM fails on the warm-up input: {e}")),
    }
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
    engine_and_digest(dir, tests).map(|(e, f, _)| (e, f))
}

/// As [`engine_for_dir`], with the SHA-256 (hex) of the modules' names and texts.
fn engine_and_digest(
    dir: &Path,
    tests: bool,
) -> Result<(Engine, Vec<PathBuf>, String), PolicyLoadError> {
    let files = rego_files(dir, tests)?;
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(true);
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|err| PolicyLoadError::Read {
            path: path.clone(),
            err,
        })?;
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        for part in [name, text.as_bytes()] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        engine
            .add_policy(path.display().to_string(), text)
            .map_err(|e| PolicyLoadError::Compile {
                path: path.clone(),
                msg: e.to_string(),
            })?;
    }
    let digest = crate::state::hex(digest.finish().as_ref());
    Ok((engine, files, digest))
}

impl PolicySet {
    /// Compile `dir` and check that each of `packages` has a `decision` rule that evaluates
    /// on a sample input (this also runs regorus's one-time analysis, so clones skip it).
    pub fn load(
        dir: &Path,
        packages: &[&str],
        timeout: Duration,
        kind: PolicyEngine,
    ) -> Result<PolicySet, PolicyLoadError> {
        let timer = ExecutionTimerConfig {
            limit: timeout,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        };
        if packages.is_empty() && !dir.is_dir() {
            return Ok(PolicySet {
                engine: Engine::new(),
                files: Vec::new(),
                digest: String::new(),
                programs: HashMap::new(),
                interpreted: HashMap::new(),
            });
        }
        let (mut engine, files, digest) = engine_and_digest(dir, false)?;
        engine.set_execution_timer_config(timer);
        let mut programs = HashMap::new();
        let mut interpreted = HashMap::new();
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
            // Prepare the shared engine too, so per-request clones start analysed.
            engine.set_input(sample_input());
            let _ = engine.eval_rule(entrypoint(package));
            let entry = entrypoint(package);
            match choose(&engine, &entry, kind, timer, &result) {
                Ok(program) => {
                    programs.insert(entry, program);
                }
                Err(why) => {
                    if kind != PolicyEngine::Interpreter {
                        tracing::info!(package = %package, reason = %why, "package runs on the interpreter");
                    }
                    interpreted.insert(entry, why);
                }
            }
        }
        Ok(PolicySet {
            engine,
            files,
            digest,
            programs,
            interpreted,
        })
    }

    /// What evaluates `entrypoint`, and why not the VM: for `portcullis check`.
    pub fn evaluator(&self, entrypoint: &str) -> String {
        if self.on_vm(entrypoint) {
            return "the Rego VM".to_string();
        }
        self.interpreted.get(entrypoint).map_or_else(
            || "no policy".to_string(),
            |why| format!("the interpreter ({why})"),
        )
    }

    /// Whether `entrypoint` runs on the Rego VM (else on the interpreter).
    pub fn on_vm(&self, entrypoint: &str) -> bool {
        self.programs.contains_key(entrypoint)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// SHA-256 (hex) of the modules' names and texts: changes with any policy file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Evaluate `data.<package>.decision` on `input`.
    pub fn decide(&self, entrypoint: &str, input: Value) -> Result<Decision, String> {
        let value = match self.programs.get(entrypoint) {
            Some(program) => match program.run(input.clone())? {
                VmAnswer::Value(v) => v,
                // The strict interpreter's answer counts (vm::VmAnswer::Recheck).
                VmAnswer::Recheck => self.interpret_rule(entrypoint, input)?,
            },
            None => self.interpret_rule(entrypoint, input)?,
        };
        interpret(&value)
    }

    fn interpret_rule(&self, entrypoint: &str, input: Value) -> Result<Value, String> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        engine
            .eval_rule(entrypoint.to_string())
            .map_err(|e| e.to_string())
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
mod tests;
