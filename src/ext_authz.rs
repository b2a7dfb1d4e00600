//! portcullis as Envoy's external authorization service (gRPC
//! `envoy.service.auth.v3.Authorization/Check`, types from the `envoy-types` crate): the same
//! decision path as the proxy (canonical target, route, JWT, agent/user/scope checks, roles,
//! Rego, approvals, upstream credentials) on the request attributes Envoy sends. Allowed:
//! Envoy forwards the request without the user's `Authorization` (unless `forward_token`), with
//! the route's upstream credentials set. Refused: Envoy answers the client with the status,
//! headers and JSON body the proxy would send. Every failure refuses.

mod decide;

use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HttpStatus,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use crate::gateway::Gateway;
use crate::respond::Reply;
pub use decide::Verdict;

/// The gRPC service.
pub struct Service {
    pub state: Arc<ArcSwap<Gateway>>,
}

impl Service {
    pub fn server(self) -> AuthorizationServer<Service> {
        AuthorizationServer::new(self)
    }
}

#[tonic::async_trait]
impl Authorization for Service {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let g = self.state.load_full();
        let verdict = decide::check(&g, request.get_ref()).await;
        Ok(Response::new(response(verdict)))
    }
}

/// The CheckResponse for a verdict.
fn response(verdict: Verdict) -> CheckResponse {
    let mut out = CheckResponse::new();
    match verdict {
        Verdict::Allow { set, remove } => {
            let mut ok = OkHttpResponseBuilder::new();
            // Overwrite: a client's value of a header the gateway sets never survives.
            for (k, v) in set {
                ok.add_header(
                    k,
                    v,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            for k in remove {
                ok.remove_header(k);
            }
            out.set_status(Status::ok("")).set_http_response(ok);
        }
        Verdict::Deny(reply) => {
            out.set_status(Status::permission_denied(""))
                .set_http_response(denied(&reply));
        }
    }
    out
}

fn denied(reply: &Reply) -> DeniedHttpResponse {
    let mut d = DeniedHttpResponseBuilder::new();
    for (k, v) in &reply.headers {
        d.add_header(*k, v.clone(), None, false);
    }
    d.add_header("content-length", reply.body.len().to_string(), None, false);
    d.set_body(String::from_utf8_lossy(&reply.body).to_string());
    let mut denied: DeniedHttpResponse = d.build();
    denied.status = Some(HttpStatus {
        code: i32::from(reply.status),
    });
    denied
}
