//! Unit tests of followers against temp files: framing, truncation, rotation under a fast
//! writer, and the end of a dead task's stream.

use super::*;
use crate::fs::logs::{list_logs, start_position, LogFollower};
use crate::fs::safe_path::AllocDir;
use crate::fs::watch::SharedWatcher;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct TestSink {
    data: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl StreamSink for TestSink {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn should_stop(&mut self, _wait: Duration) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

struct FlagProbe(Arc<AtomicBool>);

impl TaskProbe for FlagProbe {
    fn liveness(&self) -> Liveness {
        if self.0.load(Ordering::SeqCst) {
            Liveness::Dead
        } else {
            Liveness::Alive
        }
    }
}

fn temp() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nomadlet-follow-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(d.join("alloc/logs")).unwrap();
    d
}

fn decode_frames(bytes: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<serde_json::Value>()
        .map(|v| v.unwrap())
        .collect()
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let mut n = 0u32;
        for c in chunk {
            n = n << 6 | if *c == b'=' { 0 } else { val(*c) as u32 };
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

#[test]
fn non_follow_stream_frames_the_whole_file() {
    let d = temp();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("f.bin"), &content).unwrap();
    let alloc = AllocDir::open(&d).unwrap();
    let r = alloc.resolve("/f.bin").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sink = TestSink {
        data: Vec::new(),
        stop,
    };
    let f = Box::new(FileFollower {
        file: r.open_file().unwrap(),
        name: "/f.bin".into(),
        pos: 10,
        follow: false,
        out: Output::framed(),
        waiter: Waiter::new(None, Box::new(AlwaysAlive)),
    });
    f.run(&mut sink).unwrap();
    let frames = decode_frames(&sink.data);
    let mut got = Vec::new();
    for fr in &frames {
        assert_eq!(fr["File"], "/f.bin");
        let data = b64_decode(fr["Data"].as_str().unwrap());
        assert!(data.len() <= 64 * 1024);
        got.extend(data);
        assert_eq!(fr["Offset"].as_u64().unwrap(), 10 + got.len() as u64);
    }
    assert_eq!(got, content[10..]);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn follow_reports_truncation_and_stops_when_client_goes() {
    let d = temp();
    std::fs::write(d.join("t.txt"), b"0123456789").unwrap();
    let alloc = AllocDir::open(&d).unwrap();
    let r = alloc.resolve("t.txt").unwrap();
    let watcher = SharedWatcher::new();
    let stop = Arc::new(AtomicBool::new(false));
    let f = Box::new(FileFollower {
        file: r.open_file().unwrap(),
        name: "t.txt".into(),
        pos: 0,
        follow: true,
        out: Output::framed(),
        waiter: Waiter::new(
            Some(watcher.subscribe(&r.watch_dir())),
            Box::new(AlwaysAlive),
        ),
    });
    let stop2 = stop.clone();
    let h = std::thread::spawn(move || {
        let mut sink = TestSink {
            data: Vec::new(),
            stop: stop2,
        };
        f.run(&mut sink).unwrap();
        sink.data
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(d.join("t.txt"), b"ab").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::SeqCst);
    let data = h.join().unwrap();
    let frames = decode_frames(&data);
    assert!(
        frames.iter().any(|f| f["FileEvent"] == "file truncated"),
        "{frames:?}"
    );
    let all: Vec<u8> = frames
        .iter()
        .filter_map(|f| f["Data"].as_str())
        .flat_map(b64_decode)
        .collect();
    assert_eq!(all, b"0123456789ab");
    assert_eq!(
        watcher.watched_dirs(),
        0,
        "the follower's watch is released"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn rotation_under_fast_writer_loses_and_repeats_nothing() {
    let d = temp();
    let logs = d.join("alloc/logs");
    std::fs::write(logs.join("web.stdout.0"), b"").unwrap();
    let alloc = AllocDir::open(&d).unwrap();
    let dir = alloc.resolve("alloc/logs").unwrap().open_dir().unwrap();
    let files = list_logs(&dir, "web", "stdout").unwrap();
    let (i, pos) = start_position(&files, false, 0);
    let watcher = SharedWatcher::new();
    let dead = Arc::new(AtomicBool::new(false));
    let follower = Box::new(LogFollower {
        file: dir.open_file("web.stdout.0").unwrap(),
        index: files[i].index,
        pos,
        follow: true,
        last_index: 0,
        task: "web".into(),
        kind: "stdout".into(),
        out: Output::Plain,
        waiter: Waiter::new(
            Some(watcher.subscribe(&logs)),
            Box::new(FlagProbe(dead.clone())),
        ),
        dir,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut sink = TestSink {
            data: Vec::new(),
            stop: stop2,
        };
        follower.run(&mut sink).unwrap();
        sink.data
    });
    // A writer that rotates every 8 KiB and keeps at most 3 files, writing as fast as it can.
    let mut written = Vec::new();
    let mut idx = 0;
    let mut f = std::fs::File::create(logs.join("web.stdout.0")).unwrap();
    let mut in_file = 0;
    for i in 0..20_000u32 {
        let line = format!("line {i}\n");
        if in_file + line.len() > 8192 {
            idx += 1;
            f = std::fs::File::create(logs.join(format!("web.stdout.{idx}"))).unwrap();
            in_file = 0;
            if idx >= 30 {
                // Keep the follower close enough that purged files were already read.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        f.write_all(line.as_bytes()).unwrap();
        in_file += line.len();
        written.extend_from_slice(line.as_bytes());
    }
    dead.store(true, Ordering::SeqCst);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), written.len());
    assert!(got == written, "bytes differ");
    std::fs::remove_dir_all(d).unwrap();
}
