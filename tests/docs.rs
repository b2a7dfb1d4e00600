//! Every complete configuration in the documentation passes `portcullis check`.
//!
//! A fenced block whose info string is `yaml config` in README.md or docs/*.md is a whole
//! configuration file; plain `yaml` blocks are fragments and are not checked. Each marked
//! block is written to its own temporary directory, beside symbolic links to the repository's
//! `policies/` and `config/`, so relative paths resolve as they would for a file at the
//! repository root (paths in a config are relative to its own directory), and store files
//! (`vault.path`, `approvals.store`) land in the temporary directory (`check` creates neither).
//! `check` runs with the repository root as its working directory and, for every `*_env: NAME`
//! in the block, `NAME` set to a dummy value of the right shape: a key entry for `*key_env`, a
//! Redis URL for `url_env`, any text otherwise. A relative `private_key_file` that does not
//! exist is a throw-away key from tests/keys; a relative `*_key_file` (vault, MCP state, token
//! cache) is a key entry; `client_secret_file` and `token_file` are any text. `check` needs no
//! network: the JWKS is fetched by `run`, not by `check` (asserted below).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A well-formed vault / state / cache key entry (`id:base64` of 32 bytes). It protects nothing.
const DOCS_KEY: &str = "docs:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Longest one `check` may take before the block is reported as hanging.
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One `yaml config` block: the file it is in (relative to the repository), the 1-based line
/// of its opening fence, and its text.
#[derive(Debug)]
struct Snippet {
    file: String,
    line: usize,
    text: String,
}

/// README.md and docs/*.md, in a stable order.
fn doc_files() -> Vec<PathBuf> {
    let root = repo();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    let mut files = vec![root.join("README.md")];
    files.extend(docs);
    files
}

/// The `yaml config` blocks of one markdown text. Fences are lines starting with three or more
/// backticks (after up to three spaces); a block ends at a fence at least as long as its own.
fn config_blocks(file: &str, markdown: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    // (fence length, whether the block is marked, its line, its text)
    let mut open: Option<(usize, bool, usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let ticks = trimmed.bytes().take_while(|&b| b == b'`').count();
        let is_fence = indent <= 3 && ticks >= 3;
        match &mut open {
            None if is_fence => {
                let mut info = trimmed[ticks..].split_whitespace();
                let marked = info.next() == Some("yaml") && info.any(|w| w == "config");
                open = Some((ticks, marked, i + 1, String::new()));
            }
            None => {}
            Some((len, marked, start, text)) => {
                if is_fence && ticks >= *len && trimmed[ticks..].trim().is_empty() {
                    if *marked {
                        out.push(Snippet {
                            file: file.to_string(),
                            line: *start,
                            text: std::mem::take(text),
                        });
                    }
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    out
}

/// Every `KEY: VALUE` pair whose key ends in `suffix` (`_env`, `_file`), in block or flow
/// style, comments included (setting a variable a comment names does no harm).
fn keyed_values<'a>(text: &'a str, suffix: &str) -> Vec<(&'a str, &'a str)> {
    let needle = format!("{suffix}:");
    let mut out = Vec::new();
    for line in text.lines() {
        let mut from = 0;
        while let Some(pos) = line[from..].find(&needle).map(|p| p + from) {
            let end = pos + suffix.len();
            let start = line[..pos]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let rest = line[end + 1..].trim_start();
            let value = rest
                .split(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | ']' | '#'))
                .next()
                .unwrap_or("")
                .trim_matches(|c| c == '"' || c == '\'');
            if !value.is_empty() {
                out.push((&line[start..end], value));
            }
            from = end + 1;
        }
    }
    out
}

/// The environment a block names, with dummy values of the right shape.
fn env_for(text: &str) -> BTreeMap<String, String> {
    keyed_values(text, "_env")
        .into_iter()
        .filter(|(_, name)| {
            name.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(|(key, name)| {
            let value = if key.ends_with("key_env") {
                DOCS_KEY
            } else if key == "url_env" {
                "redis://127.0.0.1:6379/0"
            } else {
                "docs-dummy-secret"
            };
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// Files a block names by relative path that do not exist: written into `dir` with dummy
/// content of the right shape (see the module docs). Others are left for `check` to report.
fn provide_files(text: &str, dir: &Path) {
    for (key, value) in keyed_values(text, "_file") {
        let path = dir.join(value);
        if Path::new(value).is_absolute() || path.exists() {
            continue;
        }
        let content = match key {
            "private_key_file" => std::fs::read_to_string(repo().join("tests/keys/rs256.pem"))
                .expect("tests/keys/rs256.pem"),
            k if k.ends_with("key_file") => DOCS_KEY.to_string(),
            "client_secret_file" | "token_file" => "docs-dummy-secret".to_string(),
            _ => continue,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
    }
}

/// Runs `portcullis check` on `yaml` (written into a fresh temporary directory that links the
/// repository's `policies/` and `config/`) with `env`. Ok: its stdout; Err: exit code, stderr
/// and the path the config was written to (to map line numbers back).
fn check(yaml: &str, env: &BTreeMap<String, String>) -> Result<String, (String, PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    for linked in ["policies", "config"] {
        std::os::unix::fs::symlink(repo().join(linked), dir.path().join(linked)).unwrap();
    }
    provide_files(yaml, dir.path());
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .current_dir(repo())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > CHECK_TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    match status {
        Some(s) if s.success() && out.contains(": OK") => Ok(out),
        Some(s) => {
            let code = s.code().map_or("a signal".to_string(), |c| c.to_string());
            Err((format!("exit {code}: {out}{err}"), path))
        }
        None => Err((format!("still running after {CHECK_TIME_LIMIT:?}"), path)),
    }
}

/// `check`'s message with `<temp file>:N:` turned into `<doc>:<line in the doc>:`.
fn in_doc_terms(message: &str, written: &Path, snippet: &Snippet) -> String {
    let prefix = format!("{}:", written.display());
    let mut out = String::new();
    let mut rest = message;
    while let Some(pos) = rest.find(&prefix) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + prefix.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&format!("{}:{}", snippet.file, snippet.line + n)),
            Err(_) => out.push_str(&format!("{}:{}", snippet.file, snippet.line)),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out.trim().to_string()
}

#[test]
fn every_config_snippet_passes_check() {
    let root = repo();
    let mut snippets = Vec::new();
    for path in doc_files() {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        snippets.extend(config_blocks(&name, &text));
    }
    assert!(
        !snippets.is_empty(),
        "no ```yaml config block in README.md or docs/*.md: the marker was lost, so nothing \
         would be checked"
    );
    let mut failures = Vec::new();
    for s in &snippets {
        if let Err((message, written)) = check(&s.text, &env_for(&s.text)) {
            failures.push(format!(
                "{}:{}: this `yaml config` block fails `portcullis check`:\n    {}",
                s.file,
                s.line,
                in_doc_terms(&message, &written, s)
            ));
        }
    }
    eprintln!("checked {} `yaml config` blocks", snippets.len());
    assert!(
        failures.is_empty(),
        "{} of {} config blocks fail:\n{}",
        failures.len(),
        snippets.len(),
        failures.join("\n")
    );
}

/// `check` does not fetch the JWKS: a `jwks_uri` at a local port that records connections
/// passes, and nothing connected to it.
#[test]
fn check_needs_no_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let yaml = format!(
        "version: 1\nlisten: \"127.0.0.1:8080\"\nissuers:\n  - name: corp\n    \
         issuer: \"http://127.0.0.1:{port}\"\n    jwks_uri: \"http://127.0.0.1:{port}/jwks\"\n    \
         audiences: [api]\nroutes:\n  - name: invoices\n    match: {{ path_prefix: /invoices }}\n    \
         upstream: \"http://127.0.0.1:9000\"\n    auth: {{ issuer: corp }}\n    policy: invoices\n"
    );
    let out = check(&yaml, &BTreeMap::new()).unwrap_or_else(|(e, _)| panic!("{e}"));
    assert!(out.contains("OK"), "{out}");
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("check connected to the JWKS endpoint (from {peer})"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn blocks_and_names_are_found() {
    let md = "text\n```yaml config\nversion: 1\n```\n```yaml\nfragment: 1\n```\n\
              ````md\n```yaml config\nnot: a block\n```\n````\n  ```yaml config\nb: 2\n  ```\n";
    let blocks = config_blocks("x.md", md);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!((blocks[0].line, &*blocks[0].text), (2, "version: 1\n"));
    assert_eq!((blocks[1].line, &*blocks[1].text), (13, "b: 2\n"));

    let env = env_for(
        "admin: { token_env: ADMIN_T, listen: x }\n  key_env: VK   # or key_file\n\
         redis: { url_env: R_URL, cache_key_env: \"CK\" }\n#   url_env: NAME (a comment)\n",
    );
    assert_eq!(env["ADMIN_T"], "docs-dummy-secret");
    assert_eq!(env["VK"], DOCS_KEY);
    assert_eq!(env["CK"], DOCS_KEY);
    assert_eq!(env["R_URL"], "redis://127.0.0.1:6379/0");
    assert_eq!(env.len(), 5, "{env:?}");
}
