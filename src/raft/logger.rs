//! raft-rs logs through `slog`; this drain hands each record to our `log` facade (no
//! slog-async or slog-term threads). Raft's chatty INFO lines go to DEBUG.

use std::fmt::Write as _;

/// A synchronous slog drain into the `log` crate, target `raft`.
pub struct LogDrain;

/// Collects a record's key-value pairs as ` key=value`.
struct Kv(String);

impl slog::Serializer for Kv {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for LogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => log::Level::Error,
            slog::Level::Warning => log::Level::Warn,
            // raft-rs reports every election step at INFO: ours are DEBUG.
            slog::Level::Info | slog::Level::Debug => log::Level::Debug,
            slog::Level::Trace => log::Level::Trace,
        };
        if !log::log_enabled!(target: "raft", level) {
            return Ok(());
        }
        let mut kv = Kv(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        log::log!(target: "raft", level, "{}{}", record.msg(), kv.0);
        Ok(())
    }
}

/// The logger raft-rs gets.
pub fn logger() -> slog::Logger {
    slog::Logger::root(LogDrain, slog::o!())
}
