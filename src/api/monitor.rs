//! `GET /v1/agent/monitor`: the agent's own log lines, streamed as they are logged (through
//! the log tap), at the level asked for — framed (`{"Offset","Data","FileEvent":"log"}` with
//! `{}` heartbeats) or, with `plain=true`, as raw text. The stream ends when the client leaves
//! or the agent stops; a client too slow to keep up loses lines (counted in `/v1/metrics`).

use std::io;
use std::time::{Duration, Instant};

use log::LevelFilter;
use serde_json::json;

use crate::fs::frames::{encode_frame, HEARTBEAT_INTERVAL, MAX_FRAME_DATA};
use crate::http::{Body, Method, Reply, Status, StreamBody, StreamSink};
use crate::logtap::{self, LogLine, Subscription};

use super::params::parse_go_bool;
use super::{ApiError, ApiReply, ApiResult, Ctx};

/// How long the stream waits for a line before it looks at its client again.
const POLL: Duration = Duration::from_millis(200);
/// The `FileEvent` of a monitor frame.
const LOG_EVENT: &str = "log";

fn level_filter(name: &str) -> Option<LevelFilter> {
    match name.to_ascii_uppercase().as_str() {
        "TRACE" => Some(LevelFilter::Trace),
        "DEBUG" => Some(LevelFilter::Debug),
        "INFO" => Some(LevelFilter::Info),
        "WARN" => Some(LevelFilter::Warn),
        "ERROR" => Some(LevelFilter::Error),
        _ => None,
    }
}

fn bool_param(ctx: &Ctx, name: &str, what: &str) -> Result<bool, ApiError> {
    match ctx.req.query(name) {
        None | Some("") => Ok(false),
        Some(v) => parse_go_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Unknown option for {what}: strconv.ParseBool: parsing {v:?}: invalid syntax"
            ))
        }),
    }
}

/// Serve `GET /v1/agent/monitor` (`agent:read`).
pub fn route(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    ctx.identity.allow_agent(false)?;
    let level_name = ctx
        .req
        .query("log_level")
        .filter(|l| !l.is_empty())
        .unwrap_or("INFO");
    let level = level_filter(level_name)
        .ok_or_else(|| ApiError::bad_request(format!("Unknown log level: {level_name}")))?;
    let log_json = bool_param(ctx, "log_json", "log json")?;
    let plain = bool_param(ctx, "plain", "plain")?;
    let location = bool_param(ctx, "log_include_location", "log include location")?;
    let node_id = ctx.req.query("node_id").unwrap_or("");
    let server_id = ctx.req.query("server_id").unwrap_or("");
    if !node_id.is_empty() && !server_id.is_empty() {
        return Err(ApiError::bad_request(
            "Cannot target node and server simultaneously",
        ));
    }
    if !node_id.is_empty() && node_id != ctx.agent.node.id() {
        return Err(ApiError::not_found(format!("Unknown node {node_id:?}")));
    }
    let me = ctx.agent.membership.local().name.clone();
    if !server_id.is_empty() && server_id != "leader" && server_id != me {
        return Err(ApiError::not_found(format!("Unknown server {server_id:?}")));
    }
    let sub = logtap::subscribe(level)
        .ok_or_else(|| ApiError::internal("the agent's log is not tapped"))?;
    let stream = MonitorStream {
        sub,
        plain,
        log_json,
        location,
        offset: 0,
    };
    let content_type = if plain {
        "text/plain"
    } else {
        "application/json"
    };
    Ok(ApiReply::Http(Reply {
        status: Status::OK,
        headers: vec![("Content-Type".to_string(), content_type.to_string())],
        body: Body::Stream(Box::new(stream)),
    }))
}

struct MonitorStream {
    sub: Subscription,
    plain: bool,
    log_json: bool,
    location: bool,
    /// Bytes of log text sent so far.
    offset: u64,
}

impl MonitorStream {
    fn format(&self, l: &LogLine) -> String {
        let time = crate::time::rfc3339_nanos(l.time);
        let level = l.level.as_str();
        if self.log_json {
            let mut v = json!({
                "@level": level.to_ascii_lowercase(),
                "@message": l.message,
                "@module": l.target,
                "@timestamp": time,
            });
            if self.location {
                if let Some(loc) = &l.location {
                    v["@caller"] = json!(loc);
                }
            }
            format!("{v}\n")
        } else {
            let loc = match (&l.location, self.location) {
                (Some(loc), true) => format!("{loc}: "),
                _ => String::new(),
            };
            format!("{time} [{level}] {loc}{}: {}\n", l.target, l.message)
        }
    }

    fn send(&mut self, sink: &mut dyn StreamSink, text: &[u8]) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if self.plain {
            return sink.send(text);
        }
        self.offset += text.len() as u64;
        sink.send(&encode_frame(self.offset, text, "", LOG_EVENT))
    }

    fn drive(&mut self, sink: &mut dyn StreamSink) -> io::Result<()> {
        let mut last_sent = Instant::now();
        loop {
            if sink.should_stop(Duration::ZERO) {
                return Ok(());
            }
            match self.sub.lines.recv_timeout(POLL) {
                Ok(first) => {
                    let mut batch = self.format(&first).into_bytes();
                    while batch.len() < MAX_FRAME_DATA {
                        match self.sub.lines.try_recv() {
                            Ok(l) => batch.extend_from_slice(self.format(&l).as_bytes()),
                            Err(_) => break,
                        }
                    }
                    for chunk in batch.chunks(MAX_FRAME_DATA) {
                        self.send(sink, chunk)?;
                    }
                    last_sent = Instant::now();
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if !self.plain && last_sent.elapsed() >= HEARTBEAT_INTERVAL {
                        sink.send(b"{}")?;
                        last_sent = Instant::now();
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}

impl StreamBody for MonitorStream {
    fn run(mut self: Box<Self>, sink: &mut dyn StreamSink) -> io::Result<()> {
        // Not logged: a line about the monitor would feed the monitor.
        let _ = self.drive(sink);
        Ok(())
    }
}
