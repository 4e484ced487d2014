//! The C allocator's settings and statistics: glibc gives threads up to 8 arenas per core,
//! each keeping its own free memory, which a thread-per-connection server pays for in RSS;
//! large transient buffers fragment the heap unless they get mappings of their own; and free
//! memory inside a heap goes back to the system only when trimmed.

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

/// Serve every request of `bytes` or more with a mapping of its own, given back to the
/// system when freed, and keep that threshold fixed (glibc raises it, up to 32 MiB, each time
/// such a block is freed, after which large transient buffers come from the heap and leave
/// holes in it). Call it before any thread is started. False when the allocator refused.
pub fn fix_mmap_threshold(bytes: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator tunable; M_MMAP_THRESHOLD takes any size
        // up to HEAP_MAX_SIZE/2 (32 MiB on 64-bit), checked by glibc.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        true
    }
}

/// Bytes the allocator holds free in its heaps (glibc's `mallinfo2().fordblks`: what it got
/// from the system and does not use now); 0 elsewhere.
pub fn free_heap_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics (under its arena locks)
        // and returns them by value.
        unsafe { libc::mallinfo2().fordblks }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

/// Give the allocator's free memory back to the system: the top of each heap and every
/// whole free page inside it (glibc's `malloc_trim(0)`). Whether anything was released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the arena locks itself and only releases memory no
        // allocation uses; 0 asks it to keep no padding.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_takes_the_limit() {
        assert!(super::limit_arenas(2));
    }

    #[test]
    fn freed_heap_memory_is_counted_and_trimmed_back() {
        assert!(super::fix_mmap_threshold(128 * 1024));
        // 4 096 blocks of 4 KiB, under the mmap threshold: from the heap.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 4096]).collect();
        let before = super::free_heap_bytes();
        // Keep every 64th block so the freed ones are holes, not only the heap's top.
        let kept: Vec<&Vec<u8>> = blocks.iter().step_by(64).collect();
        assert_eq!(kept.len(), 64);
        let kept: Vec<Vec<u8>> = kept.into_iter().cloned().collect();
        drop(blocks);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            assert!(super::free_heap_bytes() >= before + 4 * 1024 * 1024);
            super::trim();
        }
        assert_eq!(kept[63][0], (63 * 64) as u8);
    }
}
