//! Build and run the pingora server from our own configuration (pingora never parses the CLI
//! or a config file of its own).

use std::sync::Arc;

use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::gateway::Gateway;
use crate::proxy::background::Refresher;
use crate::proxy::Proxy;
use crate::reload::{Hangup, Reloader};

mod limit;

/// The ext_authz gRPC server (tonic), on pingora's background runtime, until shutdown.
struct ExtAuthzListener {
    addr: std::net::SocketAddr,
    state: Arc<arc_swap::ArcSwap<Gateway>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ExtAuthzListener {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let service = crate::ext_authz::Service {
            state: self.state.clone(),
        };
        tracing::info!(listen = %self.addr, "ext_authz (gRPC) listening");
        let served = tonic::transport::Server::builder()
            .add_service(service.server())
            .serve_with_shutdown(self.addr, async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(listen = %self.addr, error = %e, "ext_authz listener failed");
        }
    }
}

/// Start serving; returns only on shutdown (SIGTERM: graceful, SIGINT: fast). SIGHUP
/// reloads the configuration file.
pub fn run(gateway: Gateway) -> Result<(), String> {
    crate::reload::ignore_hangup_until_handled()
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let cfg = gateway.config.clone();
    let path = gateway.source.file.clone();
    let conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(cfg.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool_size,
        // A 16-try fail-safe by default; retries of reused-connection failures only.
        max_retries: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy = Proxy::new(gateway);
    let state = proxy.state.clone();
    let reloader = Arc::new(Reloader::new(path, state.clone()));
    let mut options = HttpServerOptions::default();
    options.h2c = cfg.listen.h2c && cfg.listen.tls.is_none();
    let connections = state.load().metrics.connections.clone();
    let mut app = HttpProxy::new(proxy, server.configuration.clone());
    app.handle_init_modules();
    app.server_options = Some(options);
    let app = limit::Limited::new(app, cfg.server.max_connections, connections);
    let mut service = Service::new("portcullis".to_string(), app);
    let addr = cfg.listen.addr.to_string();
    match &cfg.listen.tls {
        None => service.add_tcp(&addr),
        Some(tls) => {
            let cert = tls.cert_file.to_string_lossy();
            let key = tls.key_file.to_string_lossy();
            let mut settings =
                TlsSettings::intermediate(&cert, &key).map_err(|e| format!("TLS settings: {e}"))?;
            settings.enable_h2();
            service.add_tls_with_settings(&addr, None, settings);
        }
    }
    server.add_service(service);

    if let Some(admin_addr) = cfg.admin_listen {
        let mut admin = Service::new(
            "portcullis admin".to_string(),
            HttpServer::new_app(Admin {
                state: state.clone(),
                reloader: Some(reloader.clone()),
            }),
        );
        admin.add_tcp(&admin_addr.to_string());
        server.add_service(admin);
    }
    server.add_service(background_service(
        "jwks refresh",
        Refresher {
            state: Arc::clone(&state),
            generation: reloader.subscribe(),
        },
    ));
    server.add_service(background_service("config reload", Hangup { reloader }));
    if let Some(ext) = &cfg.ext_authz {
        server.add_service(background_service(
            "ext_authz",
            ExtAuthzListener {
                addr: ext.listen,
                state: state.clone(),
            },
        ));
    }
    tracing::info!(listen = %addr, admin = ?cfg.admin_listen, routes = cfg.routes.len(), "portcullis starting");
    // `run` (not `run_forever`, which exits the process) returns after shutdown, so the
    // caller can flush the log writer.
    server.run(RunArgs::default());
    Ok(())
}
