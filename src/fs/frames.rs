//! Stream frames (ref §3.11): the padded base64 encoder, the JSON encoding of one
//! `StreamFrame`, and the framer that batches file bytes into frames and sends heartbeats.

use std::io;
use std::time::{Duration, Instant};

use crate::encoding::base64_std;
use crate::http::StreamSink;

/// Largest `Data` payload of one frame.
pub const MAX_FRAME_DATA: usize = 64 * 1024;
/// Bytes read close together are merged into one frame for at most this long after the first
/// of them was read. Nomad batches for 200 ms; a couple of milliseconds already merges a burst
/// of small writes into one frame, while a lone line reaches the client at once (issue 14).
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// An idle framed stream sends `{}` this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A `file deleted` event.
pub const FILE_DELETED: &str = "file deleted";
/// A `file truncated` event.
pub const FILE_TRUNCATED: &str = "file truncated";

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Encode one `StreamFrame`; every field is omitted when empty, in Nomad's field order.
pub fn encode_frame(offset: u64, data: &[u8], file: &str, event: &str) -> Vec<u8> {
    let mut parts: Vec<String> = Vec::new();
    if offset != 0 {
        parts.push(format!("\"Offset\":{offset}"));
    }
    if !data.is_empty() {
        parts.push(format!("\"Data\":\"{}\"", base64_std(data)));
    }
    if !file.is_empty() {
        parts.push(format!("\"File\":{}", json_string(file)));
    }
    if !event.is_empty() {
        parts.push(format!("\"FileEvent\":{}", json_string(event)));
    }
    format!("{{{}}}", parts.join(",")).into_bytes()
}

/// Batches file bytes into frames and keeps an idle stream alive with heartbeats.
pub struct Framer {
    pending: Vec<u8>,
    pending_file: String,
    /// File offset just after the pending bytes.
    pending_end: u64,
    pending_since: Option<Instant>,
    last_sent: Instant,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new()
    }
}

impl Framer {
    pub fn new() -> Framer {
        Framer {
            pending: Vec::new(),
            pending_file: String::new(),
            pending_end: 0,
            pending_since: None,
            last_sent: Instant::now(),
        }
    }

    fn send(&mut self, sink: &mut dyn StreamSink, frame: &[u8]) -> io::Result<()> {
        sink.send(frame)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Add `bytes` read from `file` at `offset`; full frames are sent at once.
    pub fn data(
        &mut self,
        sink: &mut dyn StreamSink,
        file: &str,
        offset: u64,
        bytes: &[u8],
    ) -> io::Result<()> {
        if !self.pending.is_empty() && self.pending_file != file {
            self.flush(sink)?;
        }
        if self.pending.is_empty() {
            self.pending_file.clear();
            self.pending_file.push_str(file);
        }
        let mut rest = bytes;
        let mut pos = offset;
        while !rest.is_empty() {
            let room = MAX_FRAME_DATA - self.pending.len();
            let take = room.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            pos += take as u64;
            self.pending_end = pos;
            self.pending_since.get_or_insert_with(Instant::now);
            rest = &rest[take..];
            if self.pending.len() == MAX_FRAME_DATA {
                self.flush(sink)?;
                self.pending_file.push_str(file);
            }
        }
        Ok(())
    }

    /// Send a file event (after whatever data is pending).
    pub fn event(
        &mut self,
        sink: &mut dyn StreamSink,
        file: &str,
        offset: u64,
        event: &str,
    ) -> io::Result<()> {
        self.flush(sink)?;
        let frame = encode_frame(offset, &[], file, event);
        self.send(sink, &frame)
    }

    /// Send the pending data, if any.
    pub fn flush(&mut self, sink: &mut dyn StreamSink) -> io::Result<()> {
        self.pending_since = None;
        if self.pending.is_empty() {
            self.pending_file.clear();
            return Ok(());
        }
        let frame = encode_frame(self.pending_end, &self.pending, &self.pending_file, "");
        self.pending.clear();
        self.pending_file.clear();
        self.send(sink, &frame)
    }

    /// Called whenever the follower wakes: sends data older than the batch window (so a
    /// frame leaves at most [`BATCH_WINDOW`] after its first byte was read), and a heartbeat
    /// when nothing was sent for a second.
    pub fn tick(&mut self, sink: &mut dyn StreamSink, now: Instant) -> io::Result<()> {
        if let Some(since) = self.pending_since {
            if now.duration_since(since) >= BATCH_WINDOW {
                self.flush(sink)?;
            }
        }
        if self.pending.is_empty() && now.duration_since(self.last_sent) >= HEARTBEAT_INTERVAL {
            self.send(sink, b"{}")?;
        }
        Ok(())
    }

    /// When the next `tick` has something to do.
    pub fn deadline(&self) -> Instant {
        let hb = self.last_sent + HEARTBEAT_INTERVAL;
        match self.pending_since {
            Some(since) => hb.min(since + BATCH_WINDOW),
            None => hb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct VecSink(Vec<Vec<u8>>);

    impl StreamSink for VecSink {
        fn send(&mut self, data: &[u8]) -> io::Result<()> {
            self.0.push(data.to_vec());
            Ok(())
        }
        fn should_stop(&mut self, _wait: Duration) -> bool {
            false
        }
    }

    #[test]
    fn frame_shapes() {
        assert_eq!(
            encode_frame(12, b"hello world\n", "alloc/logs/web.stdout.0", ""),
            br#"{"Offset":12,"Data":"aGVsbG8gd29ybGQK","File":"alloc/logs/web.stdout.0"}"#.to_vec()
        );
        assert_eq!(encode_frame(0, b"", "", ""), b"{}".to_vec());
        assert_eq!(
            encode_frame(24, b"", "f", FILE_DELETED),
            br#"{"Offset":24,"File":"f","FileEvent":"file deleted"}"#.to_vec()
        );
    }

    #[test]
    fn framer_splits_at_64k_and_batches() {
        let mut sink = VecSink::default();
        let mut f = Framer::new();
        let big = vec![b'x'; MAX_FRAME_DATA + 10];
        f.data(&mut sink, "a", 0, &big).unwrap();
        assert_eq!(sink.0.len(), 1);
        f.data(&mut sink, "a", big.len() as u64, b"yz").unwrap();
        assert_eq!(sink.0.len(), 1, "small data waits for the batch window");
        f.data(&mut sink, "b", 0, b"q").unwrap();
        assert_eq!(sink.0.len(), 2, "a new file flushes the pending frame");
        let v: serde_json::Value = serde_json::from_slice(&sink.0[1]).unwrap();
        assert_eq!(v["Offset"], MAX_FRAME_DATA as u64 + 12);
        assert_eq!(v["File"], "a");
        f.tick(&mut sink, Instant::now() + BATCH_WINDOW).unwrap();
        assert_eq!(sink.0.len(), 3);
        f.tick(&mut sink, Instant::now() + HEARTBEAT_INTERVAL * 2)
            .unwrap();
        assert_eq!(sink.0.last().unwrap(), b"{}");
    }
}
