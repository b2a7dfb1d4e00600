//! `portcullis receipts verify|list`: the approval receipts chain of the store a
//! configuration names (the SQLite `approvals.store`, or Redis with `state.backend: redis`),
//! read without a running gateway.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use super::backend::ApprovalBackend;
use super::receipts::{Break, Verifier};
use crate::gateway::Gateway;

/// Receipts read per round trip.
const PAGE: usize = 1000;

#[derive(Subcommand)]
pub enum ReceiptsCommand {
    /// Walk the chain from its first receipt: exit 0 and print the head (keep it elsewhere:
    /// a later `verify` showing an older head means receipts were cut off the end), or exit 1
    /// naming the first receipt that was edited, removed, inserted or reordered.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print receipts as JSON lines, in chain order.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this user's receipts.
        #[arg(long)]
        sub: Option<String>,
        /// Start after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn store(config: &Path) -> Result<Arc<dyn ApprovalBackend>, String> {
    let g = Gateway::check(config).map_err(|e| e.to_string())?;
    g.approvals.store().cloned().ok_or_else(|| {
        format!(
            "{}: no approval store (set `approvals.store` or `state.backend: redis`), or its file does not exist yet",
            config.display()
        )
    })
}

pub fn run(command: ReceiptsCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match command {
            ReceiptsCommand::Verify { config } => verify(store(&config)?).await,
            ReceiptsCommand::List {
                config,
                sub,
                after,
                limit,
            } => list(store(&config)?, sub.as_deref(), after, limit).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn verify(store: Arc<dyn ApprovalBackend>) -> Result<ExitCode, String> {
    let mut v = Verifier::default();
    let mut after = 0;
    let mut head = None;
    loop {
        let rows = store
            .receipts(after, PAGE, None)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            break;
        }
        for (position, row) in rows {
            after = position;
            let checked = match row {
                Ok(r) => v.push(&r).map(|()| r),
                Err(why) => Err(Break::Unreadable { position, why }),
            };
            match checked {
                Ok(r) => head = Some((r.seq, r.hash)),
                Err(b) => {
                    println!("receipts: chain broken at {b}");
                    println!("receipts: {} receipts before it verify", v.checked);
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    match head {
        Some((seq, hash)) => println!("receipts: OK, {seq} receipts; head {seq} {hash}"),
        None => println!("receipts: OK, no receipts yet"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(
    store: Arc<dyn ApprovalBackend>,
    sub: Option<&str>,
    after: u64,
    limit: usize,
) -> Result<ExitCode, String> {
    let rows = store
        .receipts(after, limit, sub)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    for (position, row) in rows {
        let line = match row {
            Ok(r) => serde_json::to_string(&r).map_err(|e| e.to_string())?,
            Err(why) => serde_json::json!({"position": position, "unreadable": why}).to_string(),
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}
