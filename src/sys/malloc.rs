//! The C allocator's per-thread arenas: glibc gives threads up to 8 arenas per core, each
//! keeping its own free memory, which a thread-per-connection server pays for in RSS.

/// Let the allocator use at most `n` arenas (glibc only; elsewhere nothing happens). Call it
/// before any thread is started. False when the allocator refused.
pub fn limit_arenas(n: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator tunable; M_ARENA_MAX takes any positive count.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_takes_the_limit() {
        assert!(super::limit_arenas(2));
    }
}
