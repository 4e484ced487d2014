//! `/v1/metrics`: the agent's own figures in Nomad's `MetricsSummary` JSON (`Timestamp`,
//! `Gauges`, `Points`, `Counters`, `Samples`) or, with `?format=prometheus`, the Prometheus
//! text exposition format with `nomad_` names. Every figure is real: HTTP requests counted by
//! the router as they are answered, connections the HTTP server holds, blocking queries
//! waiting, log lines the monitor dropped, jobs/evals/allocs/tasks read from state, and the
//! process's threads, memory, descriptors and uptime read from `/proc/self`.
//!
//! Counters and samples are cumulative since the agent started (Nomad's in-memory sink keeps
//! 10 s intervals); `Rate` is the sum divided by the agent's uptime in seconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::api::Agent;
use crate::http::{Method, Reply, Status};
use crate::state::status::{AllocClientStatus, JobStatus, TaskStatus};

use super::{ApiReply, ApiResult, Ctx};

/// Distinct `(method, route, status)` series kept; requests beyond go to route `other`.
pub const MAX_HTTP_SERIES: usize = 512;
/// Path segments a route label keeps.
const MAX_ROUTE_SEGMENTS: usize = 6;
/// Path segments that are names, not IDs: kept as they are in a route label.
const STATIC_SEGMENTS: &[&str] = &[
    "v1",
    "agent",
    "members",
    "servers",
    "self",
    "join",
    "force-leave",
    "health",
    "host",
    "monitor",
    "client",
    "metadata",
    "stats",
    "gc",
    "allocation",
    "allocations",
    "fs",
    "ls",
    "stat",
    "cat",
    "readat",
    "stream",
    "event",
    "logs",
    "restart",
    "signal",
    "checks",
    "stop",
    "nodes",
    "node",
    "status",
    "leader",
    "peers",
    "regions",
    "jobs",
    "job",
    "evaluations",
    "evaluation",
    "deployment",
    "deployments",
    "summary",
    "acl",
    "bootstrap",
    "tokens",
    "token",
    "policies",
    "policy",
    "onetime",
    "exchange",
    "search",
    "fuzzy",
    "metrics",
    "namespaces",
    "namespace",
    "pools",
    "pool",
    "system",
    "well-known",
    ".well-known",
    "jwks.json",
    "openid-configuration",
];

/// One counter series.
#[derive(Default, Clone, Copy)]
struct Count {
    n: u64,
}

/// One timing series (milliseconds).
#[derive(Default, Clone, Copy)]
struct Timing {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

impl Timing {
    fn add(&mut self, ms: f64) {
        if self.count == 0 || ms < self.min {
            self.min = ms;
        }
        if self.count == 0 || ms > self.max {
            self.max = ms;
        }
        self.count += 1;
        self.sum += ms;
        self.sum_sq += ms * ms;
    }
    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
    fn stddev(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let var = (self.sum_sq - self.sum * self.sum / n) / (n - 1.0);
        var.max(0.0).sqrt()
    }
}

#[derive(Default)]
struct HttpTables {
    requests: BTreeMap<(String, String, u16), Count>,
    timings: BTreeMap<(String, String), Timing>,
}

/// The HTTP figures the router keeps.
#[derive(Default)]
pub struct HttpStats {
    tables: Mutex<HttpTables>,
    blocking_waiting: AtomicI64,
}

static HTTP: OnceLock<HttpStats> = OnceLock::new();

/// The process-wide HTTP figures (one agent per process).
pub fn http() -> &'static HttpStats {
    HTTP.get_or_init(HttpStats::default)
}

/// Counts one blocking query as waiting while it lives.
pub struct BlockingGuard;

impl BlockingGuard {
    pub fn new() -> BlockingGuard {
        http().blocking_waiting.fetch_add(1, Ordering::Relaxed);
        BlockingGuard
    }
}

impl Default for BlockingGuard {
    fn default() -> Self {
        BlockingGuard::new()
    }
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        http().blocking_waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The route a path belongs to: names kept, IDs as `:id`, so series stay few.
pub fn route_label(path: &str) -> String {
    let mut out = String::new();
    for (i, seg) in path.split('/').skip(1).enumerate() {
        if i >= MAX_ROUTE_SEGMENTS {
            out.push_str("/...");
            break;
        }
        out.push('/');
        if STATIC_SEGMENTS.contains(&seg) {
            out.push_str(seg);
        } else if !seg.is_empty() {
            out.push_str(":id");
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

impl HttpStats {
    /// Count one answered request.
    pub fn record(&self, method: &Method, path: &str, status: Status, elapsed: Duration) {
        let method = if method.is_known() {
            method.as_str()
        } else {
            "other"
        };
        let status = status.code();
        let mut route = route_label(path);
        let mut t = self.tables.lock();
        let key = (method.to_string(), route.clone(), status);
        if !t.requests.contains_key(&key) && t.requests.len() >= MAX_HTTP_SERIES {
            route = "other".to_string();
        }
        t.requests
            .entry((method.to_string(), route.clone(), status))
            .or_default()
            .n += 1;
        let tkey = (method.to_string(), route);
        if t.timings.contains_key(&tkey) || t.timings.len() < MAX_HTTP_SERIES {
            t.timings
                .entry(tkey)
                .or_default()
                .add(elapsed.as_secs_f64() * 1000.0);
        }
    }
}

/// One figure, before it is written as JSON or Prometheus text.
enum Figure {
    Gauge(f64),
    Counter(u64),
    Sample(Timing),
}

struct Metric {
    name: String,
    labels: Vec<(String, String)>,
    help: &'static str,
    value: Figure,
}

fn metric(name: &str, labels: &[(&str, &str)], help: &'static str, value: Figure) -> Metric {
    Metric {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        help,
        value,
    }
}

/// What `/proc/self/status` says of this process.
struct ProcStatus {
    /// `VmRSS`, bytes.
    rss: f64,
    /// `VmSize`, bytes.
    vsz: f64,
    threads: f64,
}

/// `VmRSS`, `VmSize` (bytes) and `Threads` of this process.
fn proc_status() -> ProcStatus {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ProcStatus {
        rss: field("VmRSS:") * 1024.0,
        vsz: field("VmSize:") * 1024.0,
        threads: field("Threads:"),
    }
}

fn open_fds() -> f64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as f64)
        .unwrap_or(0.0)
}

fn collect(agent: &Agent) -> Vec<Metric> {
    use Figure::*;
    let mut out = Vec::new();
    let ProcStatus { rss, vsz, threads } = proc_status();
    let uptime = agent
        .started_at
        .elapsed()
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    out.push(metric(
        "nomad.runtime.num_threads",
        &[],
        "Threads of the agent process.",
        Gauge(threads),
    ));
    out.push(metric(
        "nomad.runtime.rss_bytes",
        &[],
        "Resident memory of the agent process.",
        Gauge(rss),
    ));
    out.push(metric(
        "nomad.runtime.virtual_bytes",
        &[],
        "Virtual memory of the agent process.",
        Gauge(vsz),
    ));
    out.push(metric(
        "nomad.runtime.open_fds",
        &[],
        "Open file descriptors of the agent process.",
        Gauge(open_fds()),
    ));
    out.push(metric(
        "nomad.agent.uptime_seconds",
        &[],
        "Seconds since the agent started.",
        Gauge(uptime),
    ));

    let conns = agent
        .http
        .get()
        .map(|s| s.open_connections() as f64)
        .unwrap_or(0.0);
    out.push(metric(
        "nomad.http.connections_open",
        &[],
        "HTTP connections open on every listener.",
        Gauge(conns),
    ));
    let stats = http();
    out.push(metric(
        "nomad.http.blocking_queries_waiting",
        &[],
        "Blocking queries waiting for a change.",
        Gauge(stats.blocking_waiting.load(Ordering::Relaxed) as f64),
    ));
    let (subscribers, dropped) = crate::logtap::stats();
    out.push(metric(
        "nomad.agent.monitor.subscribers",
        &[],
        "Agent monitor streams open.",
        Gauge(subscribers as f64),
    ));
    out.push(metric(
        "nomad.agent.monitor.lines_dropped",
        &[],
        "Log lines a slow monitor stream did not take.",
        Counter(dropped),
    ));

    // Server figures: jobs by status, evaluations by status.
    let w = &agent.workloads;
    // Keyed by the word, so the series come out in its (alphabetical) order.
    let mut job_status: BTreeMap<&str, u64> =
        JobStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for j in w.jobs() {
        *job_status.entry(w.job_status(&j).as_str()).or_default() += 1;
    }
    for (s, n) in &job_status {
        out.push(metric(
            &format!("nomad.nomad.job_status.{s}"),
            &[],
            "Jobs by status.",
            Gauge(*n as f64),
        ));
    }
    let mut evals: BTreeMap<&str, u64> = BTreeMap::new();
    for e in w.evals() {
        *evals.entry(e.status.as_str()).or_default() += 1;
    }
    for (s, n) in &evals {
        out.push(metric(
            "nomad.nomad.evaluations",
            &[("status", s)],
            "Evaluations by status.",
            Gauge(*n as f64),
        ));
    }

    // Client figures: allocations and tasks on this node.
    let node_id = agent.node.id().to_string();
    let dc = agent.config.datacenter.clone();
    let node_labels = [("node_id", node_id.as_str()), ("datacenter", dc.as_str())];
    let (mut pending, mut running, mut terminal) = (0u64, 0u64, 0u64);
    let mut tasks: BTreeMap<&str, u64> = TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for a in w.allocs() {
        if a.client_status.is_terminal() {
            terminal += 1;
        } else if a.client_status == AllocClientStatus::Running {
            running += 1;
        } else {
            pending += 1;
        }
        for ts in a.task_states.values() {
            *tasks.entry(ts.state.as_str()).or_default() += 1;
        }
    }
    for (s, n) in [
        ("pending", pending),
        ("running", running),
        ("terminal", terminal),
    ] {
        out.push(metric(
            &format!("nomad.client.allocations.{s}"),
            &node_labels,
            "Allocations on this node by client status.",
            Gauge(n as f64),
        ));
    }
    for (s, n) in &tasks {
        out.push(metric(
            &format!("nomad.client.tasks.{s}"),
            &node_labels,
            "Tasks on this node by state.",
            Gauge(*n as f64),
        ));
    }

    // Gossip (servers): datagrams in, out, and refused.
    if let Some(g) = agent.gossip.get() {
        use std::sync::atomic::Ordering::Relaxed;
        let c = g.counters();
        for (name, help, v) in [
            (
                "nomad.nomadlet.gossip.received",
                "Gossip datagrams received (wake-ups excluded).",
                &c.received,
            ),
            (
                "nomad.nomadlet.gossip.sent",
                "Gossip datagrams sent.",
                &c.sent,
            ),
            (
                "nomad.nomadlet.gossip.dropped",
                "Gossip datagrams refused: too long, not ours (format or key), or undecodable.",
                &c.dropped,
            ),
        ] {
            out.push(metric(name, &[], help, Counter(v.load(Relaxed))));
        }
        out.push(metric(
            "nomad.nomadlet.gossip.members",
            &[],
            "Gossip members known (any status), this server included.",
            Gauge(g.members().len() as f64),
        ));
    }
    // The event stream: open subscriptions and the events retained for replay.
    let broker = agent.workloads.events();
    out.push(metric(
        "nomad.event_broker.subscribers",
        &[],
        "Open /v1/event/stream subscriptions.",
        Gauge(broker.subscribers() as f64),
    ));
    out.push(metric(
        "nomad.event_broker.retained_events",
        &[],
        "Events the event stream keeps for replay.",
        Gauge(broker.retained_events() as f64),
    ));

    // HTTP figures.
    let t = stats.tables.lock();
    for ((method, route, status), c) in &t.requests {
        let status = status.to_string();
        out.push(metric(
            "nomad.http.requests",
            &[("method", method), ("route", route), ("status", &status)],
            "HTTP requests answered.",
            Counter(c.n),
        ));
    }
    for ((method, route), timing) in &t.timings {
        out.push(metric(
            "nomad.http.request_duration_ms",
            &[("method", method), ("route", route)],
            "Time to answer an HTTP request (until its body starts), in milliseconds.",
            Sample(*timing),
        ));
    }
    out
}

/// Go's `time.Time.String()` of a whole second in UTC, as go-metrics writes `Timestamp`.
fn go_time_string(secs: u64) -> String {
    let rfc = crate::time::rfc3339_with_offset(secs as i64, 0, 0);
    format!(
        "{} +0000 UTC",
        rfc.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

fn labels_json(labels: &[(String, String)]) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

fn summary_json(metrics: &[Metric], uptime_secs: f64) -> Value {
    let rate = |sum: f64| {
        if uptime_secs > 0.0 {
            sum / uptime_secs
        } else {
            0.0
        }
    };
    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    let mut samples = Vec::new();
    for m in metrics {
        let labels = labels_json(&m.labels);
        match &m.value {
            Figure::Gauge(v) => gauges.push(json!({"Name": m.name, "Value": v, "Labels": labels})),
            Figure::Counter(n) => {
                let n = *n as f64;
                counters.push(json!({
                    "Name": m.name, "Count": n as u64, "Rate": rate(n), "Sum": n,
                    "Min": 1.0, "Max": 1.0, "Mean": 1.0, "Stddev": 0.0, "Labels": labels
                }))
            }
            Figure::Sample(t) => samples.push(json!({
                "Name": m.name, "Count": t.count, "Rate": rate(t.sum), "Sum": t.sum,
                "Min": t.min, "Max": t.max, "Mean": t.mean(), "Stddev": t.stddev(),
                "Labels": labels
            })),
        }
    }
    json!({
        "Timestamp": go_time_string(crate::time::unix_now_secs()),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": samples,
    })
}

/// A Prometheus metric name: `nomad.http.requests` → `nomad_http_requests`.
fn prom_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn prom_labels(labels: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", prom_name(k), prom_escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn prometheus_text(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let mut announced: Vec<String> = Vec::new();
    for m in metrics {
        let name = prom_name(&m.name);
        let kind = match m.value {
            Figure::Gauge(_) => "gauge",
            Figure::Counter(_) => "counter",
            Figure::Sample(_) => "summary",
        };
        if !announced.contains(&name) {
            out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {kind}\n", m.help));
            announced.push(name.clone());
        }
        let labels = prom_labels(&m.labels, None);
        match &m.value {
            Figure::Gauge(v) => out.push_str(&format!("{name}{labels} {v}\n")),
            Figure::Counter(n) => out.push_str(&format!("{name}{labels} {n}\n")),
            Figure::Sample(t) => {
                out.push_str(&format!("{name}_sum{labels} {}\n", t.sum));
                out.push_str(&format!("{name}_count{labels} {}\n", t.count));
            }
        }
    }
    out
}

/// Serve `GET /v1/metrics` (Nomad checks no ACL capability here; the figures carry no job
/// names, IDs or tokens, only route patterns and counts).
pub fn route(ctx: &Ctx) -> ApiResult {
    ctx.require_method(&[Method::Get])?;
    let metrics = collect(ctx.agent);
    // Like Nomad, any format but `prometheus` is the JSON summary.
    if ctx.req.query("format") == Some("prometheus") {
        return Ok(ApiReply::Http(Reply::bytes(
            Status::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(&metrics).into_bytes(),
        )));
    }
    let uptime = ctx
        .agent
        .started_at
        .elapsed()
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Ok(ApiReply::Json {
        value: summary_json(&metrics, uptime),
        meta: super::IndexMeta::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_hide_ids() {
        assert_eq!(route_label("/v1/jobs"), "/v1/jobs");
        assert_eq!(
            route_label("/v1/job/web/allocations"),
            "/v1/job/:id/allocations"
        );
        assert_eq!(
            route_label("/v1/client/fs/logs/0b2c5e8e-aaaa"),
            "/v1/client/fs/logs/:id"
        );
        assert_eq!(route_label("/"), "/");
    }

    #[test]
    fn timings_keep_min_max_mean() {
        let mut t = Timing::default();
        for v in [2.0, 4.0, 6.0] {
            t.add(v);
        }
        assert_eq!((t.count, t.min, t.max, t.mean()), (3, 2.0, 6.0, 4.0));
        assert!((t.stddev() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn go_time_strings_match_go_metrics() {
        assert_eq!(go_time_string(0), "1970-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn prometheus_labels_are_escaped() {
        let l = vec![("route".to_string(), "a\"b\\c".to_string())];
        assert_eq!(prom_labels(&l, None), "{route=\"a\\\"b\\\\c\"}");
    }
}
