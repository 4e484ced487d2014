//! Who the agent is and who a task runs as: the effective uid, and user names looked up in
//! the system's user database.

use std::ffi::CString;

/// How large a buffer `getpwnam_r` gets for one entry's strings (glibc suggests 1 KiB; NSS
/// modules with long gecos or home fields need more).
const PASSWD_BUF: usize = 16 * 1024;

/// A user's ids from the user database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// The effective uid of the agent.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Look a user up by name (`getpwnam_r`): `None` when there is no such user, the name holds
/// a NUL, or the lookup failed.
///
/// Raw libc: the user database goes through glibc's NSS (`/etc/passwd`, LDAP, systemd...),
/// which rustix, being a system-call layer, does not reach.
pub fn lookup(name: &str) -> Option<User> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; PASSWD_BUF];
    // SAFETY: passwd is plain old data (integers and pointers); an all-zero value is valid and
    // getpwnam_r overwrites it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: a NUL-terminated name, a passwd and a result
    // slot we own, and `buf` with its true length. Only the integer ids are read afterwards,
    // never the strings that point into `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(User {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_nonsense_does_not() {
        assert_eq!(lookup("root"), Some(User { uid: 0, gid: 0 }));
        assert_eq!(lookup("no-such-user-nomadlet-x"), None);
        assert_eq!(lookup("ro\0ot"), None);
        assert_eq!(
            euid(),
            std::fs::metadata("/proc/self").map_or(euid(), |m| {
                use std::os::unix::fs::MetadataExt;
                m.uid()
            })
        );
    }
}
