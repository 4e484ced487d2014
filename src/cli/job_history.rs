//! `job history [-p] [-version N] <job>` (the kept versions, with Nomad's diff between each
//! and the one before it), `job revert <job> <version>` and `job scale <job> [<group>]
//! <count>`: the last two monitor the evaluation they make, as `job run` does.

use serde_json::{json, Value};

use super::format::{kv, n, s, time_ns};
use super::job::{monitor, resolve_job};
use super::{api, flag, http, opt, positional, CliError, Command, Ctx};

pub const HISTORY: Command = Command {
    group: "job",
    name: "history",
    synopsis: "Display all tracked versions of a job",
    usage: "nomadlet job history [options] <job>",
    flags: &[
        flag(
            "p",
            "Print the difference between each version and the one before it",
        ),
        opt("version", "N", "Print only this version"),
        flag("json", "Print the versions as JSON"),
    ],
    run: history,
};

pub const REVERT: Command = Command {
    group: "job",
    name: "revert",
    synopsis: "Revert to a prior version of the job",
    usage: "nomadlet job revert [options] <job> <version>",
    flags: &[
        flag(
            "detach",
            "Return right after the revert, printing the evaluation ID",
        ),
        flag("verbose", "Print full IDs"),
    ],
    run: revert,
};

pub const SCALE: Command = Command {
    group: "job",
    name: "scale",
    synopsis: "Change the count of a job's task group",
    usage: "nomadlet job scale [options] <job> [<group>] <count>",
    flags: &[
        flag(
            "detach",
            "Return right after the scale, printing the evaluation ID",
        ),
        flag("verbose", "Print full IDs"),
    ],
    run: scale,
};

/// The job's ID and namespace, escaped for a path and a query.
fn job_path(ctx: &Ctx, id: &str) -> Result<(Value, String), CliError> {
    let stub = resolve_job(ctx, id)?;
    let jid = http::escape(s(&stub, "ID"));
    let ns = http::escape(s(&stub, "Namespace"));
    Ok((stub, format!("/v1/job/{jid}{{}}?namespace={ns}")))
}

/// One diff's changes, one line each (`+`, `-`, `+/-`), objects and groups indented.
fn diff_lines(d: &Value, depth: usize, out: &mut String) {
    let sign = |t: &str| match t {
        "Added" => "+",
        "Deleted" => "-",
        "Edited" => "+/-",
        _ => " ",
    };
    let pad = "  ".repeat(depth);
    for f in d
        .get("Fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let t = s(f, "Type");
        if t == "None" {
            continue;
        }
        let change = match t {
            "Added" => format!("{:?}", s(f, "New")),
            "Deleted" => format!("{:?}", s(f, "Old")),
            _ => format!("{:?} => {:?}", s(f, "Old"), s(f, "New")),
        };
        out.push_str(&format!("{pad}{} {}: {change}\n", sign(t), s(f, "Name")));
    }
    for key in ["Objects", "TaskGroups", "Tasks"] {
        for o in d.get(key).and_then(Value::as_array).into_iter().flatten() {
            let t = s(o, "Type");
            if t == "None" {
                continue;
            }
            let kind = match key {
                "TaskGroups" => "Task Group: ",
                "Tasks" => "Task: ",
                _ => "",
            };
            out.push_str(&format!("{pad}{} {kind}{:?} {{\n", sign(t), s(o, "Name")));
            diff_lines(o, depth + 1, out);
            out.push_str(&format!("{pad}  }}\n"));
        }
    }
}

fn history(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 1, 1, "one argument, <job>")?;
    let (_, path) = job_path(ctx, &args[0])?;
    let only = match m.opt_str("version") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| CliError::Usage(format!("Error parsing version value: {v:?}")))?,
        ),
    };
    let diffs = m.opt_present("p");
    let q = if diffs { "&diffs=true" } else { "" };
    let out = ctx
        .client
        .get(&format!("{}{q}", path.replace("{}", "/versions")))
        .map_err(api("retrieving job versions"))?;
    let versions = out["Versions"].as_array().cloned().unwrap_or_default();
    let diffs_list = out["Diffs"].as_array().cloned().unwrap_or_default();
    if m.opt_present("json") {
        let chosen: Vec<&Value> = versions
            .iter()
            .filter(|v| only.is_none_or(|o| n(v, "Version") as u64 == o))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&chosen).unwrap_or_default()
        );
        return Ok(0);
    }
    let mut blocks = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        if only.is_some_and(|o| n(v, "Version") as u64 != o) {
            continue;
        }
        let mut text = kv(&[
            ("Version", n(v, "Version").to_string()),
            ("Stable", v["Stable"].as_bool().unwrap_or(false).to_string()),
            ("Submit Date", time_ns(n(v, "SubmitTime"))),
        ]);
        if let Some(d) = diffs_list.get(i).filter(|_| diffs) {
            let mut lines = String::new();
            diff_lines(d, 0, &mut lines);
            text.push_str(&format!("Diff        =\n{lines}"));
        }
        blocks.push(text);
    }
    if blocks.is_empty() {
        if let Some(o) = only {
            return Err(CliError::Other(format!(
                "Error: Version {o} not found in the job's history"
            )));
        }
    }
    print!("{}", blocks.join("\n"));
    Ok(0)
}

/// Print the evaluation ID (`-detach`) or monitor it.
fn follow(ctx: &Ctx, m: &getopts::Matches, resp: &Value) -> Result<i32, CliError> {
    let eval_id = s(resp, "EvalID");
    if m.opt_present("detach") {
        println!("{eval_id}");
        return Ok(0);
    }
    if eval_id.is_empty() {
        return Ok(0);
    }
    monitor(ctx, eval_id, m.opt_present("verbose"))
}

fn revert(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 2, 2, "two arguments, <job> <version>")?;
    let version: u64 = args[1]
        .parse()
        .map_err(|_| CliError::Usage(format!("Failed to parse job version: {:?}", args[1])))?;
    let (stub, path) = job_path(ctx, &args[0])?;
    let body = json!({"JobID": s(&stub, "ID"), "JobVersion": version});
    let resp = ctx
        .client
        .json(
            "PUT",
            &path.replace("{}", "/revert"),
            body.to_string().as_bytes(),
        )
        .map_err(api("retrieving job versions"))?;
    follow(ctx, m, &resp)
}

fn scale(ctx: &Ctx, m: &getopts::Matches) -> Result<i32, CliError> {
    let args = positional(m, 2, 3, "<job> [<group>] <count>")?;
    let count_text = args.last().cloned().unwrap_or_default();
    let count: i64 = count_text.parse().map_err(|_| {
        CliError::Usage(format!(
            "Failed to convert count string to int: {count_text:?}"
        ))
    })?;
    let (stub, path) = job_path(ctx, &args[0])?;
    let group = match args.get(1).filter(|_| args.len() == 3) {
        Some(g) => g.clone(),
        None => {
            let job = ctx
                .client
                .get(&path.replace("{}", ""))
                .map_err(api("retrieving job"))?;
            let groups = job["TaskGroups"].as_array().cloned().unwrap_or_default();
            if groups.len() != 1 {
                return Err(CliError::Usage(
                    "Group name required when the job has more than one task group".into(),
                ));
            }
            s(&groups[0], "Name").to_string()
        }
    };
    let body = json!({"Count": count, "Target": {"Job": s(&stub, "ID"), "Group": group},
        "Message": "submitted using the nomadlet CLI"});
    let resp = ctx
        .client
        .json(
            "PUT",
            &path.replace("{}", "/scale"),
            body.to_string().as_bytes(),
        )
        .map_err(api("scaling job"))?;
    follow(ctx, m, &resp)
}
