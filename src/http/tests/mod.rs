//! Unit tests of the HTTP layer over real sockets: the test handler, a server fixture with
//! short limits, and a small client. The cases live in `exchange` (well-formed traffic) and
//! `guard` (limits, deadlines, caps, panics, shutdown).

mod exchange;
mod guard;

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

pub(super) type R = Result<(), Box<dyn Error>>;

/// A handler whose routes exercise every kind of reply.
struct TestHandler {
    /// Set by the stream route once `should_stop` said the client went away.
    stream_saw_stop: Arc<AtomicBool>,
    streams_started: Arc<AtomicUsize>,
    slow_started: Arc<AtomicUsize>,
    /// Set by `/wait-for-peer` once `Request::peer_gone` said the client left.
    peer_left: Arc<AtomicBool>,
}

struct TickStream {
    saw_stop: Arc<AtomicBool>,
}

impl StreamBody for TickStream {
    fn run(self: Box<Self>, sink: &mut dyn StreamSink) -> std::io::Result<()> {
        sink.send(b"tick")?;
        sink.send(b"")?;
        sink.send(b"tock")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let t = Instant::now();
            if sink.should_stop(Duration::from_millis(50)) {
                self.saw_stop.store(true, Ordering::SeqCst);
                return Ok(());
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "should_stop blocked past its wait"
            );
        }
        Ok(())
    }
}

struct ShortStream;

impl StreamBody for ShortStream {
    fn run(self: Box<Self>, sink: &mut dyn StreamSink) -> std::io::Result<()> {
        sink.send(b"one ")?;
        sink.send(b"two")
    }
}

impl Handler for TestHandler {
    fn body_limit(&self, head: &RequestHead) -> usize {
        if head.path == "/small" {
            16
        } else {
            4096
        }
    }

    fn admit(&self, req: &Request) -> Option<Reply> {
        assert!(req.body.is_empty(), "admit runs before the body is read");
        (req.path == "/locked" && req.header("X-Key") != Some("k"))
            .then(|| Reply::bytes(Status::UNAUTHORIZED, "text/plain", b"Unauthorized".to_vec()))
    }

    fn handle(&self, req: Request) -> Reply {
        match req.path.as_str() {
            "/wait-for-peer" => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if req.peer_gone() {
                        self.peer_left.store(true, Ordering::SeqCst);
                        return Reply::empty(Status::OK);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Reply::empty(Status::GATEWAY_TIMEOUT)
            }
            "/panic" => panic!("test handler panic"),
            "/file" => {
                let path =
                    std::env::temp_dir().join(format!("nomadlet-http-file-{}", std::process::id()));
                let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
                if std::fs::write(&path, &data).is_err() {
                    return Reply::empty(Status::INTERNAL_SERVER_ERROR);
                }
                let file = std::fs::File::open(&path);
                let _ = std::fs::remove_file(&path);
                match file {
                    Ok(file) => Reply {
                        status: Status::OK,
                        headers: vec![],
                        body: Body::File {
                            file,
                            offset: 10,
                            len: 200_000,
                        },
                    },
                    Err(_) => Reply::empty(Status::INTERNAL_SERVER_ERROR),
                }
            }
            "/stream" => {
                self.streams_started.fetch_add(1, Ordering::SeqCst);
                Reply {
                    status: Status::OK,
                    headers: vec![],
                    body: Body::Stream(Box::new(TickStream {
                        saw_stop: self.stream_saw_stop.clone(),
                    })),
                }
            }
            "/short-stream" => Reply {
                status: Status::OK,
                headers: vec![],
                body: Body::Stream(Box::new(ShortStream)),
            },
            "/inject" => Reply::empty(Status::OK)
                .with_header("X-Evil", "a\r\nSet-Cookie: pwned=1")
                .with_header("Bad\r\nName", "x")
                .with_header("Content-Length", "999"),
            "/no-content" => Reply::empty(Status::NO_CONTENT),
            "/bad-status" => Reply::empty(Status::SWITCHING_PROTOCOLS),
            "/slow" => {
                self.slow_started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                Reply::bytes(Status::OK, "text/plain", b"slow done".to_vec())
            }
            _ => {
                let origin = match &req.origin {
                    Origin::Tcp { peer } => format!("tcp:{}", peer.is_some()),
                    Origin::Unix { tag } => format!("unix:{tag}"),
                };
                let mut body =
                    format!("{} {} {:?} {origin} ", req.method, req.path, req.query).into_bytes();
                body.extend_from_slice(&req.body);
                Reply::bytes(Status::OK, "text/plain", body)
            }
        }
    }
}

pub(super) fn test_limits() -> Limits {
    Limits {
        max_head_bytes: 1024,
        max_headers: 10,
        head_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(400),
        write_timeout: Duration::from_secs(2),
        max_conns_per_listener: 4,
        max_conns_total: 8,
        max_conns_per_client: 100,
        max_body_bytes_in_flight: 64,
        max_body_bytes_per_client: 64,
        conn_stack: super::limits::CONN_STACK,
    }
}

pub(super) struct Fixture {
    pub server: Server,
    pub addr: std::net::SocketAddr,
    pub saw_stop: Arc<AtomicBool>,
    pub streams_started: Arc<AtomicUsize>,
    /// Requests to `/slow` whose handler has begun.
    pub slow_started: Arc<AtomicUsize>,
    pub peer_left: Arc<AtomicBool>,
}

/// A server with room for the quick one-shot connections most tests make (a slot is freed only
/// once the server thread sees the close, which can lag under load).
pub(super) fn start() -> Result<Fixture, Box<dyn Error>> {
    start_with(Limits {
        max_conns_per_listener: 64,
        max_conns_total: 128,
        ..test_limits()
    })
}

/// A server with the given limits (the cap test uses `test_limits()` as is).
pub(super) fn start_with(limits: Limits) -> Result<Fixture, Box<dyn Error>> {
    let saw_stop = Arc::new(AtomicBool::new(false));
    let streams_started = Arc::new(AtomicUsize::new(0));
    let slow_started = Arc::new(AtomicUsize::new(0));
    let peer_left = Arc::new(AtomicBool::new(false));
    let handler = TestHandler {
        stream_saw_stop: saw_stop.clone(),
        streams_started: streams_started.clone(),
        slow_started: slow_started.clone(),
        peer_left: peer_left.clone(),
    };
    let server = Server::new(Arc::new(handler), limits);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    server.serve_tcp(listener)?;
    Ok(Fixture {
        server,
        addr,
        saw_stop,
        streams_started,
        slow_started,
        peer_left,
    })
}

pub(super) fn connect(f: &Fixture) -> Result<BufReader<TcpStream>, Box<dyn Error>> {
    let s = TcpStream::connect(f.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(s))
}

#[derive(Debug)]
pub(super) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(super) fn read_resp<S: Read>(
    r: &mut BufReader<S>,
    head_only: bool,
) -> Result<Resp, Box<dyn Error>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err("connection closed before a response".into());
    }
    let status: u16 = line.split(' ').nth(1).ok_or("no status")?.parse()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or("bad header line")?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 100 {
        return Ok(resp);
    }
    if let Some(len) = resp.header("Content-Length") {
        let mut body = vec![0; len.parse()?];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp.header("Transfer-Encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

pub(super) fn send(r: &mut BufReader<TcpStream>, raw: &[u8]) -> Result<(), Box<dyn Error>> {
    r.get_mut().write_all(raw)?;
    Ok(())
}

/// One request on a fresh connection.
pub(super) fn once(f: &Fixture, raw: &[u8]) -> Result<Resp, Box<dyn Error>> {
    let mut c = connect(f)?;
    send(&mut c, raw)?;
    read_resp(&mut c, raw.starts_with(b"HEAD "))
}

/// True once the peer has closed the connection (EOF or reset) within `within`.
pub(super) fn closed_within<S: Read>(r: &mut BufReader<S>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}
