//! `portcullis run|check|explain|policy test|vault|receipts`. Plain `fn main`: pingora owns its runtimes.
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
use tracing_subscriber::Layer;

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
    /// Why would the gateway answer this request as it does? Route, identity, scopes, the
    /// policy input and decision, and what happens next. No network unless --fetch-jwks.
    /// Exit 0: forwarded (perhaps once approved); 1: refused; 2: error.
    Explain(ExplainArgs),
    /// The approval receipts chain: verify it, list receipts.
    Receipts {
        #[command(subcommand)]
        command: ReceiptsCommand,
    },
}

#[derive(clap::Args)]
struct ExplainArgs {
    #[arg(long, short)]
    config: PathBuf,
    /// Explain for this route instead of the one the request matches.
    #[arg(long)]
    route: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request target: path and query (`/invoices/finance/INV-1?x=1`).
    #[arg(long)]
    path: String,
    #[arg(long, default_value = "localhost")]
    host: String,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The body: text, or `@file`.
    #[arg(long)]
    body: Option<String>,
    /// The bearer token: text, or `@file`.
    #[arg(long, conflicts_with = "claims")]
    token: Option<String>,
    /// Instead of a token: its claims as JSON, text or `@file` (taken as verified).
    #[arg(long)]
    claims: Option<String>,
    /// Fetch the issuer's JWKS to verify the token (the only network call).
    #[arg(long)]
    fetch_jwks: bool,
}

/// `text` or the contents of `@file`.
fn text_or_file(value: &str) -> Result<Vec<u8>, String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}")),
        None => Ok(value.as_bytes().to_vec()),
    }
}

fn explain(args: ExplainArgs) -> Result<ExitCode, String> {
    use portcullis::explain::{Caller, Request};
    let g = Gateway::check(&args.config).map_err(|e| e.to_string())?;
    let caller = match (&args.token, &args.claims) {
        (Some(t), _) => {
            let t = String::from_utf8(text_or_file(t)?).map_err(|e| e.to_string())?;
            Some(Caller::Token(t.trim().to_string()))
        }
        (None, Some(c)) => Some(Caller::Claims(
            serde_json::from_slice(&text_or_file(c)?)
                .map_err(|e| format!("--claims: not a JSON object: {e}"))?,
        )),
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header '{h}': expected 'name: value'"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let req = Request {
        method: args.method,
        target: args.path,
        host: args.host,
        headers,
        body: args
            .body
            .as_deref()
            .map(text_or_file)
            .transpose()?
            .unwrap_or_default(),
        caller,
        fetch_jwks: args.fetch_jwks,
        route: args.route,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let explained = runtime.block_on(portcullis::explain::explain(&g, &req));
    print!("{}", explained.text);
    Ok(if explained.forwarded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
/// The trace-export layer for subscriber `S`, when `telemetry.otlp` is set.
fn traces<S>(
    otlp: Option<&portcullis::config::telemetry::OtlpSpec>,
) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match portcullis::telemetry::layer(otlp?) {
        Ok(layer) => Some(layer),
        Err(e) => {
            eprintln!("warning: {e}; traces are off");
            None
        }
    }
}

fn init_tracing(otlp: Option<&portcullis::config::telemetry::OtlpSpec>) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    // Other crates' debug and trace records (pingora, hyper, reqwest, ...) print whole
    // request headers, tokens included: never emit them, whatever PORTCULLIS_LOG says.
    let no_secrets = tracing_subscriber::filter::filter_fn(|m| {
        m.target().starts_with("portcullis") || *m.level() <= tracing::Level::INFO
    });
    // Log lines follow PORTCULLIS_LOG; spans (only with `telemetry.otlp`) go to the
    // collector, never into log lines.
    let registry = tracing_subscriber::registry().with(no_secrets);
    if std::env::var("PORTCULLIS_LOG_FORMAT").as_deref() == Ok("text") {
        let logs = tracing_subscriber::fmt::layer().with_writer(writer);
        registry
            .with(logs.with_filter(filter))
            .with(traces(otlp))
            .init();
    } else {
        let logs = tracing_subscriber::fmt::layer()
            .event_format(portcullis::logformat::JsonLines)
            .with_writer(writer);
        registry
            .with(logs.with_filter(filter))
            .with(traces(otlp))
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
                for r in &g.config.routes {
                    if let Some(package) = &r.policy {
                        let entry = portcullis::policy::rego::entrypoint(package);
                        let how = g.policies.evaluator(&entry);
                        println!("  route {}: policy {package} on {how}", r.name);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            // `telemetry:` is read before anything logs: the trace exporter is part of the
            // subscriber. A broken file is reported by the load below.
            let otlp = portcullis::config::load(&config)
                .ok()
                .and_then(|(_, c)| c.otlp);
            let _log = init_tracing(otlp.as_ref());
            let gateway = match Gateway::load(&config) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let served = portcullis::server::run(gateway);
            portcullis::telemetry::flush();
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Vault { command } => portcullis::vault::cli::run(command),
        Command::Receipts { command } => portcullis::approval::cli::run(command),
        Command::Explain(args) => explain(args).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }),
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
