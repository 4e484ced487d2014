//! `node status [ID]` and `server members`.

use serde_json::Value;

use super::format::{self, id as short, kv, or_none, s, table};
use super::{api, flag, http, lookup, positional, CliError, Command, Ctx, Found};

pub const STATUS: Command = Command {
    group: "node",
    name: "status",
    synopsis: "Display status information about nodes",
    usage: "nomadlet node status [options] [<node>]",
    flags: &[flag("verbose", "Print full IDs")],
    run: status,
};

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
