//! The route table and Nomad's wire conventions around every handler: authentication (also
//! before a body is read), CORS on client endpoints, `?pretty`, index headers, plain-text
//! errors, and blocking queries that end when their client goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Agent;
use crate::http::{Handler, Method, Origin, Reply, Request, RequestHead, Status};

use super::{
    acl, agent, allocs, auth, client_alloc, client_fs, client_meta, client_stats, events, jobs,
    metrics, namespaces, nodes, params, search, system, ApiError, ApiReply, ApiResult, Ctx,
    IndexMeta,
};

/// Bodies of job registrations may be larger than the default limit.
pub const JOB_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Serves Nomad's API for every listener (TCP and task sockets).
pub struct Router {
    agent: Arc<Agent>,
}

impl Router {
    pub fn new(agent: Arc<Agent>) -> Router {
        Router { agent }
    }

    fn dispatch(&self, req: &Request) -> ApiResult {
        let identity = auth::authenticate(&self.agent, req)?;
        let ctx = Ctx {
            agent: &self.agent,
            req,
            identity,
        };
        let Some(min_index) = blocking_index(req) else {
            let result = route(&ctx);
            if req.method != Method::Get && result.is_ok() {
                // A write is visible once its handler returned: wake blocking queries. A
                // write that failed changed nothing, so it publishes no index.
                self.agent.index.notify();
            }
            return result;
        };
        // A blocking query: answer once the object's index passes `min_index`, or at the wait,
        // or give up as soon as the client has gone.
        let deadline = Instant::now() + blocking_wait(req);
        let _waiting = metrics::BlockingGuard::new();
        loop {
            let generation = self.agent.index.generation();
            let result = route(&ctx);
            let index = match &result {
                Ok(ApiReply::Json {
                    meta: IndexMeta::Query(i),
                    ..
                })
                | Ok(ApiReply::Empty {
                    meta: IndexMeta::Query(i),
                }) => *i,
                _ => return result,
            };
            let now = Instant::now();
            if index > min_index || now >= deadline || self.agent.index.is_closed() {
                return result;
            }
            // Woken by a visible change, or re-checked each BLOCKING_RECHECK in case a writer
            // made its change visible without a notify; the client is looked for each
            // PEER_CHECK_INTERVAL meanwhile.
            let recheck = deadline.min(now + BLOCKING_RECHECK);
            loop {
                let now = Instant::now();
                if now >= recheck || self.agent.index.is_closed() {
                    break;
                }
                let step = recheck.min(now + PEER_CHECK_INTERVAL);
                if self.agent.index.wait_for_change(generation, step) {
                    break;
                }
                if req.peer_gone() {
                    // Nobody will read the answer: free the thread and the connection now.
                    log::debug!("blocking query on {} ended: the client went away", req.path);
                    return result;
                }
            }
        }
    }

    /// The caller as `authenticate` sees it, before a body is read: a refusal is rendered
    /// as the request's own reply would be.
    fn refuse_early(&self, req: &Request) -> Option<Reply> {
        let e = auth::authenticate(&self.agent, req).err()?;
        let mut reply = error_reply(&e);
        if is_cors_path(&req.path) {
            add_cors_headers(&mut reply, req);
        }
        Some(reply)
    }
}

/// Longest a blocking query waits (Nomad caps `wait` at 300 s; 5 min is its default).
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(300);

/// How often a blocked query re-reads its object even without a wake-up.
pub const BLOCKING_RECHECK: Duration = Duration::from_secs(1);

/// How often a blocked query checks that its client is still connected; one that left is
/// answered (to nobody) at once, so its thread and connection slot are freed.
pub const PEER_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// `?index=N` with N > 0 on a GET makes a read a blocking query.
fn blocking_index(req: &Request) -> Option<u64> {
    if req.method != Method::Get {
        return None;
    }
    req.query("index")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|i| *i > 0)
}

/// `?wait=` (Go duration), capped, plus Nomad's jitter of up to wait/16.
fn blocking_wait(req: &Request) -> Duration {
    let wait = req
        .query("wait")
        .and_then(crate::config::parse_go_duration)
        .unwrap_or(MAX_BLOCKING_WAIT)
        .min(MAX_BLOCKING_WAIT);
    wait + crate::time::jitter(wait / 16)
}

fn route(ctx: &Ctx) -> ApiResult {
    let path = ctx.req.path.as_str();
    if let Some(rest) = path.strip_prefix("/.well-known/") {
        return acl::well_known(ctx, rest);
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(ApiError::no_route());
    };
    let first = rest.split('/').next().unwrap_or("");
    match first {
        "agent" => agent::route(ctx, rest),
        "client" => route_client(ctx, rest),
        "node" if rest == "node/pools" || rest.starts_with("node/pool/") => {
            namespaces::route_node_pools(ctx, rest)
        }
        "nodes" | "node" => nodes::route(ctx, rest),
        "namespaces" | "namespace" => namespaces::route(ctx, rest),
        "search" => search::route(ctx, rest),
        "metrics" if rest == "metrics" => metrics::route(ctx),
        "system" => system::route(ctx, rest),
        "status" | "regions" => nodes::route_status(ctx, rest),
        "operator" if rest.starts_with("operator/raft/") => {
            super::raft_status::route_operator(ctx, rest)
        }
        "operator" if rest.starts_with("operator/autopilot/") => {
            super::operator_autopilot::route(ctx, rest)
        }
        "jobs" if rest == "jobs/parse" => super::jobs_parse::parse(ctx),
        "validate" if rest == "validate/job" => super::jobs_parse::validate(ctx),
        "jobs" | "job" | "evaluations" | "evaluation" => jobs::route(ctx, rest),
        "allocations" | "allocation" => allocs::route(ctx, rest),
        "acl" => acl::route(ctx, rest),
        "event" => events::route(ctx, rest),
        "scaling" => super::scaling::route(ctx, rest),
        "operator" if path == super::operator_snapshot::PATH => {
            super::operator_snapshot::route(ctx)
        }
        _ => Err(ApiError::no_route()),
    }
}

fn route_client(ctx: &Ctx, rest: &str) -> ApiResult {
    if rest == "client/metadata" {
        client_meta::route(ctx, rest)
    } else if rest == "client/stats" {
        client_stats::route(ctx, rest)
    } else if rest.starts_with("client/allocation/") && rest.ends_with("/exec") {
        super::client_exec::route(ctx, rest)
    } else if rest == "client/gc" || rest.starts_with("client/allocation/") {
        client_alloc::route(ctx, rest)
    } else if rest.starts_with("client/fs/") {
        client_fs::route(ctx, rest)
    } else {
        Err(ApiError::no_route())
    }
}

/// Client endpoints wrapped in Nomad's CORS layer.
fn is_cors_path(path: &str) -> bool {
    path.starts_with("/v1/client/fs/")
        || path == "/v1/client/stats"
        || path.starts_with("/v1/client/allocation/")
        || path == "/v1/client/metadata"
}

impl Handler for Router {
    fn body_limit(&self, head: &RequestHead) -> usize {
        if head.path == "/v1/jobs" || head.path.starts_with("/v1/job/") {
            JOB_BODY_LIMIT
        } else if head.path == super::operator_snapshot::PATH {
            super::operator_snapshot::body_limit()
        } else {
            crate::http::limits::DEFAULT_BODY_LIMIT
        }
    }

    /// Authenticate before a body is read or counted against the body budgets: a task
    /// socket without a credential gets its 401 (or 403 for a bad one), and an invalid ACL
    /// token its 403, without sending (or holding memory for) the body.
    fn admit(&self, req: &Request) -> Option<Reply> {
        if is_preflight(req) || super::forward::will_forward(&self.agent, req) {
            // A forwarded request's token is judged where it is answered.
            return None;
        }
        self.refuse_early(req)
    }

    fn handle(&self, req: Request) -> Reply {
        let started = Instant::now();
        let reply = self.handle_inner(&req);
        metrics::http().record(&req.method, &req.path, reply.status, started.elapsed());
        reply
    }
}

impl Router {
    fn handle_inner(&self, req: &Request) -> Reply {
        let cors = is_cors_path(&req.path);
        if is_preflight(req) {
            return Reply::empty(Status::NO_CONTENT)
                .with_header("Vary", "Origin")
                .with_header("Access-Control-Allow-Origin", "*")
                .with_header("Access-Control-Allow-Credentials", "true")
                .with_header("Access-Control-Allow-Methods", "HEAD, GET")
                .with_header("Access-Control-Allow-Headers", "*");
        }
        if let Some(reply) = super::forward::maybe_forward(&self.agent, req) {
            return reply;
        }
        let result = self.dispatch(req);
        let leader = || super::forward::query_meta(&self.agent);
        let mut reply = render(result, params::wants_pretty(req), &req.origin, &leader);
        if cors {
            add_cors_headers(&mut reply, req);
        }
        reply
    }
}

/// A CORS preflight on a client endpoint (answered without authentication).
fn is_preflight(req: &Request) -> bool {
    is_cors_path(&req.path)
        && req.method == Method::Options
        && req.header("Access-Control-Request-Method").is_some()
}

/// Nomad's CORS headers on a client endpoint's reply.
fn add_cors_headers(reply: &mut Reply, req: &Request) {
    reply.headers.push(("Vary".into(), "Origin".into()));
    if req.header("Origin").is_some() && matches!(req.method, Method::Get | Method::Head) {
        reply
            .headers
            .push(("Access-Control-Allow-Origin".into(), "*".into()));
        reply
            .headers
            .push(("Access-Control-Allow-Credentials".into(), "true".into()));
    }
}

/// Index headers; a read's query meta (`KnownLeader`, `LastContact` in ms) from `leader`,
/// this server's view of leadership when it answered (ref §5.5).
fn index_headers(reply: &mut Reply, meta: IndexMeta, leader: &dyn Fn() -> (bool, u64)) {
    match meta {
        IndexMeta::None => {}
        IndexMeta::Query(i) => {
            let (known, last_contact) = leader();
            reply.headers.push(("X-Nomad-Index".into(), i.to_string()));
            reply
                .headers
                .push(("X-Nomad-Knownleader".into(), known.to_string()));
            reply
                .headers
                .push(("X-Nomad-Lastcontact".into(), last_contact.to_string()));
        }
        IndexMeta::Write(i) => reply.headers.push(("X-Nomad-Index".into(), i.to_string())),
    }
}

/// Encode a JSON value compactly, or with `?pretty` as 4-space indented text plus a newline.
pub fn encode_json(value: &serde_json::Value, pretty: bool) -> Vec<u8> {
    if pretty {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        // Serializing a Value into memory cannot fail.
        let _ = serde::Serialize::serialize(value, &mut ser);
        out.push(b'\n');
        out
    } else {
        serde_json::to_vec(value).unwrap_or_default()
    }
}

/// An error as Nomad writes it: plain text, no trailing newline; an unknown route has no body.
pub fn error_reply(e: &ApiError) -> Reply {
    if e.status == Status::NOT_FOUND && e.message.is_empty() {
        return Reply::empty(Status::NOT_FOUND);
    }
    Reply::bytes(
        e.status,
        "text/plain; charset=utf-8",
        e.message.clone().into_bytes(),
    )
}

fn render(
    result: ApiResult,
    pretty: bool,
    _origin: &Origin,
    leader: &dyn Fn() -> (bool, u64),
) -> Reply {
    match result {
        Ok(ApiReply::Json { value, meta }) => {
            let mut reply =
                Reply::bytes(Status::OK, "application/json", encode_json(&value, pretty));
            index_headers(&mut reply, meta, leader);
            reply
        }
        Ok(ApiReply::Empty { meta }) => {
            let mut reply = Reply::empty(Status::OK);
            index_headers(&mut reply, meta, leader);
            reply
        }
        Ok(ApiReply::Http(reply)) => reply,
        Err(e) => error_reply(&e),
    }
}
