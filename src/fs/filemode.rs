//! Go's `os.FileMode.String()` form of a Unix `st_mode` (`-rw-r--r--`, `dtrwxrwxrwx`, ...).

/// Go's type letters in the order `FileMode.String()` prints them.
const TYPE_LETTERS: &[u8; 13] = b"dalTLDpSugct?";

/// Format `st_mode` the way Go prints the `FileMode` that `os.Stat` builds from it.
pub fn go_file_mode(st_mode: u32) -> String {
    let mut bits = [false; 13];
    match st_mode & libc::S_IFMT {
        libc::S_IFDIR => bits[0] = true,
        libc::S_IFLNK => bits[4] = true,
        libc::S_IFBLK => bits[5] = true,
        libc::S_IFCHR => {
            bits[5] = true;
            bits[10] = true;
        }
        libc::S_IFIFO => bits[6] = true,
        libc::S_IFSOCK => bits[7] = true,
        _ => {}
    }
    if st_mode & libc::S_ISUID != 0 {
        bits[8] = true;
    }
    if st_mode & libc::S_ISGID != 0 {
        bits[9] = true;
    }
    if st_mode & libc::S_ISVTX != 0 {
        bits[11] = true;
    }
    let mut out = String::with_capacity(12);
    for (i, set) in bits.iter().enumerate() {
        if *set {
            out.push(TYPE_LETTERS[i] as char);
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    const RWX: &[u8; 9] = b"rwxrwxrwx";
    for (i, c) in RWX.iter().enumerate() {
        if st_mode & (1 << (8 - i)) != 0 {
            out.push(*c as char);
        } else {
            out.push('-');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_match_go() {
        assert_eq!(go_file_mode(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(go_file_mode(libc::S_IFDIR | 0o777), "drwxrwxrwx");
        assert_eq!(
            go_file_mode(libc::S_IFDIR | libc::S_ISVTX | 0o777),
            "dtrwxrwxrwx"
        );
        assert_eq!(go_file_mode(libc::S_IFIFO | 0o600), "prw-------");
        assert_eq!(go_file_mode(libc::S_IFSOCK | 0o666), "Srw-rw-rw-");
        assert_eq!(go_file_mode(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(go_file_mode(libc::S_IFCHR | 0o666), "Dcrw-rw-rw-");
        assert_eq!(
            go_file_mode(libc::S_IFREG | libc::S_ISUID | 0o755),
            "urwxr-xr-x"
        );
    }
}
