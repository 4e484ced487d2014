//! systemd's service notification protocol (`sd_notify(3)`), a datagram per state change to the
//! socket named by `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`), plus the
//! watchdog interval from `$WATCHDOG_USEC`/`$WATCHDOG_PID`. No crate of its own and no raw
//! system call: std's `UnixDatagram` can send to both kinds of name.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Longest `$NOTIFY_SOCKET` accepted (a `sun_path` holds 108 bytes).
pub const MAX_SOCKET_NAME: usize = 107;

/// The notification socket of this service, if systemd (or a test) gave one.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names; `None` when unset or unusable (not under systemd).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_str()?;
        match Notifier::connect(name) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET {name:?} is not usable: {e}");
                None
            }
        }
    }

    /// A notifier for a socket named as `$NOTIFY_SOCKET` names it: `/path` or `@abstract`.
    pub fn connect(name: &str) -> io::Result<Notifier> {
        if name.is_empty() || name.len() > MAX_SOCKET_NAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty or too long",
            ));
        }
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither a path nor an abstract name",
                ))
            }
        };
        Ok(Notifier {
            sock: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Send one state message (`READY=1`, `STOPPING=1`, …; several lines in one datagram).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            log::debug!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is set for this process
/// (`$WATCHDOG_PID` unset or ours). `None` when no watchdog is asked for.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `CLOCK_MONOTONIC` now in microseconds, as `RELOADING=1` wants it in `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("nl-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::connect(path.to_str().unwrap())
            .unwrap()
            .notify("READY=1");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);

        let name = format!("nl-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::connect(&format!("@{name}"))
            .unwrap()
            .notify("STOPPING=1");
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn monotonic_usec_is_monotonic_and_nonzero() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn refuses_names_that_are_not_sockets() {
        assert!(Notifier::connect("").is_err());
        assert!(Notifier::connect("relative/path").is_err());
        assert!(Notifier::connect(&format!("/{}", "x".repeat(200))).is_err());
    }
}
