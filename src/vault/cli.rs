//! `portcullis vault ...`: the admin API's operations, without a running gateway, on the
//! vault (SQLite file or PostgreSQL database) a configuration names. A gateway that is running keeps cached upstream tokens until they
//! expire; revoke through the admin API to drop them at once.

use clap::Subcommand;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::input::{meta_json, CredentialInput};
use super::{Vault, VaultKeys};
use crate::gateway::Gateway;

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Store a user's credential for a connection; the JSON document is read from stdin:
    /// {"access_token": "...", "refresh_token": "...", "expires_in": 3600, "scope": "..."}
    Put {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        connection: String,
        #[arg(long)]
        sub: String,
    },
    /// List stored credentials (metadata only, never a token).
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        connection: Option<String>,
    },
    /// Delete a user's credential for a connection.
    Revoke {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        connection: String,
        #[arg(long)]
        sub: String,
    },
    /// Re-encrypt every credential with the primary (first) key.
    RotateKey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a new key entry (`id:base64`) to put first in the key variable or file.
    GenerateKey,
}

fn store(config: &Path) -> Result<(Gateway, Vault), String> {
    let g = Gateway::load(config).map_err(|e| e.to_string())?;
    let store = g
        .credentials
        .vault()
        .cloned()
        .ok_or_else(|| format!("{}: no `vault:` section", config.display()))?;
    Ok((g, store))
}

/// Runs a vault call to completion.
fn wait<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(rt.block_on(f))
}

fn run_inner(cmd: VaultCommand) -> Result<(), String> {
    match cmd {
        VaultCommand::Put {
            config,
            connection,
            sub,
        } => {
            let (g, store) = store(&config)?;
            if !g.credentials.has_connection(&connection) {
                return Err(format!("unknown vault connection '{connection}'"));
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            let input: CredentialInput = serde_json::from_str(&text)
                .map_err(|e| format!("bad credential document on stdin: {e}"))?;
            let cred = input.into_credential(crate::auth::now())?;
            wait(store.put(&sub, &connection, &cred))?.map_err(|e| e.to_string())?;
            println!("stored {connection} credential of {sub}");
        }
        VaultCommand::List {
            config,
            sub,
            connection,
        } => {
            let (_, store) = store(&config)?;
            let list = wait(store.list(sub.as_deref(), connection.as_deref()))?
                .map_err(|e| e.to_string())?;
            for m in &list {
                println!("{}", meta_json(m));
            }
        }
        VaultCommand::Revoke {
            config,
            connection,
            sub,
        } => {
            let (_, store) = store(&config)?;
            if !wait(store.revoke(&sub, &connection))?.map_err(|e| e.to_string())? {
                return Err(format!("no {connection} credential of {sub}"));
            }
            println!("revoked {connection} credential of {sub}");
        }
        VaultCommand::RotateKey { config } => {
            let (_, store) = store(&config)?;
            let n = wait(store.rotate())?.map_err(|e| e.to_string())?;
            println!("re-encrypted {n} credentials with the primary key");
        }
        VaultCommand::GenerateKey => {
            println!("{}", VaultKeys::generate().map_err(|e| e.to_string())?)
        }
    }
    Ok(())
}

pub fn run(cmd: VaultCommand) -> ExitCode {
    match run_inner(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
