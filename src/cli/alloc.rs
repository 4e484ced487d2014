//! `alloc status ID`, `alloc logs [-f] [-stderr] ID [task]` (the plain log endpoint) and
//! `alloc exec [-task T] [-i] [-t] ID cmd…` (Nomad's exec websocket).

use std::io::{ErrorKind, Read, Write};

use serde_json::Value;

use super::format::{self, ago, id as short, kv, n, or_none, s, table};
use super::{api, flag, http, lookup, opt, positional, CliError, Command, Ctx, Found};

pub const STATUS: Command = Command {
    group: "alloc",
    name: "status",
    synopsis: "Display allocation status information and metadata",
    usage: "nomadlet alloc status [options] <allocation>",
    flags: &[flag("verbose", "Print full IDs and dates")],
    run: status,
};

pub const LOGS: Command = Command {
    group: "alloc",
    name: "logs",
    synopsis: "Stream the logs of a task",
    usage: "nomadlet alloc logs [options] <allocation> [<task>]",
    flags: &[
        flag("stderr", "Show stderr instead of stdout"),
        flag("f", "Follow the log until interrupted"),
        flag("verbose", "Print full IDs"),
    ],
    run: logs,
};

pub const EXEC: Command = Command {
    group: "alloc",
    name: "exec",
    synopsis: "Execute commands in task",
    usage: "nomadlet alloc exec [options] <allocation> <command> [<args>...]",
    flags: &[
        opt(
            "task",
            "<task-name>",
            "The task to run the command in (needed when the allocation has several)",
        ),
        flag("i", "Pass stdin to the command"),
        flag("t", "Allocate a pseudo-terminal for the command"),
    ],
    run: exec,
};

/// The full allocation an ID or unique prefix names.
fn resolve(ctx: &Ctx, id: &str, verbose: bool) -> Result<Value, CliError> {
    if id.len() == 1 {
        return Err(CliError::Other(
            "Alloc ID must contain at least two characters.".into(),
        ));
    }
    let stub = match lookup(ctx, "/v1/allocations", id, true, "allocation")? {
        Found::One(a) => a,
        Found::None => {
            return Err(CliError::Other(format!(
                "No allocation(s) with prefix or id {id:?} found"
            )))
        }
        Found::Many(items) => {
            return Err(CliError::Other(format!(
                "Prefix matched multiple allocations\n\n{}",
                super::job::alloc_table(&items, verbose).trim_end()
            )))
        }
    };
    ctx.client
        .get(&format!("/v1/allocation/{}", http::escape(s(&stub, "ID"))))
        .map_err(api("querying allocation"))
}

/// The tasks of an allocation's group, in the job's order.
fn group_tasks(alloc: &Value) -> Vec<Value> {
    let group = s(alloc, "TaskGroup");
    alloc
        .get("Job")
        .and_then(|j| j.get("TaskGroups"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|g| s(g, "Name") == group)
        .and_then(|g| g.get("Tasks"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn status(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 1, 1, "one argument: <allocation>")?;
    let verbose = m.opt_present("verbose");
    let a = resolve(ctx, &args[0], verbose)?;
    let (created, modified) = if verbose {
        (
            format::time_ns(n(&a, "CreateTime")),
            format::time_ns(n(&a, "ModifyTime")),
        )
    } else {
        (ago(n(&a, "CreateTime")), ago(n(&a, "ModifyTime")))
    };
    print!(
        "{}",
        kv(&[
            ("ID", s(&a, "ID").to_string()),
            ("Eval ID", short(s(&a, "EvalID"), verbose)),
            ("Name", s(&a, "Name").to_string()),
            ("Node ID", short(s(&a, "NodeID"), verbose)),
            ("Node Name", s(&a, "NodeName").to_string()),
            ("Job ID", s(&a, "JobID").to_string()),
            ("Job Version", n(&a, "JobVersion").to_string()),
            ("Client Status", s(&a, "ClientStatus").to_string()),
            ("Client Description", or_none(s(&a, "ClientDescription"))),
            ("Desired Status", s(&a, "DesiredStatus").to_string()),
            ("Desired Description", or_none(s(&a, "DesiredDescription"))),
            ("Created", created),
            ("Modified", modified),
        ])
    );
    if let Some(addrs) = addresses(&a) {
        print!("\nAllocation Addresses:\n{addrs}");
    }
    let states = a.get("TaskStates").cloned().unwrap_or(Value::Null);
    for task in group_tasks(&a) {
        let name = s(&task, "Name");
        let st = states.get(name).cloned().unwrap_or(Value::Null);
        let state = match s(&st, "State") {
            "" => "pending",
            x => x,
        };
        println!("\nTask {name:?} is {state:?}");
        let res = task.get("Resources").cloned().unwrap_or(Value::Null);
        let disk = a
            .get("Job")
            .and_then(|j| j.get("TaskGroups"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|g| s(g, "Name") == s(&a, "TaskGroup"))
            .and_then(|g| g.get("EphemeralDisk"))
            .map(|d| n(d, "SizeMB"))
            .unwrap_or(0);
        println!("Task Resources:");
        print!(
            "{}",
            table(&[
                "CPU|Memory|Disk|Addresses".to_string(),
                format!(
                    "{} MHz|{} MiB|{disk} MiB|",
                    n(&res, "CPU"),
                    n(&res, "MemoryMB")
                ),
            ])
        );
        let restarts = n(&st, "Restarts");
        println!("\nTask Events:");
        print!(
            "{}",
            kv(&[
                ("Started At", format::time_str(s(&st, "StartedAt"))),
                ("Finished At", format::time_str(s(&st, "FinishedAt"))),
                ("Total Restarts", restarts.to_string()),
                ("Last Restart", format::time_str(s(&st, "LastRestart"))),
            ])
        );
        println!("\nRecent Events:");
        let mut rows = vec!["Time|Type|Description".to_string()];
        let mut events: Vec<Value> = st
            .get("Events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        events.reverse();
        for e in &events {
            let msg = match s(e, "DisplayMessage") {
                "" => s(e, "Message"),
                d => d,
            };
            rows.push(format!(
                "{}|{}|{}",
                format::time_ns(n(e, "Time")),
                s(e, "Type"),
                msg.replace('|', "/")
            ));
        }
        print!("{}", table(&rows));
    }
    Ok(0)
}

/// Nomad's "Allocation Addresses" table of the group network's ports (`*label`, whether it is
/// dynamic, `ip:port` and `-> to` when mapped); `None` without ports.
fn addresses(a: &Value) -> Option<String> {
    let nw = a.pointer("/AllocatedResources/Shared/Networks/0")?;
    let ip = s(nw, "IP");
    let mut rows = vec!["Label|Dynamic|Address".to_string()];
    for (key, dynamic) in [("ReservedPorts", "no"), ("DynamicPorts", "yes")] {
        for p in nw.get(key).and_then(Value::as_array).into_iter().flatten() {
            let mut row = format!("*{}|{dynamic}|{ip}:{}", s(p, "Label"), n(p, "Value"));
            if n(p, "To") > 0 {
                row.push_str(&format!(" -> {}", n(p, "To")));
            }
            rows.push(row);
        }
    }
    (rows.len() > 1).then(|| table(&rows))
}

fn logs(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 1, 2, "one or two arguments: <allocation> [<task>]")?;
    let a = resolve(ctx, &args[0], m.opt_present("verbose"))?;
    let task = match args.get(1) {
        Some(t) => t.clone(),
        None => {
            let tasks = group_tasks(&a);
            match tasks.as_slice() {
                [one] => s(one, "Name").to_string(),
                _ => {
                    let list: String = tasks
                        .iter()
                        .map(|t| format!("  * {}\n", s(t, "Name")))
                        .collect();
                    return Err(CliError::Other(format!(
                        "Allocation {:?} is running the following tasks:\n{list}\nPlease specify the task.",
                        short(s(&a, "ID"), false)
                    )));
                }
            }
        }
    };
    let kind = if m.opt_present("stderr") {
        "stderr"
    } else {
        "stdout"
    };
    let follow = m.opt_present("f");
    let path = format!(
        "/v1/client/fs/logs/{}?task={}&type={kind}&origin=start&offset=0&plain=true&follow={follow}",
        http::escape(s(&a, "ID")),
        http::escape(&task)
    );
    let resp = ctx
        .client
        .send("GET", &path, &[], b"")
        .map_err(api("reading logs"))?;
    if resp.status != 200 {
        let code = resp.status;
        let body = resp.bytes().unwrap_or_default();
        return Err(CliError::Other(format!(
            "Error reading file: Unexpected response code: {code} ({})",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let mut body = resp.into_reader();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                if out.write_all(&buf[..k]).and_then(|_| out.flush()).is_err() {
                    // The reader of our stdout went away (e.g. `| head`): done.
                    return Ok(0);
                }
            }
            // A quiet followed log: the read deadline passed between chunks; keep waiting.
            Err(e) if follow && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::Other(format!("Error reading logs: {e}"))),
        }
    }
    Ok(0)
}

/// The one task of an allocation, or the one `-task` names.
fn pick_task(a: &Value, given: Option<String>) -> Result<String, CliError> {
    if let Some(t) = given {
        return Ok(t);
    }
    let tasks = group_tasks(a);
    match tasks.as_slice() {
        [one] => Ok(s(one, "Name").to_string()),
        _ => Err(CliError::Other(
            "Please specify the task with -task: the allocation has several".into(),
        )),
    }
}

fn exec(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    if m.free.len() < 2 {
        return Err(CliError::Usage(
            "This command takes at least two arguments: <allocation> <command>".into(),
        ));
    }
    let a = resolve(ctx, &m.free[0], false)?;
    let task = pick_task(&a, m.opt_str("task"))?;
    let command = serde_json::to_string(&m.free[1..]).unwrap_or_default();
    let path = format!(
        "/v1/client/allocation/{}/exec?task={}&tty={}&command={}",
        http::escape(s(&a, "ID")),
        http::escape(&task),
        m.opt_present("t"),
        http::escape(&command)
    );
    super::exec_ws::run(ctx, &path, m.opt_present("i"))
}
