//! `GET /v1/event/stream`: the server's events (made by the committer from applied commands,
//! kept in the broker's bounded ring) as Nomad streams them — one JSON line
//! `{"Index":N,"Events":[...]}` per index, `{}` when connected and as a heartbeat every
//! [`HEARTBEAT`] — filtered by `topic=Topic[:Key]` (several allowed, `*` for all) and
//! `namespace=` (`*` for all), replaying the retained events from `index=`. The stream ends
//! when the client leaves, at shutdown, or with Nomad's plain-text error line when the
//! subscriber fell behind the ring, its token expired or an ACL change closed it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::Agent;
use crate::http::{Body, Origin, Reply, Status, StreamBody, StreamSink};
use crate::state::event_broker::{Next, Subscription};
use crate::state::events::{Event, EventBatch, Payload, Topic};

use super::auth::{self, Identity};
use super::{acl_json, allocs, jobs, nodes, ApiError, ApiReply, ApiResult, Ctx};

/// A `{}` line is sent when nothing else was for this long (and once when connected).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long the stream waits for events before it looks at its client again.
const POLL: Duration = Duration::from_millis(200);
/// `topic=` parameters one request may give (each is matched against every event).
pub const MAX_TOPICS: usize = 64;
/// Nomad's line for a subscriber whose next events left the buffer.
pub const DROPPED_TEXT: &str = "event dropped from buffer";
/// Nomad's line for a subscription an ACL change closed.
pub const CLOSED_TEXT: &str = "subscription closed by server, client should resubscribe";
/// Nomad's line for a subscription whose token expired.
pub const EXPIRED_TEXT: &str = "ACL token expired";

/// The wildcard topic, key and namespace.
const ALL: &str = "*";

/// What one subscriber asked for.
#[derive(Clone, Debug)]
struct Filter {
    /// `(topic, key)` pairs as given (`topic=Job` is `("Job", "*")`).
    topics: Vec<(String, String)>,
    namespace: String,
}

impl Filter {
    /// Nomad's subscription filter: the namespace (events without one always pass), then
    /// any `(topic, key)` pair whose topic is the event's or `*` and whose key is `*`, the
    /// event's key or one of its filter keys.
    fn keeps(&self, e: &Event) -> bool {
        if self.namespace != ALL && !e.namespace.is_empty() && e.namespace != self.namespace {
            return false;
        }
        self.topics.iter().any(|(topic, key)| {
            (topic == ALL || topic == e.topic.as_str())
                && (key == ALL || *key == e.key || e.filter_keys.iter().any(|k| k == key))
        })
    }
}

/// Serve `/v1/event/stream`.
pub fn route(ctx: &Ctx, rest: &str) -> ApiResult {
    if rest != "event/stream" {
        return Err(ApiError::no_route());
    }
    let index = parse_index(ctx.req.query("index"))?;
    let topics = parse_topics(ctx.req.query_all("topic"))?;
    let filter = Filter {
        topics,
        namespace: jobs::namespace(ctx),
    };
    allow(&ctx.identity, &filter)?;
    let expires = ctx.identity.token().and_then(|t| t.expiration);
    let recheck = ctx.agent.acl.enabled.then(|| Recheck {
        token: auth::token_from_request(ctx.req),
        origin: ctx.req.origin.clone(),
    });
    let sub = ctx.agent.workloads.events().subscribe(index);
    let stream = EventStream {
        agent: ctx.agent.clone(),
        sub,
        filter,
        recheck,
        expires,
    };
    Ok(ApiReply::Http(Reply {
        status: Status::OK,
        headers: vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("Cache-Control".to_string(), "no-cache".to_string()),
        ],
        body: Body::Stream(Box::new(stream)),
    }))
}

/// `index=` as Go's `strconv.Atoi` reads it (empty: 0); a negative index replays nothing.
fn parse_index(v: Option<&str>) -> Result<u64, ApiError> {
    let v = match v {
        None | Some("") => return Ok(0),
        Some(v) => v,
    };
    match v.parse::<i64>() {
        Ok(i) if i < 0 => Ok(u64::MAX),
        Ok(i) => Ok(i as u64),
        Err(_) => Err(ApiError::bad_request(format!(
            "Unable to parse index: {}",
            super::params::go_int_error(v).replace("ParseInt", "Atoi")
        ))),
    }
}

/// The `topic=` parameters as Nomad parses them: `Topic` (key `*`) or `Topic:Key`; none
/// means every topic.
fn parse_topics<'a>(raw: impl Iterator<Item = &'a str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for t in raw {
        if out.len() == MAX_TOPICS {
            return Err(ApiError::bad_request(format!(
                "Invalid topic query: at most {MAX_TOPICS} topics"
            )));
        }
        let parts: Vec<&str> = t.split(':').collect();
        match parts.as_slice() {
            [topic] => out.push((topic.to_string(), ALL.to_string())),
            [topic, key] => out.push((topic.to_string(), key.to_string())),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: {t}"
                )))
            }
        }
    }
    if out.is_empty() {
        out.push((ALL.to_string(), ALL.to_string()));
    }
    Ok(out)
}

/// Nomad's check of a subscription: every topic asked for needs its capability — job
/// topics `read-job` in the namespace, `Node` `node:read`, anything else (`*`, the ACL
/// topics, node pools) a management token.
fn allow(identity: &Identity, filter: &Filter) -> Result<(), ApiError> {
    for (topic, _) in &filter.topics {
        match Topic::parse(topic) {
            Some(
                Topic::Job
                | Topic::Evaluation
                | Topic::Allocation
                | Topic::Deployment
                | Topic::Service,
            ) => identity.allow_namespace(&filter.namespace, "read-job")?,
            Some(Topic::Node) => identity.allow_node(false)?,
            _ => identity.allow_management()?,
        }
    }
    Ok(())
}

/// How the stream finds its caller again after an ACL change (ACLs enabled only).
struct Recheck {
    token: Option<String>,
    origin: Origin,
}

struct EventStream {
    agent: Arc<Agent>,
    sub: Subscription,
    filter: Filter,
    recheck: Option<Recheck>,
    /// When the caller's token expires (Unix nanoseconds).
    expires: Option<i64>,
}

/// Why a stream ended with a line of text.
enum Closed {
    /// Nomad's error text, sent as the last line.
    Error(&'static str),
    /// The client left, the agent stops.
    Quietly,
}

impl EventStream {
    /// The caller may still read what it subscribed to (after an ACL token or policy event).
    fn still_allowed(&self) -> bool {
        let Some(r) = &self.recheck else {
            return true;
        };
        auth::authenticate_token(&self.agent, r.token.clone(), &r.origin)
            .and_then(|identity| allow(&identity, &self.filter))
            .is_ok()
    }

    fn expired(&self) -> bool {
        self.expires
            .is_some_and(|at| crate::time::unix_now_nanos() >= at)
    }

    /// One batch's line for this subscriber, `None` when the filter keeps nothing of it.
    fn line(&self, batch: &EventBatch) -> Option<Vec<u8>> {
        let events: Vec<Value> = batch
            .events
            .iter()
            .filter(|e| self.filter.keeps(e))
            .map(event_json)
            .collect();
        if events.is_empty() {
            return None;
        }
        let mut line = serde_json::to_vec(&json!({"Index": batch.index, "Events": events}))
            .unwrap_or_default();
        line.push(b'\n');
        Some(line)
    }

    fn drive(&mut self, sink: &mut dyn StreamSink) -> Result<(), Closed> {
        let io = |_: io::Error| Closed::Quietly;
        sink.send(b"{}\n").map_err(io)?;
        let mut last_sent = Instant::now();
        loop {
            if sink.should_stop(Duration::ZERO) {
                return Err(Closed::Quietly);
            }
            match self.sub.next(Instant::now() + POLL) {
                Next::Batches(batches) => {
                    for b in batches {
                        let acl_changed = b
                            .events
                            .iter()
                            .any(|e| matches!(e.topic, Topic::AclToken | Topic::AclPolicy));
                        if acl_changed && !self.still_allowed() {
                            return Err(Closed::Error(CLOSED_TEXT));
                        }
                        if self.expired() {
                            return Err(Closed::Error(EXPIRED_TEXT));
                        }
                        if let Some(line) = self.line(&b) {
                            sink.send(&line).map_err(io)?;
                            last_sent = Instant::now();
                        }
                    }
                }
                Next::Timeout => {
                    if last_sent.elapsed() >= HEARTBEAT {
                        sink.send(b"{}\n").map_err(io)?;
                        last_sent = Instant::now();
                    }
                }
                Next::Dropped => return Err(Closed::Error(DROPPED_TEXT)),
                Next::Closed => return Err(Closed::Quietly),
            }
        }
    }
}

impl StreamBody for EventStream {
    fn run(mut self: Box<Self>, sink: &mut dyn StreamSink) -> io::Result<()> {
        if let Err(Closed::Error(text)) = self.drive(sink) {
            log::debug!("event stream closed: {text}");
            let _ = sink.send(text.as_bytes());
        }
        Ok(())
    }
}

/// One event as Nomad writes it, its object under its topic's name in `Payload`, shaped
/// as the object's own GET endpoint shows it (an allocation without its job, as Nomad).
fn event_json(e: &Event) -> Value {
    let object = match &e.payload {
        Payload::Job { job, status } => jobs::job_value(job, *status),
        Payload::Evaluation(ev) => jobs::eval_json(ev),
        Payload::Allocation(a) => allocs::allocation(a, Value::Null),
        Payload::Node(n) => nodes::node_json(n),
        Payload::AclToken(t) => acl_json::token(t),
        Payload::AclPolicy(p) => acl_json::policy(p),
    };
    let mut payload = serde_json::Map::new();
    payload.insert(e.topic.as_str().to_string(), object);
    let filter_keys = if e.filter_keys.is_empty() {
        Value::Null
    } else {
        json!(e.filter_keys)
    };
    json!({
        "Topic": e.topic.as_str(),
        "Type": e.kind,
        "Key": e.key,
        "Namespace": e.namespace,
        "FilterKeys": filter_keys,
        "Index": e.index,
        "Payload": Value::Object(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_as_nomad_and_refuse_what_it_refuses() {
        let t = parse_topics(["Job:web", "Node", "*"].into_iter()).unwrap();
        assert_eq!(
            t,
            [("Job", "web"), ("Node", "*"), ("*", "*")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(parse_topics(std::iter::empty()).unwrap().len(), 1);
        let e = parse_topics(["a:b:c"].into_iter()).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: a:b:c"
        );
        let many: Vec<String> = (0..=MAX_TOPICS).map(|i| format!("Job:{i}")).collect();
        assert!(parse_topics(many.iter().map(String::as_str)).is_err());
    }

    #[test]
    fn index_parses_as_go_atoi() {
        assert_eq!(parse_index(None).unwrap(), 0);
        assert_eq!(parse_index(Some("42")).unwrap(), 42);
        assert_eq!(parse_index(Some("-1")).unwrap(), u64::MAX);
        assert_eq!(
            parse_index(Some("x1")).unwrap_err().message,
            "Unable to parse index: strconv.Atoi: parsing \"x1\": invalid syntax"
        );
        assert_eq!(
            parse_index(Some("99999999999999999999")).unwrap_err().message,
            "Unable to parse index: strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        );
    }
}
