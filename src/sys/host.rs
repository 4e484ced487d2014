//! Safe wrappers for what `/v1/agent/host` reads from the kernel: `uname(2)` (rustix),
//! `statvfs(3)` (`sys::fd`) and `getifaddrs(3)` (raw libc: rustix has no interface listing;
//! the netlink dump it would take is what glibc already does).

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// `uname -a`'s fields: `[machine, nodename, release, sysname, version]`.
pub fn uname() -> std::io::Result<[String; 5]> {
    let u = rustix::system::uname();
    let text = |c: &CStr| c.to_string_lossy().into_owned();
    Ok([
        text(u.machine()),
        text(u.nodename()),
        text(u.release()),
        text(u.sysname()),
        text(u.version()),
    ])
}

/// `(total, available to unprivileged users)` bytes of the filesystem holding `path`.
pub fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let st = super::fd::statvfs(path).ok()?;
    Some((st.total, st.avail))
}

/// One IP address of one network interface.
#[derive(Clone, Debug)]
pub struct IfAddr {
    pub interface: String,
    pub addr: IpAddr,
    /// Prefix length of the netmask.
    pub prefix: u32,
    /// `IFF_*` flags of the interface.
    pub flags: u32,
}

fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: getifaddrs gives either null or a valid sockaddr whose family says its type.
    unsafe {
        match (*sa).sa_family as libc::c_int {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

fn prefix_len(mask: Option<IpAddr>) -> u32 {
    match mask {
        Some(IpAddr::V4(m)) => u32::from(m).count_ones(),
        Some(IpAddr::V6(m)) => u128::from(m).count_ones(),
        None => 0,
    }
}

/// Every IPv4 and IPv6 address of every interface.
pub fn interface_addrs() -> std::io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if let Some(addr) = sockaddr_ip(ifa.ifa_addr) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            out.push(IfAddr {
                interface: name,
                addr,
                prefix: prefix_len(sockaddr_ip(ifa.ifa_netmask)),
                flags: ifa.ifa_flags,
            });
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
