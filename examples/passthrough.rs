//! Bare pingora passthrough, the baseline of the load harness (`benches/load/compare.py`):
//! the same pingora version and server settings as portcullis, no auth, no policy, no logging.
//! Usage: passthrough <listen addr> <upstream host:port> [threads]
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{ProxyHttp, ProxyServiceBuilder};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::Result;

struct Passthrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: passthrough <listen addr> <upstream host:port> [threads]");
        std::process::exit(2);
    }
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        max_retries: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = Passthrough {
        upstream: args[2].clone(),
    };
    let mut service = ProxyServiceBuilder::new(&server.configuration, proxy)
        .name("passthrough")
        .build();
    service.add_tcp(&args[1]);
    server.add_service(service);
    server.run_forever();
}
