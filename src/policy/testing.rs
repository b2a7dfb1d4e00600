//! `portcullis policy test [DIR]`: runs every `test_*` rule of the `*_test.rego` files in a
//! directory (with all other modules loaded), like `opa test`. A test passes when its rule
//! evaluates to `true`; false, undefined and errors fail.

use std::path::{Path, PathBuf};
use std::time::Instant;

use regorus::Value;

use super::rego::{engine_for_dir, PolicyLoadError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Error(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub file: PathBuf,
    /// Full rule path, e.g. `data.invoices_test.test_read_allowed`.
    pub rule: String,
    pub outcome: Outcome,
    pub micros: u128,
}

/// `(package, [test rule names])` declared in a test module's text.
fn discover(text: &str) -> Option<(String, Vec<String>)> {
    let mut package = None;
    let mut tests = Vec::new();
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("package ") {
            package = Some(p.trim().to_string());
        }
        if line.starts_with("test_") {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !tests.contains(&name) {
                tests.push(name);
            }
        }
    }
    package.map(|p| (p, tests))
}

pub fn run(dir: &Path) -> Result<Vec<TestResult>, PolicyLoadError> {
    let (engine, files) = engine_for_dir(dir, true)?;
    let mut results = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.to_string_lossy().ends_with("_test.rego"))
    {
        let text = std::fs::read_to_string(file).map_err(|err| PolicyLoadError::Read {
            path: file.clone(),
            err,
        })?;
        let Some((package, tests)) = discover(&text) else {
            continue;
        };
        for test in tests {
            let rule = format!("data.{package}.{test}");
            let mut e = engine.clone();
            let start = Instant::now();
            let outcome = match e.eval_rule(rule.clone()) {
                Ok(Value::Bool(true)) => Outcome::Pass,
                Ok(_) => Outcome::Fail,
                Err(err) => Outcome::Error(err.to_string()),
            };
            results.push(TestResult {
                file: file.clone(),
                rule,
                outcome,
                micros: start.elapsed().as_micros(),
            });
        }
    }
    Ok(results)
}

/// Print results like `opa test`; returns whether every test passed (and at least one ran).
pub fn report(results: &[TestResult], out: &mut impl std::io::Write) -> std::io::Result<bool> {
    let mut last: Option<&PathBuf> = None;
    for r in results {
        if last != Some(&r.file) {
            writeln!(out, "{}:", r.file.display())?;
            last = Some(&r.file);
        }
        match &r.outcome {
            Outcome::Pass => writeln!(out, "{}: PASS ({}µs)", r.rule, r.micros)?,
            Outcome::Fail => writeln!(out, "{}: FAIL ({}µs)", r.rule, r.micros)?,
            Outcome::Error(e) => writeln!(out, "{}: ERROR: {e}", r.rule)?,
        }
    }
    let passed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .count();
    writeln!(out, "{}", "-".repeat(80))?;
    if results.is_empty() {
        writeln!(
            out,
            "no tests found (rules named test_* in *_test.rego files)"
        )?;
        return Ok(false);
    }
    if passed == results.len() {
        writeln!(out, "PASS: {passed}/{}", results.len())?;
    } else {
        writeln!(out, "PASS: {passed}/{}", results.len())?;
        writeln!(out, "FAIL: {}/{}", results.len() - passed, results.len())?;
    }
    Ok(passed == results.len())
}

#[cfg(test)]
mod tests {
    use super::{report, run, Outcome};

    #[test]
    fn runs_passing_failing_and_erroring_tests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.rego"),
            "package p\ndefault decision := {\"allow\": false}\ndecision := {\"allow\": true} if input.ok\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p_test.rego"),
            "package p_test\nimport data.p\n\
             test_allows if p.decision.allow with input as {\"ok\": true}\n\
             test_wrong if p.decision.allow with input as {\"ok\": false}\n\
             test_boom if 1 / 0 == 1\n",
        )
        .unwrap();
        let results = run(dir.path()).unwrap();
        let outcomes: Vec<_> = results
            .iter()
            .map(|r| (r.rule.as_str(), &r.outcome))
            .collect();
        assert_eq!(outcomes[0], ("data.p_test.test_allows", &Outcome::Pass));
        assert_eq!(outcomes[1], ("data.p_test.test_wrong", &Outcome::Fail));
        assert!(matches!(outcomes[2].1, Outcome::Error(_) | Outcome::Fail));
        let mut out = Vec::new();
        assert!(!report(&results, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("PASS: 1/3"), "{text}");
    }
}
