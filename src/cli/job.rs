//! `job run` (HCL parsed locally by `crate::jobspec`, or JSON; register, then monitor the
//! evaluation as `nomad job run` does), `job status [ID]` and `job stop [-purge] ID`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::format::{self, ago, id as short, kv, n, s, table};
use super::{api, flag, lookup, multi, positional, CliError, Command, Ctx, Found};
use super::{http, EXIT_PLACEMENT_FAILURE};
use crate::jobspec::{self, Input};

/// Longest `job run`/`job stop` waits for the evaluation to finish.
pub const MONITOR_DEADLINE: Duration = Duration::from_secs(300);

/// How long one blocking query of the monitor waits at the agent.
pub const MONITOR_WAIT: &str = "5s";

pub const RUN: Command = Command {
    group: "job",
    name: "run",
    synopsis: "Run a new job or update an existing job",
    usage: "nomadlet job run [options] <path>",
    flags: &[
        flag(
            "detach",
            "Return right after registering the job, printing the evaluation ID",
        ),
        flag("verbose", "Print full IDs"),
        flag(
            "json",
            "The file is JSON (a job, or {\"Job\": …}); also assumed for *.json",
        ),
        flag(
            "output",
            "Print the JSON job that would be submitted, and submit nothing",
        ),
        multi(
            "var",
            "KEY=VALUE",
            "Set an HCL2 input variable (repeatable)",
        ),
        multi(
            "var-file",
            "FILE",
            "Read HCL2 input variables from a file (repeatable)",
        ),
    ],
    run,
};

pub const STATUS: Command = Command {
    group: "job",
    name: "status",
    synopsis: "Display status information about a job",
    usage: "nomadlet job status [options] [<job>]",
    flags: &[flag("verbose", "Print full IDs and dates")],
    run: status,
};

pub const STOP: Command = Command {
    group: "job",
    name: "stop",
    synopsis: "Stop a running job",
    usage: "nomadlet job stop [options] <job>",
    flags: &[
        flag("purge", "Remove the job from the agent's state at once"),
        flag(
            "detach",
            "Return right after the stop, printing the evaluation ID",
        ),
        flag("verbose", "Print full IDs"),
        flag(
            "yes",
            "Answer yes to the confirmation (nomadlet never asks; accepted for scripts)",
        ),
    ],
    run: stop,
};

fn read_file(path: &str) -> Result<String, CliError> {
    let read = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().take_limited(), &mut s).map(|_| s)
    } else {
        std::fs::File::open(path).and_then(|f| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f.take_limited(), &mut s).map(|_| s)
        })
    };
    let text = read.map_err(|source| CliError::File {
        path: path.to_string(),
        source,
    })?;
    if text.len() > jobspec::JOBSPEC_MAX_BYTES {
        return Err(CliError::Other(format!(
            "Error parsing job file from {path}: larger than {} bytes",
            jobspec::JOBSPEC_MAX_BYTES
        )));
    }
    Ok(text)
}

/// `Read::take` at one byte over the jobspec limit, so an oversized file is seen as such
/// without reading all of it.
trait TakeLimited: std::io::Read + Sized {
    fn take_limited(self) -> std::io::Take<Self> {
        self.take(jobspec::JOBSPEC_MAX_BYTES as u64 + 1)
    }
}
impl<R: std::io::Read> TakeLimited for R {}

/// The job in `path` as JSON (HCL through the jobspec parser, or JSON, bare or wrapped),
/// and the `Submission` Nomad's CLI sends with it (the source, its format, the variables).
fn load_job(path: &str, m: &getopts::Matches) -> Result<(Value, Value), CliError> {
    let text = read_file(path)?;
    let is_json = m.opt_present("json") || path.ends_with(".json");
    if is_json {
        let v = crate::parse_bounds::json_value(text.as_bytes())
            .map_err(|e| CliError::Other(format!("Error parsing job file from {path}: {e}")))?;
        let job = match v.get("Job") {
            Some(job) if job.is_object() => job.clone(),
            _ => v,
        };
        let submission = json!({"Source": text, "Format": "json"});
        return Ok((job, submission));
    }
    let mut vars = Vec::new();
    for kv in m.opt_strs("var") {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("Error parsing -var {kv:?}: expected KEY=VALUE"))
        })?;
        vars.push((k.trim().to_string(), v.to_string()));
    }
    let mut var_files = Vec::new();
    for f in m.opt_strs("var-file") {
        let text = read_file(&f)?;
        var_files.push((f, text));
    }
    let var_flags: serde_json::Map<String, Value> = vars
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let var_file_text: String = var_files.iter().map(|(_, t)| t.as_str()).collect();
    let input = Input {
        text: &text,
        file: path,
        var_files,
        vars,
        env_vars: env_vars(),
    };
    let job = jobspec::parse(&input)
        .map_err(|e| CliError::Other(format!("Error parsing job file from {path}:\n{e}")))?;
    let submission = json!({
        "Source": text,
        "Format": "hcl2",
        "VariableFlags": var_flags,
        "Variables": var_file_text,
    });
    Ok((job, submission))
}

/// `NOMAD_VAR_<name>` variables from the environment (used for declared variables only).
fn env_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("NOMAD_VAR_").map(|n| (n.to_string(), v)))
        .collect()
}

fn now() -> String {
    crate::time::rfc3339_unix(crate::time::unix_now_secs() as i64, 0)
}

fn run(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 1, 1, "one argument, the path to a job file")?;
    let (job, submission) = load_job(&args[0], m)?;
    if m.opt_present("output") {
        let text = serde_json::to_string_pretty(&json!({ "Job": job }))
            .map_err(|e| CliError::Other(format!("Error encoding job: {e}")))?;
        println!("{text}");
        return Ok(0);
    }
    let body = serde_json::to_vec(&json!({ "Job": job, "Submission": submission }))
        .map_err(|e| CliError::Other(format!("Error encoding job: {e}")))?;
    let resp = ctx
        .client
        .json("PUT", "/v1/jobs", &body)
        .map_err(api("submitting job"))?;
    let eval_id = s(&resp, "EvalID").to_string();
    let warnings = s(&resp, "Warnings");
    if !warnings.is_empty() {
        println!("Job Warnings:\n{warnings}\n");
    }
    let periodic = !job.get("Periodic").is_none_or(Value::is_null);
    let parameterized = !job.get("ParameterizedJob").is_none_or(Value::is_null);
    if m.opt_present("detach") || periodic || parameterized || eval_id.is_empty() {
        println!("Job registration successful");
        if !eval_id.is_empty() {
            println!("Evaluation ID: {eval_id}");
        }
        return Ok(0);
    }
    monitor(ctx, &eval_id, m.opt_present("verbose"))
}

/// Follow an evaluation to its end, printing Nomad's monitor lines; 2 when allocations
/// could not be placed.
pub fn monitor(ctx: &Ctx, eval_id: &str, verbose: bool) -> Result<i32, CliError> {
    println!(
        "==> {}: Monitoring evaluation \"{}\"",
        now(),
        short(eval_id, verbose)
    );
    let deadline = Instant::now() + MONITOR_DEADLINE;
    let mut index = 0u64;
    let mut first = true;
    let mut status = String::from("pending");
    let mut seen_allocs: Vec<String> = Vec::new();
    loop {
        let path = format!(
            "/v1/evaluation/{}?index={index}&wait={MONITOR_WAIT}",
            http::escape(eval_id)
        );
        let resp = ctx
            .client
            .send("GET", &path, &[], b"")
            .map_err(api("reading evaluation"))?;
        let next_index = resp
            .header("X-Nomad-Index")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let code = resp.status;
        let bytes = resp
            .bytes()
            .map_err(|e| CliError::Other(format!("Error reading evaluation: {e}")))?;
        if code != 200 {
            return Err(CliError::Other(format!(
                "Error reading evaluation: Unexpected response code: {code} ({})",
                String::from_utf8_lossy(&bytes).trim()
            )));
        }
        let eval = crate::parse_bounds::json_value(&bytes)
            .map_err(|e| CliError::Other(format!("Error reading evaluation: {e}")))?;
        if first {
            let by = s(&eval, "TriggeredBy");
            let job = s(&eval, "JobID");
            match by {
                "job-register" | "job-deregister" | "" => {
                    println!("    {}: Evaluation triggered by job \"{job}\"", now())
                }
                other => println!("    {}: Evaluation triggered by {other:?}", now()),
            }
            first = false;
        }
        let allocs = ctx
            .client
            .get(&format!(
                "/v1/evaluation/{}/allocations",
                http::escape(eval_id)
            ))
            .map_err(api("reading allocations"))?;
        for a in allocs.as_array().into_iter().flatten() {
            let aid = s(a, "ID").to_string();
            if seen_allocs.contains(&aid) {
                continue;
            }
            println!(
                "    {}: Allocation \"{}\" created: node \"{}\", group \"{}\"",
                now(),
                short(&aid, verbose),
                short(s(a, "NodeID"), verbose),
                s(a, "TaskGroup")
            );
            seen_allocs.push(aid);
        }
        let new_status = s(&eval, "Status").to_string();
        if new_status != status {
            println!(
                "    {}: Evaluation status changed: \"{status}\" -> \"{new_status}\"",
                now()
            );
            status = new_status;
        }
        if matches!(
            status.as_str(),
            "complete" | "failed" | "cancelled" | "canceled"
        ) {
            return Ok(finish(&eval, eval_id, verbose));
        }
        if Instant::now() >= deadline {
            return Err(CliError::Other(format!(
                "Error: evaluation {eval_id:?} did not finish within {MONITOR_DEADLINE:?}"
            )));
        }
        index = next_index.max(index);
    }
}

fn finish(eval: &Value, eval_id: &str, verbose: bool) -> i32 {
    let status = s(eval, "Status");
    let failed = eval
        .get("FailedTGAllocs")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty());
    let Some(failed) = failed else {
        println!(
            "==> {}: Evaluation \"{}\" finished with status \"{status}\"",
            now(),
            short(eval_id, verbose)
        );
        return if status == "complete" { 0 } else { 1 };
    };
    println!(
        "==> {}: Evaluation \"{}\" finished with status \"{status}\" but failed to place all allocations:",
        now(),
        short(eval_id, verbose)
    );
    for (group, metric) in failed {
        let count = n(metric, "CoalescedFailures") + 1;
        let noun = if count == 1 {
            "allocation"
        } else {
            "allocations"
        };
        println!("    Task Group {group:?} (failed to place {count} {noun}):");
        print!("{}", alloc_metrics(metric));
    }
    // nomadlet's own: why the node cannot take the job, naming the config key to set.
    let why = s(eval, "StatusDescription");
    if !why.is_empty() {
        println!("    {why}");
    }
    let blocked = s(eval, "BlockedEval");
    if !blocked.is_empty() {
        println!(
            "    Evaluation \"{}\" waiting for additional capacity to place remainder",
            short(blocked, verbose)
        );
    }
    EXIT_PLACEMENT_FAILURE
}

/// Why a group could not be placed, in the order and words of Nomad's `formatAllocMetrics`.
fn alloc_metrics(metric: &Value) -> String {
    let mut out = String::new();
    let entries = |key: &str| -> Vec<(String, i64)> {
        metric
            .get(key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
            .collect()
    };
    if n(metric, "NodesEvaluated") == 0 {
        out.push_str("      * No nodes were eligible for evaluation\n");
    }
    for (dc, available) in entries("NodesAvailable") {
        if available == 0 {
            out.push_str(&format!(
                "      * No nodes are available in datacenter {dc:?}\n"
            ));
        }
    }
    for (class, num) in entries("ClassFiltered") {
        out.push_str(&format!(
            "      * Class {class:?}: {num} nodes excluded by filter\n"
        ));
    }
    for (cons, num) in entries("ConstraintFiltered") {
        out.push_str(&format!(
            "      * Constraint {cons:?}: {num} nodes excluded by filter\n"
        ));
    }
    let exhausted = n(metric, "NodesExhausted");
    if exhausted > 0 {
        out.push_str(&format!(
            "      * Resources exhausted on {exhausted} nodes\n"
        ));
    }
    for (class, num) in entries("ClassExhausted") {
        out.push_str(&format!(
            "      * Class {class:?} exhausted on {num} nodes\n"
        ));
    }
    for (dim, num) in entries("DimensionExhausted") {
        out.push_str(&format!(
            "      * Dimension {dim:?} exhausted on {num} nodes\n"
        ));
    }
    out
}

fn multiple_jobs(items: &[Value]) -> String {
    let mut rows = vec!["ID|Type|Priority|Status|Submit Date".to_string()];
    for j in items {
        rows.push(format!(
            "{}|{}|{}|{}|{}",
            s(j, "ID"),
            type_string(j),
            n(j, "Priority"),
            job_status(j),
            format::time_ns(n(j, "SubmitTime"))
        ));
    }
    table(&rows)
}

/// The job's type, with `/periodic` or `/parameterized` as Nomad's list shows it.
fn type_string(j: &Value) -> String {
    let t = s(j, "Type");
    if j.get("Periodic").and_then(Value::as_bool) == Some(true) {
        format!("{t}/periodic")
    } else if j.get("ParameterizedJob").and_then(Value::as_bool) == Some(true) {
        format!("{t}/parameterized")
    } else {
        t.to_string()
    }
}

fn job_status(j: &Value) -> String {
    let st = s(j, "Status");
    if j.get("Stop").and_then(Value::as_bool) == Some(true) {
        format!("{st} (stopped)")
    } else {
        st.to_string()
    }
}

/// The job an ID or prefix names.
pub(super) fn resolve_job(ctx: &Ctx, id: &str) -> Result<Value, CliError> {
    match lookup(ctx, "/v1/jobs", id, false, "job")? {
        Found::One(j) => Ok(j),
        Found::None => Err(CliError::Other(format!(
            "No job(s) with prefix or ID {id:?} found"
        ))),
        Found::Many(items) => Err(CliError::Other(format!(
            "Prefix matched multiple jobs\n\n{}",
            multiple_jobs(&items).trim_end()
        ))),
    }
}

fn status(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 0, 1, "either no arguments or one: <job>")?;
    let verbose = m.opt_present("verbose");
    let Some(id) = args.first() else {
        let jobs = ctx.client.get("/v1/jobs").map_err(api("querying jobs"))?;
        let jobs = jobs.as_array().cloned().unwrap_or_default();
        if jobs.is_empty() {
            println!("No running jobs");
        } else {
            print!("{}", multiple_jobs(&jobs));
        }
        return Ok(0);
    };
    let stub = resolve_job(ctx, id)?;
    let jid = http::escape(s(&stub, "ID"));
    let ns = http::escape(s(&stub, "Namespace"));
    let job = ctx
        .client
        .get(&format!("/v1/job/{jid}?namespace={ns}"))
        .map_err(api("retrieving job information"))?;
    let dcs: Vec<&str> = job
        .get("Datacenters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let is = |k: &str| !job.get(k).is_none_or(Value::is_null);
    print!(
        "{}",
        kv(&[
            ("ID", s(&job, "ID").to_string()),
            ("Name", s(&job, "Name").to_string()),
            ("Submit Date", format::time_ns(n(&job, "SubmitTime"))),
            ("Type", s(&job, "Type").to_string()),
            ("Priority", n(&job, "Priority").to_string()),
            ("Datacenters", dcs.join(",")),
            ("Namespace", s(&job, "Namespace").to_string()),
            ("Node Pool", s(&job, "NodePool").to_string()),
            ("Status", job_status(&job)),
            ("Periodic", is("Periodic").to_string()),
            ("Parameterized", is("ParameterizedJob").to_string()),
        ])
    );
    let summary = ctx
        .client
        .get(&format!("/v1/job/{jid}/summary?namespace={ns}"))
        .map_err(api("retrieving job summary"))?;
    let mut rows =
        vec!["Task Group|Queued|Starting|Running|Failed|Complete|Lost|Unknown".to_string()];
    if let Some(groups) = summary.get("Summary").and_then(Value::as_object) {
        for (g, c) in groups {
            rows.push(format!(
                "{g}|{}|{}|{}|{}|{}|{}|{}",
                n(c, "Queued"),
                n(c, "Starting"),
                n(c, "Running"),
                n(c, "Failed"),
                n(c, "Complete"),
                n(c, "Lost"),
                n(c, "Unknown")
            ));
        }
    }
    println!("\nSummary");
    print!("{}", table(&rows));
    let allocs = ctx
        .client
        .get(&format!("/v1/job/{jid}/allocations?namespace={ns}"))
        .map_err(api("retrieving allocations"))?;
    println!("\nAllocations");
    let allocs = allocs.as_array().cloned().unwrap_or_default();
    if allocs.is_empty() {
        println!("No allocations placed");
    } else {
        print!("{}", alloc_table(&allocs, verbose));
    }
    Ok(0)
}

/// Nomad's allocation table (job status, node status, "Prefix matched multiple").
pub fn alloc_table(allocs: &[Value], verbose: bool) -> String {
    let mut allocs = allocs.to_vec();
    allocs.sort_by_key(|a| std::cmp::Reverse(n(a, "CreateIndex")));
    let mut rows =
        vec!["ID|Node ID|Task Group|Version|Desired|Status|Created|Modified".to_string()];
    for a in &allocs {
        let (created, modified) = if verbose {
            (
                format::time_ns(n(a, "CreateTime")),
                format::time_ns(n(a, "ModifyTime")),
            )
        } else {
            (ago(n(a, "CreateTime")), ago(n(a, "ModifyTime")))
        };
        rows.push(format!(
            "{}|{}|{}|{}|{}|{}|{created}|{modified}",
            short(s(a, "ID"), verbose),
            short(s(a, "NodeID"), verbose),
            s(a, "TaskGroup"),
            n(a, "JobVersion"),
            s(a, "DesiredStatus"),
            s(a, "ClientStatus"),
        ));
    }
    table(&rows)
}

fn stop(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 1, 1, "one argument, <job>")?;
    let stub = resolve_job(ctx, &args[0])?;
    let jid = http::escape(s(&stub, "ID"));
    let ns = http::escape(s(&stub, "Namespace"));
    let purge = if m.opt_present("purge") {
        "&purge=true"
    } else {
        ""
    };
    let resp = ctx
        .client
        .json(
            "DELETE",
            &format!("/v1/job/{jid}?namespace={ns}{purge}"),
            b"",
        )
        .map_err(api("deregistering job"))?;
    let eval_id = s(&resp, "EvalID");
    if m.opt_present("detach") {
        println!("{eval_id}");
        return Ok(0);
    }
    if eval_id.is_empty() {
        return Ok(0);
    }
    monitor(ctx, eval_id, m.opt_present("verbose"))
}
