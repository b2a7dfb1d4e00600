//! Hot reload: on SIGHUP or `POST /admin/reload` the config file and policies are read,
//! validated and compiled again, and the new `Gateway` is swapped in atomically. A request
//! keeps the `Gateway` it loaded when it began, so in-flight requests finish on the old one.
//! A configuration that does not load, or that changes a setting only a restart can apply,
//! is rejected: the running configuration keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Mutex};

use crate::auth::now;
use crate::config::model::Config;
use crate::config::{ConfigError, Source};
use crate::gateway::Gateway;

/// Fail unless every setting applied only at start is the same in `new` as in `old`
/// (listeners, TLS files, admin listener, `server:`, the approval store, `telemetry:`,
/// `state:`).
pub fn unchanged_at_runtime(
    source: &Source,
    old: &Config,
    new: &Config,
) -> Result<(), ConfigError> {
    let fixed = |field: &str, running: String, file: String| -> Result<(), ConfigError> {
        if running == file {
            return Ok(());
        }
        Err(source.error(
            field,
            format!(
                "cannot change without a restart (running: {running}; file: {file}); \
                 reload rejected, the running configuration keeps serving"
            ),
        ))
    };
    let listen = |c: &Config| {
        let tls = c.listen.tls.as_ref().map_or("no TLS".to_string(), |t| {
            format!("TLS {} {}", t.cert_file.display(), t.key_file.display())
        });
        format!("{} h2c={} {tls}", c.listen.addr, c.listen.h2c)
    };
    if old.listen != new.listen {
        fixed("listen", listen(old), listen(new))?;
    }
    let admin = |c: &Config| c.admin_listen.map_or("off".to_string(), |a| a.to_string());
    fixed("admin.listen", admin(old), admin(new))?;
    if old.server != new.server {
        fixed(
            "server",
            format!("{:?}", old.server),
            format!("{:?}", new.server),
        )?;
    }
    let store = |c: &Config| {
        c.approvals
            .store
            .as_ref()
            .map_or("none".to_string(), |p| p.display().to_string())
    };
    fixed("approvals.store", store(old), store(new))?;
    // The trace exporter is part of the log subscriber, built once at start.
    let otlp = |c: &Config| {
        c.otlp.as_ref().map_or("off".to_string(), |o| {
            format!("{} ratio {}", o.endpoint, o.sample_ratio)
        })
    };
    if old.otlp != new.otlp {
        fixed("telemetry.otlp", otlp(old), otlp(new))?;
    }
    let ext = |c: &Config| {
        c.ext_authz
            .as_ref()
            .map_or("off".to_string(), |e| e.listen.to_string())
    };
    fixed("ext_authz.listen", ext(old), ext(new))?;
    if old.state != new.state {
        // Described without the URL (it may hold a password).
        let describe = |c: &Config| match &c.state {
            crate::config::model::StateSpec::Embedded => "embedded".to_string(),
            crate::config::model::StateSpec::Redis(r) => format!("redis {r:?}"),
        };
        let (running, file) = (describe(old), describe(new));
        let (running, file) = if running == file {
            (
                format!("{running} (URL or key)"),
                format!("{file} (changed)"),
            )
        } else {
            (running, file)
        };
        fixed("state", running, file)?;
    }
    Ok(())
}

/// The outcome of a successful reload.
#[derive(Debug, Clone, Copy)]
pub struct Reloaded {
    pub generation: u64,
    pub routes: usize,
}

/// Reloads the configuration into the shared state, one reload at a time.
pub struct Reloader {
    path: PathBuf,
    state: Arc<ArcSwap<Gateway>>,
    lock: Mutex<()>,
    generation: watch::Sender<u64>,
}

impl Reloader {
    /// A reloader for `state`, loaded from `path` (generation 1).
    pub fn new(path: PathBuf, state: Arc<ArcSwap<Gateway>>) -> Reloader {
        let (generation, _) = watch::channel(1);
        state.load().metrics.reloads.serving(1, now());
        Reloader {
            path,
            state,
            lock: Mutex::new(()),
            generation,
        }
    }

    /// Notified with the generation after every successful reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Load, validate and compile the file again and swap it in; on error nothing changes.
    /// `trigger` (`SIGHUP`, `admin`) is logged.
    pub async fn reload(&self, trigger: &'static str) -> Result<Reloaded, ConfigError> {
        let _one_at_a_time = self.lock.lock().await;
        let old = self.state.load_full();
        let path = self.path.clone();
        let previous = old.clone();
        let loaded = tokio::task::spawn_blocking(move || Gateway::reload(&path, &previous))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError {
                    file: self.path.clone(),
                    field: None,
                    line: None,
                    column: None,
                    message: format!("the reload task failed: {e}"),
                })
            });
        let metrics = &old.metrics.reloads;
        match loaded {
            Ok(new) => {
                let routes = new.config.routes.len();
                let generation = *self.generation.borrow() + 1;
                self.state.store(Arc::new(new));
                metrics.outcome(true);
                metrics.serving(generation, now());
                self.generation.send_replace(generation);
                tracing::info!(trigger, generation, routes, file = %self.path.display(), "configuration reloaded");
                Ok(Reloaded { generation, routes })
            }
            Err(e) => {
                metrics.outcome(false);
                tracing::error!(trigger, error = %e, "configuration reload rejected; the running configuration keeps serving");
                Err(e)
            }
        }
    }
}

/// Make SIGHUP harmless from now on (its default action ends the process): tokio installs a
/// process-wide handler on first registration and never removes it. Call before serving.
pub fn ignore_hangup_until_handled() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _guard = rt.enter();
    signal(SignalKind::hangup()).map(drop)
}

/// Background service: reload on every SIGHUP (pingora itself uses SIGTERM, SIGINT and
/// SIGQUIT, never SIGHUP).
pub struct Hangup {
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for Hangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // The outcome is logged and counted by `reload`.
                    let _ = self.reloader.reload("SIGHUP").await;
                }
            }
        }
    }
}
