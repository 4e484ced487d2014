//! `GET /v1/event/stream`: the server's events (made by the committer from applied commands,
//! kept in the broker's bounded ring) as Nomad streams them — one JSON line
//! `{"Index":N,"Events":[...]}` per index, `{}` when connected and as a heartbeat every
//! [`HEARTBEAT`] — filtered by `topic=Topic[:Key]` (several allowed, `*` for all) and
//! `namespace=` (`*` for all), replaying the retained events from `index=`. The stream ends
//! when the client leaves, at shutdown, or with Nomad's plain-text error line when the
//! subscriber fell behind the ring, its token expired or an ACL change closed it.

use std::io;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{Body, Reply, Status, StreamBody, StreamSink};
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
    let recheck: Option<Recheck> = ctx.agent.acl.enabled.then(|| {
        let (agent, origin) = (ctx.agent.clone(), ctx.req.origin.clone());
        let token = auth::token_from_request(ctx.req);
        Box::new(move |filter: &Filter| {
            auth::authenticate_token(&agent, token.clone(), &origin)
                .and_then(|identity| allow(&identity, filter))
                .is_ok()
        }) as Recheck
    });
    let sub = ctx.agent.workloads.events().subscribe(index);
    let stream = EventStream {
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

/// Whether the caller may still read what it subscribed to: its credential resolved again
/// (after an ACL token or policy event; ACLs enabled only).
type Recheck = Box<dyn Fn(&Filter) -> bool + Send>;

struct EventStream {
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
    fn still_allowed(&self) -> bool {
        self.recheck.as_ref().is_none_or(|f| f(&self.filter))
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
    use crate::state::event_broker::{EventBroker, MAX_RETAINED_EVENTS};
    use crate::state::jobs::eval::EvalRecord;
    use crate::state::jobs::spec::Job;
    use std::sync::Arc;

    /// A sink that records what it was sent; it "goes away" after `stop_after` sends.
    struct Recorder {
        sent: Vec<Vec<u8>>,
        stop_after: usize,
    }

    impl StreamSink for Recorder {
        fn send(&mut self, data: &[u8]) -> io::Result<()> {
            self.sent.push(data.to_vec());
            Ok(())
        }
        fn should_stop(&mut self, _wait: Duration) -> bool {
            self.sent.len() >= self.stop_after
        }
    }

    fn batch(index: u64, topic: Topic, job: &str) -> EventBatch {
        let j = Job {
            id: job.into(),
            namespace: "default".into(),
            ..Job::default()
        };
        let eval = Arc::new(EvalRecord::new_at(&j, "job-register", index, "e", 0));
        let payload = match topic {
            Topic::Job => Payload::Job {
                job: Arc::new(j),
                status: crate::state::status::JobStatus::Pending,
            },
            _ => Payload::Evaluation(eval),
        };
        EventBatch {
            index,
            events: vec![Event {
                topic,
                kind: "JobRegistered",
                key: job.into(),
                namespace: "default".into(),
                filter_keys: Vec::new(),
                index,
                payload,
            }],
        }
    }

    fn stream(broker: &Arc<EventBroker>, topics: &[&str], recheck: Option<Recheck>) -> EventStream {
        EventStream {
            sub: broker.subscribe(0),
            filter: Filter {
                topics: parse_topics(topics.iter().copied()).unwrap(),
                namespace: "default".into(),
            },
            recheck,
            expires: None,
        }
    }

    fn run(s: EventStream, stop_after: usize) -> Vec<String> {
        let mut sink = Recorder {
            sent: Vec::new(),
            stop_after,
        };
        Box::new(s).run(&mut sink).unwrap();
        sink.sent
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn a_stream_greets_filters_by_topic_and_key_and_writes_one_line_per_index() {
        let broker = Arc::new(EventBroker::new());
        broker.publish(batch(5, Topic::Job, "web"));
        broker.publish(batch(6, Topic::Job, "db"));
        broker.publish(batch(7, Topic::Evaluation, "web"));
        let lines = run(stream(&broker, &["Job:web"], None), 2);
        assert_eq!(lines[0], "{}\n");
        let v: Value = serde_json::from_str(lines[1].trim_end()).unwrap();
        assert_eq!(v["Index"], 5);
        assert_eq!(v["Events"][0]["Payload"]["Job"]["ID"], "web");
        assert_eq!(v["Events"][0]["FilterKeys"], Value::Null);
        assert!(lines[1].ends_with('\n'));
    }

    #[test]
    fn a_subscriber_left_behind_gets_nomads_dropped_line_and_ends() {
        let broker = Arc::new(EventBroker::new());
        let s = stream(&broker, &["*"], None);
        for i in 1..=(MAX_RETAINED_EVENTS as u64 + 1) {
            broker.publish(batch(i, Topic::Job, "web"));
        }
        let lines = run(s, usize::MAX);
        assert_eq!(lines, ["{}\n", DROPPED_TEXT]);
    }

    #[test]
    fn an_acl_change_that_takes_the_permission_away_closes_the_stream() {
        let broker = Arc::new(EventBroker::new());
        let deny: Recheck = Box::new(|_: &Filter| false);
        let s = stream(&broker, &["Job"], Some(deny));
        broker.publish(batch(3, Topic::Job, "web"));
        let mut token_event = batch(4, Topic::Job, "x");
        token_event.events[0].topic = Topic::AclToken;
        broker.publish(token_event);
        broker.publish(batch(5, Topic::Job, "web"));
        let lines = run(s, usize::MAX);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].starts_with("{\"Index\":3"));
        assert_eq!(lines[2], CLOSED_TEXT);
    }

    #[test]
    fn a_stream_ends_quietly_when_the_broker_closes() {
        let broker = Arc::new(EventBroker::new());
        let s = stream(&broker, &["*"], None);
        broker.close();
        assert_eq!(run(s, usize::MAX), ["{}\n"]);
    }

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
