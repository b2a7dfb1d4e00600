//! `portcullis run|check|policy test|vault|receipts`. Plain `fn main`: pingora owns its runtimes.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use portcullis::approval::cli::ReceiptsCommand;
use portcullis::gateway::Gateway;
use portcullis::policy::testing;
use portcullis::vault::cli::VaultCommand;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// mimalloc: Rego evaluation and JSON handling allocate a lot; measured ~23% fewer
/// instructions per Rego decision than the system allocator (README, "Benchmarks").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Identity- and policy-aware gateway for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a configuration file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and compile its policies; exit non-zero on any error.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Policy tooling.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The built-in credential vault, offline.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// The approval receipts chain: verify it, list receipts.
    Receipts {
        #[command(subcommand)]
        command: ReceiptsCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in `*_test.rego` files (like `opa test`).
    Test {
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
}

/// Logs go to stderr through a writer thread: a request's thread only formats its line and
/// hands it over (never blocking on the write; lines are never dropped: `lossy(false)`), and
/// the writer thread writes what has queued up in one go. The guard flushes on exit.
fn init_tracing() -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // Other crates' debug and trace records (pingora, hyper, reqwest, ...) print whole
    // request headers, tokens included: never emit them, whatever PORTCULLIS_LOG says.
    let no_secrets = tracing_subscriber::filter::filter_fn(|m| {
        m.target().starts_with("portcullis") || *m.level() <= tracing::Level::INFO
    });
    if std::env::var("PORTCULLIS_LOG_FORMAT").as_deref() == Ok("text") {
        builder.finish().with(no_secrets).init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(no_secrets)
            .init();
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Gateway::check(&config) {
            Ok(g) => {
                println!(
                    "{}: OK ({} issuers, {} routes, {} policy files)",
                    config.display(),
                    g.config.issuers.len(),
                    g.config.routes.len(),
                    g.policies.files().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let _log = init_tracing();
            let gateway = match Gateway::load(&config) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match portcullis::server::run(gateway) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Vault { command } => portcullis::vault::cli::run(command),
        Command::Receipts { command } => portcullis::approval::cli::run(command),
        Command::Policy {
            command: PolicyCommand::Test { dir },
        } => match testing::run(&dir) {
            Ok(results) => {
                let mut out = std::io::stdout();
                match testing::report(&results, &mut out) {
                    Ok(true) => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
