//! Resident memory the agent no longer uses. Code: by default the kernel maps the pages around
//! every page of code it faults in (fault-around), so nearly all of the binary's and libc's
//! code counts as resident though an idle agent runs a small part of it. Stacks: a thread's
//! stack pages stay resident at the deepest it ever went, though a long-lived stream runs
//! far less deep than the request handling before it.

use std::io;

/// Mark every read-only file mapping of this process (code, and the read-only data beside
/// it) as randomly accessed and drop its page-table entries, so from now on only what runs
/// (and what it reads) is resident. The pages stay in the page cache; a page used again is
/// faulted back in. Only private mappings that are not writable and hold no anonymous page
/// (`Anonymous: 0 kB` in `/proc/self/smaps`) are touched: a page written once (text
/// relocations, a RELRO page relocated before it was made read-only) is an anonymous copy
/// that dropping would lose, so such a mapping is left alone whole; a page never written
/// refaults exactly what was there. Returns the bytes advised.
pub fn trim_code_pages() -> io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut advised = 0;
    // The mapping being read: its range, while it is a candidate.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else {
            continue;
        };
        if let Some(field) = first.strip_suffix(':') {
            if field == "Anonymous" {
                let anon = f.next().and_then(|v| v.parse::<u64>().ok());
                if let (Some((lo, hi)), Some(0)) = (current.take(), anon) {
                    if drop_file_pages(lo, hi) {
                        advised += hi - lo;
                    }
                }
            }
            continue;
        }
        // A mapping's first line: range, perms, offset, device, inode, then the path.
        current = None;
        let Some(perms) = f.next() else {
            continue;
        };
        let path = f.nth(3).unwrap_or("");
        if !matches!(perms, "r-xp" | "r--p") || !path.starts_with('/') {
            continue;
        }
        let Some((lo, hi)) = first.split_once('-') else {
            continue;
        };
        if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
            if hi > lo {
                current = Some((lo, hi));
            }
        }
    }
    Ok(advised)
}

/// Drop the page-table entries of the read-only private file mapping `lo..hi`, which holds
/// no anonymous page (see [`trim_code_pages`]).
fn drop_file_pages(lo: usize, hi: usize) -> bool {
    let addr = lo as *mut libc::c_void;
    // SAFETY: the range is a whole, page-aligned mapping from /proc/self/smaps, private,
    // not writable and backed by a file, with no anonymous (written) page: MADV_RANDOM only
    // changes the read-ahead policy, and MADV_DONTNEED on such a mapping only drops
    // page-table entries; the next access faults the identical file page back in.
    let rc = unsafe {
        if libc::madvise(addr, hi - lo, libc::MADV_RANDOM) != 0 {
            -1
        } else {
            libc::madvise(addr, hi - lo, libc::MADV_DONTNEED)
        }
    };
    rc == 0
}

/// Stack kept below the caller's frame when trimming: this function's frame (a few hundred
/// bytes below its marker) and the `madvise` system call stub (no frame) run there.
const STACK_TRIM_MARGIN: usize = 4 * 1024;

/// Drop the pages of this thread's stack below the caller (less [`STACK_TRIM_MARGIN`]): they
/// hold only frames that have returned. A later call that goes deeper gets fresh zeroed pages.
/// Returns the bytes released.
#[inline(never)]
pub fn trim_stack() -> io::Result<usize> {
    let marker = 0u8;
    let here = std::ptr::addr_of!(marker) as usize;
    let mut lo: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: the attr is initialised by pthread_getattr_np before use and destroyed after;
    // the out pointers are valid locals.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let rc = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if rc == 0 {
            let rc = libc::pthread_attr_getstack(&attr, &mut lo, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            rc
        } else {
            rc
        }
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let page = 4096usize;
    let lo = (lo as usize).next_multiple_of(page);
    let top = here.saturating_sub(STACK_TRIM_MARGIN) & !(page - 1);
    if top <= lo || here > lo + size {
        return Ok(0);
    }
    // SAFETY: [lo, top) lies inside this thread's own stack, below the caller's frame and a
    // margin that holds this function's frame and the madvise call; nothing live is there
    // (stacks grow down), and MADV_DONTNEED on anonymous memory only makes it read as zeros.
    let rc = unsafe { libc::madvise(lo as *mut libc::c_void, top - lo, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(top - lo)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trimmed_stack_still_works_deeper_down() {
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                fn deep(n: u32) -> u64 {
                    let buf = [n as u8; 1024];
                    if n == 0 {
                        return buf.iter().map(|b| *b as u64).sum();
                    }
                    deep(n - 1) + buf[(n % 1024) as usize] as u64
                }
                let before = deep(64);
                let released = super::trim_stack().unwrap();
                (before, deep(64), released)
            })
            .unwrap();
        let (before, after, released) = t.join().unwrap();
        assert_eq!(before, after);
        assert!(released >= 32 * 1024, "released {released}");
    }

    #[test]
    fn code_still_runs_after_its_pages_are_dropped() {
        /// Read-only data (in `.rodata`, a `r--p` mapping that is trimmed too).
        static TABLE: [u64; 2048] = {
            let mut t = [0u64; 2048];
            let mut i = 0;
            while i < t.len() {
                t[i] = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                i += 1;
            }
            t
        };
        let sum = |t: &[u64]| t.iter().fold(0u64, |a, x| a.rotate_left(5) ^ x);
        let before = sum(std::hint::black_box(&TABLE));
        let advised = super::trim_code_pages().unwrap();
        assert_eq!(
            sum(std::hint::black_box(&TABLE)),
            before,
            "read-only data refaults intact"
        );
        assert!(advised > 0, "the test binary has executable file mappings");
        // Plenty of code runs after this: formatting, allocation, a thread.
        let s = std::thread::spawn(|| format!("{:?}", (1..50).collect::<Vec<u32>>()))
            .join()
            .unwrap();
        assert!(s.starts_with("[1, 2"));
    }
}
