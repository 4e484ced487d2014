//! `node status [ID]`, `node drain`, `node eligibility` and `server members`.

use serde_json::Value;

use super::format::{self, id as short, kv, or_none, s, table};
use super::{api, flag, http, lookup, opt, positional, CliError, Command, Ctx, Found};

pub const STATUS: Command = Command {
    group: "node",
    name: "status",
    synopsis: "Display status information about nodes",
    usage: "nomadlet node status [options] [<node>]",
    flags: &[flag("verbose", "Print full IDs")],
    run: status,
};

pub const DRAIN: Command = Command {
    group: "node",
    name: "drain",
    synopsis: "Toggle drain mode on a given node",
    usage: "nomadlet node drain [options] -enable|-disable <node>",
    flags: &[
        flag("enable", "Enable draining for the node"),
        flag("disable", "Disable draining for the node"),
        opt(
            "deadline",
            "DURATION",
            "How long allocations may take to migrate before they are forced off (default 1h)",
        ),
        flag("force", "Migrate every allocation at once (deadline -1s)"),
        flag(
            "no-deadline",
            "Wait for every allocation to migrate, however long",
        ),
        flag("ignore-system", "Leave system jobs' allocations running"),
        flag(
            "keep-ineligible",
            "With -disable: leave the node ineligible for scheduling",
        ),
        opt("m", "MESSAGE", "A message stored in the drain's metadata"),
        flag(
            "detach",
            "Return right after the drain is set instead of monitoring it",
        ),
        flag("self", "Drain the node of the agent the CLI talks to"),
        flag(
            "yes",
            "Answer yes to the confirmation (nomadlet never asks; accepted for scripts)",
        ),
    ],
    run: drain,
};

pub const ELIGIBILITY: Command = Command {
    group: "node",
    name: "eligibility",
    synopsis: "Toggle scheduling eligibility for a given node",
    usage: "nomadlet node eligibility [options] -enable|-disable <node>",
    flags: &[
        flag("enable", "Mark the node eligible for scheduling"),
        flag("disable", "Mark the node ineligible for scheduling"),
        flag("self", "Target the node of the agent the CLI talks to"),
    ],
    run: eligibility,
};

/// Longest the drain monitor waits in one blocking query.
const MONITOR_WAIT: &str = "30s";

/// The CLI's default drain deadline (`-deadline`), in nanoseconds: one hour.
const DEFAULT_DEADLINE_NS: i64 = 3_600_000_000_000;

/// The node a command targets: the agent's own (`-self`) or the one `<node>` (an ID or a
/// unique prefix) names. Returns its full ID.
fn target_node(ctx: &Ctx, m: &getopts::Matches) -> Result<String, CliError> {
    if m.opt_present("self") {
        positional(m, 0, 0, "no arguments with -self")?;
        let me = ctx
            .client
            .get("/v1/agent/self")
            .map_err(api("querying the agent"))?;
        let id = s(&me["stats"]["client"], "node_id");
        if id.is_empty() {
            return Err(CliError::Other(
                "Error determining local node ID: the agent runs no client".into(),
            ));
        }
        return Ok(id.to_string());
    }
    let args = positional(m, 1, 1, "one argument: <node>")?;
    let id = &args[0];
    if id.len() == 1 {
        return Err(CliError::Other(
            "Identifier must contain at least two characters.".into(),
        ));
    }
    match lookup(ctx, "/v1/nodes", id, true, "node")? {
        Found::One(n) => Ok(s(&n, "ID").to_string()),
        Found::None => Err(CliError::Other(format!(
            "No node(s) with prefix or id {id:?} found"
        ))),
        Found::Many(items) => Err(CliError::Other(format!(
            "Prefix matched multiple nodes\n\n{}",
            node_rows(&items, false).trim_end()
        ))),
    }
}

/// `-enable` xor `-disable`.
fn enable_flag(m: &getopts::Matches) -> Result<bool, CliError> {
    match (m.opt_present("enable"), m.opt_present("disable")) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(CliError::Usage(
            "Either the '-enable' or '-disable' flag must be set".into(),
        )),
    }
}

fn eligibility(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let enable = enable_flag(m)?;
    let id = target_node(ctx, m)?;
    let word = if enable { "eligible" } else { "ineligible" };
    let body = serde_json::json!({"NodeID": id, "Eligibility": word}).to_string();
    ctx.client
        .json(
            "PUT",
            &format!("/v1/node/{}/eligibility", http::escape(&id)),
            body.as_bytes(),
        )
        .map_err(api("updating scheduling eligibility"))?;
    println!("Node {id:?} scheduling eligibility set: {word} for scheduling");
    Ok(0)
}

/// The `Deadline` a drain asks for, in nanoseconds (`-1s` forced, `0` none).
fn drain_deadline(m: &getopts::Matches) -> Result<i64, CliError> {
    let given = m.opt_str("deadline");
    let chosen = [
        given.is_some(),
        m.opt_present("force"),
        m.opt_present("no-deadline"),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if chosen > 1 {
        return Err(CliError::Usage(
            "-deadline, -force and -no-deadline are mutually exclusive".into(),
        ));
    }
    if m.opt_present("force") {
        return Ok(-1_000_000_000);
    }
    if m.opt_present("no-deadline") {
        return Ok(0);
    }
    let Some(text) = given else {
        return Ok(DEFAULT_DEADLINE_NS);
    };
    let d = crate::config::parse_go_duration(&text)
        .ok_or_else(|| CliError::Usage(format!("Failed to parse deadline {text:?}")))?;
    let ns = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    if ns <= 0 {
        return Err(CliError::Usage(
            "A positive drain deadline must be given".into(),
        ));
    }
    Ok(ns)
}

fn drain(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let enable = enable_flag(m)?;
    let deadline = if enable {
        Some(drain_deadline(m)?)
    } else {
        None
    };
    let id = target_node(ctx, m)?;
    let mut meta = serde_json::Map::new();
    if let Some(msg) = m.opt_str("m") {
        meta.insert("message".into(), Value::String(msg));
    }
    let body = serde_json::json!({
        "NodeID": id,
        "DrainSpec": deadline.map(|d| serde_json::json!({
            "Deadline": d,
            "IgnoreSystemJobs": m.opt_present("ignore-system"),
        })),
        "MarkEligible": !enable && !m.opt_present("keep-ineligible"),
        "Meta": meta,
    })
    .to_string();
    let path = format!("/v1/node/{}", http::escape(&id));
    ctx.client
        .json("PUT", &format!("{path}/drain"), body.as_bytes())
        .map_err(api("updating drain specification"))?;
    if !enable {
        println!("Node {id:?} drain strategy unset");
        return Ok(0);
    }
    println!("Node {id:?} drain strategy set");
    if m.opt_present("detach") {
        return Ok(0);
    }
    monitor_drain(ctx, &id, &path)
}

/// Follow the node (blocking queries) until its drain ends.
fn monitor_drain(ctx: &Ctx, id: &str, path: &str) -> Result<i32, CliError> {
    let stamp = || crate::cli::format::time_ns(crate::time::unix_now_nanos());
    println!(
        "{}: Ctrl-C to stop monitoring: will not cancel the node drain",
        stamp()
    );
    let mut index = 0u64;
    loop {
        let node = ctx
            .client
            .get(&format!("{path}?index={index}&wait={MONITOR_WAIT}"))
            .map_err(api("monitoring the node"))?;
        index = node
            .get("ModifyIndex")
            .and_then(Value::as_u64)
            .unwrap_or(index);
        if !node["DrainStrategy"].is_null() {
            continue;
        }
        match s(&node["LastDrain"], "Status") {
            "complete" => println!("{}: Drain complete for node {id:?}", stamp()),
            "canceled" => println!("{}: Drain canceled for node {id:?}", stamp()),
            other => println!("{}: Drain ended for node {id:?} ({other})", stamp()),
        }
        let allocs = ctx
            .client
            .get(&format!("{path}/allocations"))
            .map_err(api("querying node allocations"))?;
        let running = allocs
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| matches!(s(a, "ClientStatus"), "pending" | "running"));
        if !running {
            println!("{}: All allocations on node {id:?} have stopped", stamp());
        }
        return Ok(0);
    }
}

pub const MEMBERS: Command = Command {
    group: "server",
    name: "members",
    synopsis: "Display a list of the known servers and their status",
    usage: "nomadlet server members [options]",
    flags: &[flag("verbose", "Print every tag of each member")],
    run: members,
};

fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn node_rows(nodes: &[Value], verbose: bool) -> String {
    let mut rows = vec!["ID|Node Pool|DC|Name|Class|Drain|Eligibility|Status".to_string()];
    for nd in nodes {
        rows.push(format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            short(s(nd, "ID"), verbose),
            s(nd, "NodePool"),
            s(nd, "Datacenter"),
            s(nd, "Name"),
            or_none(s(nd, "NodeClass")),
            b(nd, "Drain"),
            s(nd, "SchedulingEligibility"),
            s(nd, "Status"),
        ));
    }
    table(&rows)
}

fn status(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 0, 1, "either no arguments or one: <node>")?;
    let verbose = m.opt_present("verbose");
    let Some(id) = args.first() else {
        let nodes = ctx
            .client
            .get("/v1/nodes")
            .map_err(api("querying node status"))?;
        let nodes = nodes.as_array().cloned().unwrap_or_default();
        if nodes.is_empty() {
            println!("No nodes registered");
        } else {
            print!("{}", node_rows(&nodes, verbose));
        }
        return Ok(0);
    };
    if id.len() == 1 {
        return Err(CliError::Other(
            "Identifier must contain at least two characters.".into(),
        ));
    }
    let stub = match lookup(ctx, "/v1/nodes", id, true, "node status")? {
        Found::One(n) => n,
        Found::None => {
            return Err(CliError::Other(format!(
                "No node(s) with prefix {id:?} found"
            )))
        }
        Found::Many(items) => {
            return Err(CliError::Other(format!(
                "Prefix matched multiple nodes\n\n{}",
                node_rows(&items, verbose).trim_end()
            )))
        }
    };
    let nid = http::escape(s(&stub, "ID"));
    let node = ctx
        .client
        .get(&format!("/v1/node/{nid}"))
        .map_err(api("querying node info"))?;
    let mut drivers: Vec<String> = node
        .get("Drivers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, d)| b(d, "Detected") && b(d, "Healthy"))
        .map(|(k, _)| k.clone())
        .collect();
    drivers.sort();
    print!(
        "{}",
        kv(&[
            ("ID", s(&node, "ID").to_string()),
            ("Name", s(&node, "Name").to_string()),
            ("Node Pool", s(&node, "NodePool").to_string()),
            ("Class", or_none(s(&node, "NodeClass"))),
            ("DC", s(&node, "Datacenter").to_string()),
            ("Drain", b(&node, "Drain").to_string()),
            ("Eligibility", s(&node, "SchedulingEligibility").to_string()),
            ("Status", s(&node, "Status").to_string()),
            ("Driver Status", or_none(&drivers.join(","))),
        ])
    );
    println!("\nNode Events");
    let mut rows = vec!["Time|Subsystem|Message".to_string()];
    let mut events: Vec<Value> = node
        .get("Events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    events.reverse();
    for e in &events {
        rows.push(format!(
            "{}|{}|{}",
            format::time_str(s(e, "Timestamp")),
            s(e, "Subsystem"),
            s(e, "Message").replace('|', "/")
        ));
    }
    print!("{}", table(&rows));
    let allocs = ctx
        .client
        .get(&format!("/v1/node/{nid}/allocations"))
        .map_err(api("querying node allocations"))?;
    println!("\nAllocations");
    let allocs = allocs.as_array().cloned().unwrap_or_default();
    if allocs.is_empty() {
        println!("No allocations placed");
    } else {
        print!("{}", super::job::alloc_table(&allocs, verbose));
    }
    Ok(0)
}

fn members(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    positional(m, 0, 0, "no arguments")?;
    let v = ctx
        .client
        .get("/v1/agent/members")
        .map_err(api("querying servers"))?;
    // The leader's RPC address, to mark its member; an error only loses the mark.
    let leader = ctx
        .client
        .get("/v1/status/leader")
        .ok()
        .and_then(|l| l.as_str().map(str::to_string))
        .unwrap_or_default();
    let verbose = m.opt_present("verbose");
    let header = if verbose {
        "Name|Address|Port|Status|Leader|Protocol|Raft Version|Build|Datacenter|Region|Tags"
    } else {
        "Name|Address|Port|Status|Leader|Raft Version|Build|Datacenter|Region"
    };
    let mut rows = vec![header.to_string()];
    for mem in v
        .get("Members")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let tags = mem.get("Tags").cloned().unwrap_or(Value::Null);
        let addr = s(mem, "Addr");
        let is_leader = !leader.is_empty() && leader == format!("{addr}:{}", s(&tags, "port"));
        let raft = match s(&tags, "raft_vsn") {
            "" => "3",
            r => r,
        };
        let mut row = format!(
            "{}|{addr}|{}|{}|{is_leader}",
            s(mem, "Name"),
            mem.get("Port").and_then(Value::as_u64).unwrap_or(0),
            s(mem, "Status"),
        );
        if verbose {
            row.push_str(&format!(
                "|{}",
                mem.get("ProtocolCur").and_then(Value::as_u64).unwrap_or(0)
            ));
        }
        row.push_str(&format!(
            "|{raft}|{}|{}|{}",
            s(&tags, "build"),
            s(&tags, "dc"),
            s(&tags, "region")
        ));
        if verbose {
            let all: Vec<String> = tags
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            row.push_str(&format!("|{}", all.join(",")));
        }
        rows.push(row);
    }
    print!("{}", table(&rows));
    Ok(0)
}
