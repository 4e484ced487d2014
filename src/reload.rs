//! Reloading on SIGHUP, as Nomad does: the agent reads its config files (and flags) again and
//! applies what may change while it runs — the log level, the client's static metadata and,
//! with TLS, the certificates. Everything else needs a restart and is left as it was. A config
//! that does not load is logged and the running one kept; a reload never stops the agent.
//!
//! Each thing that reloads is one `ReloadStep` in `RELOAD_STEPS`; a new one is a line there.

use crate::agent::Agent;
use crate::config::Config;

/// One thing a reload applies: given the agent and the config just read, apply the part this
/// step owns. `Ok(Some(what))` when it changed something (logged at INFO), `Ok(None)` when
/// nothing changed, `Err(why)` when the new value cannot be used (logged; the old one stays).
pub type ReloadStep = fn(&Agent, &Config) -> Result<Option<String>, ReloadError>;

/// Why a step could not apply its part: the owning module's own error (e.g. `TlsError`).
pub type ReloadError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a SIGHUP reloads, in order.
pub const RELOAD_STEPS: &[(&str, ReloadStep)] = &[
    ("log level", reload_log_level),
    ("client meta", reload_meta),
    ("tls certificates", reload_tls),
];

/// Read the config again from the same flags and files and run every reload step on it.
/// Returns how many steps changed something; a config that fails to load changes nothing.
pub fn reload(agent: &Agent) -> usize {
    log::info!("reloading the agent configuration");
    let config = match Config::from_flags(&agent.config.source) {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload: the configuration does not load, keeping the running one: {e}");
            return 0;
        }
    };
    let mut changed = 0;
    for (name, step) in RELOAD_STEPS {
        match step(agent, &config) {
            Ok(Some(what)) => {
                changed += 1;
                log::info!("reload: {name}: {what}");
            }
            Ok(None) => log::debug!("reload: {name}: unchanged"),
            Err(e) => log::error!("reload: {name}: {e}; keeping the running one"),
        }
    }
    log::info!("reload done: {changed} setting(s) changed");
    changed
}

/// The log level name (`Config::log_level`, upper case) as a filter.
pub fn level_filter(name: &str) -> log::LevelFilter {
    match name {
        "TRACE" => log::LevelFilter::Trace,
        "DEBUG" => log::LevelFilter::Debug,
        "WARN" => log::LevelFilter::Warn,
        "ERROR" => log::LevelFilter::Error,
        "OFF" => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    }
}

fn reload_log_level(_agent: &Agent, config: &Config) -> Result<Option<String>, ReloadError> {
    let want = level_filter(&config.log_level);
    match crate::logtap::level() {
        Some(now) if now == want => Ok(None),
        Some(now) => {
            crate::logtap::set_level(want);
            Ok(Some(format!("{now} -> {want}")))
        }
        None => Err("no logger installed".into()),
    }
}

fn reload_meta(agent: &Agent, config: &Config) -> Result<Option<String>, ReloadError> {
    if !agent.node.reload_static_meta(&config.meta) {
        return Ok(None);
    }
    // Published to the node record within the batch window, like a metadata write.
    agent.batcher.meta_changed();
    Ok(Some(format!("{} configured key(s)", config.meta.len())))
}

/// The certificate, key and CA files are read again, under the file names of the config just
/// read, and used for every new connection. Turning TLS on or off needs a restart.
fn reload_tls(agent: &Agent, config: &Config) -> Result<Option<String>, ReloadError> {
    match &agent.tls {
        None if config.tls.enabled() => Err(crate::tls::TlsError::Restart.into()),
        None => Ok(None),
        Some(tls) => {
            tls.reload_with(&config.tls)?;
            Ok(Some("certificates reloaded".into()))
        }
    }
}
