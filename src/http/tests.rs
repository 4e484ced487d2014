//! The HTTP layer over real sockets with a test handler: keep-alive, pipelining, chunked
//! bodies, 100-continue, HEAD, HTTP/1.0, file and stream bodies, every limit and deadline,
//! caps, panics, sanitising and shutdown.

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

type R = Result<(), Box<dyn Error>>;

/// A handler whose routes exercise every kind of reply.
struct TestHandler {
    /// Set by the stream route once `should_stop` said the client went away.
    stream_saw_stop: Arc<AtomicBool>,
    streams_started: Arc<AtomicUsize>,
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

    fn handle(&self, req: Request) -> Reply {
        match req.path.as_str() {
            "/panic" => panic!("test handler panic"),
            "/file" => {
                let path =
                    std::env::temp_dir().join(format!("nomadlet-http-file-{}", std::process::id()));
                let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
                if std::fs::write(&path, &data).is_err() {
                    return Reply::empty(500);
                }
                let file = std::fs::File::open(&path);
                let _ = std::fs::remove_file(&path);
                match file {
                    Ok(file) => Reply {
                        status: 200,
                        headers: vec![],
                        body: Body::File {
                            file,
                            offset: 10,
                            len: 200_000,
                        },
                    },
                    Err(_) => Reply::empty(500),
                }
            }
            "/stream" => {
                self.streams_started.fetch_add(1, Ordering::SeqCst);
                Reply {
                    status: 200,
                    headers: vec![],
                    body: Body::Stream(Box::new(TickStream {
                        saw_stop: self.stream_saw_stop.clone(),
                    })),
                }
            }
            "/short-stream" => Reply {
                status: 200,
                headers: vec![],
                body: Body::Stream(Box::new(ShortStream)),
            },
            "/inject" => Reply::empty(200)
                .with_header("X-Evil", "a\r\nSet-Cookie: pwned=1")
                .with_header("Bad\r\nName", "x")
                .with_header("Content-Length", "999"),
            "/no-content" => Reply::empty(204),
            "/bad-status" => Reply::empty(101),
            "/slow" => {
                std::thread::sleep(Duration::from_millis(300));
                Reply::bytes(200, "text/plain", b"slow done".to_vec())
            }
            _ => {
                let origin = match &req.origin {
                    Origin::Tcp { peer } => format!("tcp:{}", peer.is_some()),
                    Origin::Unix { tag } => format!("unix:{tag}"),
                };
                let mut body =
                    format!("{} {} {:?} {origin} ", req.method, req.path, req.query).into_bytes();
                body.extend_from_slice(&req.body);
                Reply::bytes(200, "text/plain", body)
            }
        }
    }
}

fn test_limits() -> Limits {
    Limits {
        max_head_bytes: 1024,
        max_headers: 10,
        head_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(400),
        write_timeout: Duration::from_secs(2),
        max_conns_per_listener: 4,
        max_conns_total: 8,
        max_body_bytes_in_flight: 64,
    }
}

struct Fixture {
    server: Server,
    addr: std::net::SocketAddr,
    saw_stop: Arc<AtomicBool>,
    streams_started: Arc<AtomicUsize>,
}

fn start() -> Result<Fixture, Box<dyn Error>> {
    let saw_stop = Arc::new(AtomicBool::new(false));
    let streams_started = Arc::new(AtomicUsize::new(0));
    let handler = TestHandler {
        stream_saw_stop: saw_stop.clone(),
        streams_started: streams_started.clone(),
    };
    let server = Server::new(Arc::new(handler), test_limits());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    server.serve_tcp(listener)?;
    Ok(Fixture {
        server,
        addr,
        saw_stop,
        streams_started,
    })
}

fn connect(f: &Fixture) -> Result<BufReader<TcpStream>, Box<dyn Error>> {
    let s = TcpStream::connect(f.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::new(s))
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read_resp<S: Read>(r: &mut BufReader<S>, head_only: bool) -> Result<Resp, Box<dyn Error>> {
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

fn send(r: &mut BufReader<TcpStream>, raw: &[u8]) -> Result<(), Box<dyn Error>> {
    r.get_mut().write_all(raw)?;
    Ok(())
}

/// One request on a fresh connection.
fn once(f: &Fixture, raw: &[u8]) -> Result<Resp, Box<dyn Error>> {
    let mut c = connect(f)?;
    send(&mut c, raw)?;
    read_resp(&mut c, raw.starts_with(b"HEAD "))
}

/// True once the peer has closed the connection (EOF or reset) within `within`.
fn closed_within<S: Read>(r: &mut BufReader<S>, within: Duration) -> bool {
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

#[test]
fn keep_alive_serves_many_requests_on_one_connection() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    for i in 0..3 {
        send(
            &mut c,
            format!("GET /echo/{i}?a=1+2&b=%41 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )?;
        let r = read_resp(&mut c, false)?;
        assert_eq!(r.status, 200);
        assert!(r.header("Connection").is_none());
        assert!(r.header("Server").is_none());
        assert!(r
            .header("Date")
            .is_some_and(|d| d.ends_with(" GMT") && d.len() == 29));
        assert_eq!(
            r.text(),
            format!("GET /echo/{i} [(\"a\", \"1 2\"), (\"b\", \"A\")] tcp:true ")
        );
    }
    send(&mut c, b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")?;
    let r = read_resp(&mut c, false)?;
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(closed_within(&mut c, Duration::from_secs(2)));
    Ok(())
}

#[test]
fn pipelined_requests_are_answered_in_order() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    let mut raw = Vec::new();
    for i in 0..5 {
        raw.extend_from_slice(
            format!("POST /p{i} HTTP/1.1\r\nContent-Length: 2\r\n\r\nb{i}").as_bytes(),
        );
    }
    raw.extend_from_slice(b"GET /slow HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    send(&mut c, &raw)?;
    for i in 0..5 {
        let r = read_resp(&mut c, false)?;
        assert_eq!(r.text(), format!("POST /p{i} [] tcp:true b{i}"));
    }
    assert_eq!(read_resp(&mut c, false)?.text(), "slow done");
    assert!(read_resp(&mut c, false)?.text().starts_with("GET /after"));
    Ok(())
}

#[test]
fn http10_closes_unless_keep_alive_is_asked_for() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(&mut c, b"GET /a HTTP/1.0\r\n\r\n")?;
    let r = read_resp(&mut c, false)?;
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(closed_within(&mut c, Duration::from_secs(2)));

    let mut c = connect(&f)?;
    send(&mut c, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")?;
    let r = read_resp(&mut c, false)?;
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    send(&mut c, b"GET /b HTTP/1.0\r\n\r\n")?;
    assert!(read_resp(&mut c, false)?.text().starts_with("GET /b"));
    // A stream to an HTTP/1.0 peer is close-delimited.
    let r = once(&f, b"GET /short-stream HTTP/1.0\r\n\r\n")?;
    assert!(r.header("Transfer-Encoding").is_none());
    assert_eq!(r.text(), "one two");
    Ok(())
}

#[test]
fn chunked_request_body_is_decoded() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(
        &mut c,
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
    )?;
    assert_eq!(
        read_resp(&mut c, false)?.text(),
        "POST /c [] tcp:true hello world"
    );
    // The connection is still usable afterwards.
    send(&mut c, b"GET /next HTTP/1.1\r\n\r\n")?;
    assert_eq!(read_resp(&mut c, false)?.status, 200);
    Ok(())
}

#[test]
fn expect_100_continue_comes_before_the_body_and_never_for_a_refused_body() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(
        &mut c,
        b"POST /e HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )?;
    let r = read_resp(&mut c, false)?;
    assert_eq!(r.status, 100);
    send(&mut c, b"data")?;
    assert_eq!(read_resp(&mut c, false)?.text(), "POST /e [] tcp:true data");

    let mut c = connect(&f)?;
    send(
        &mut c,
        b"POST /small HTTP/1.1\r\nContent-Length: 17\r\nExpect: 100-continue\r\n\r\n",
    )?;
    let r = read_resp(&mut c, false)?;
    assert_eq!(r.status, 413);
    Ok(())
}

#[test]
fn head_gets_headers_only_and_204_has_no_length() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(&mut c, b"HEAD /h HTTP/1.1\r\n\r\n")?;
    let r = read_resp(&mut c, true)?;
    assert_eq!(r.header("Content-Length"), Some("20"));
    send(&mut c, b"HEAD /file HTTP/1.1\r\n\r\n")?;
    let r = read_resp(&mut c, true)?;
    assert_eq!(r.header("Content-Length"), Some("200000"));
    // Nothing else was written: the next response follows at once.
    send(&mut c, b"GET /no-content HTTP/1.1\r\n\r\n")?;
    let r = read_resp(&mut c, false)?;
    assert_eq!((r.status, r.header("Content-Length")), (204, None));
    send(&mut c, b"GET /z HTTP/1.1\r\n\r\n")?;
    assert!(read_resp(&mut c, false)?.text().starts_with("GET /z"));
    Ok(())
}

#[test]
fn file_body_is_the_requested_range() -> R {
    let f = start()?;
    let r = once(&f, b"GET /file HTTP/1.1\r\n\r\n")?;
    assert_eq!(r.body.len(), 200_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == ((i + 10) % 251) as u8));
    Ok(())
}

#[test]
fn stream_is_chunked_and_sees_the_client_leave() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(&mut c, b"GET /stream HTTP/1.1\r\n\r\n")?;
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut line = String::new();
        c.read_line(&mut line)?;
        head.push_str(&line);
    }
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let mut first = [0u8; 9];
    c.read_exact(&mut first)?;
    assert_eq!(&first, b"4\r\ntick\r\n");
    // Pipelined bytes from a live client do not count as leaving.
    send(&mut c, b"GET /x HTTP/1.1\r\n\r\n")?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(!f.saw_stop.load(Ordering::SeqCst));
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f.saw_stop.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "should_stop never saw the client leave"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = once(&f, b"GET /short-stream HTTP/1.1\r\n\r\n")?;
    assert_eq!(
        (r.text().as_str(), r.header("Connection")),
        ("one two", Some("close"))
    );
    Ok(())
}

#[test]
fn oversized_heads_get_431_without_buffering_them() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    c.get_mut().write_all(b"GET / HTTP/1.1\r\nX-Big: ")?;
    // Keep streaming a header line far over the limit; the server must answer and close
    // rather than keep reading.
    let junk = vec![b'a'; 64 * 1024];
    let mut status = None;
    for _ in 0..64 {
        if c.get_mut().write_all(&junk).is_err() {
            break;
        }
    }
    if let Ok(r) = read_resp(&mut c, false) {
        status = Some(r.status);
    }
    assert!(matches!(status, Some(431) | None), "{status:?}");
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..11 {
        many.push_str(&format!("h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = once(&f, many.as_bytes())?;
    assert_eq!(
        (r.status, r.text().as_str()),
        (431, "request header fields too large")
    );
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
    assert_eq!(once(&f, long.as_bytes())?.status, 431);
    assert_eq!(once(&f, b"GET /ok HTTP/1.1\r\n\r\n")?.status, 200);
    Ok(())
}

#[test]
fn body_limits_give_413() -> R {
    let f = start()?;
    let r = once(&f, b"POST /small HTTP/1.1\r\nContent-Length: 17\r\n\r\n")?;
    assert_eq!(
        (r.status, r.text().as_str()),
        (413, "request body too large")
    );
    let r = once(
        &f,
        b"POST /small HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n",
    )?;
    assert_eq!(r.status, 413);
    let r = once(
        &f,
        b"POST /small HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n9\r\n123456789\r\n0\r\n\r\n",
    )?;
    assert_eq!(r.status, 413);
    let r = once(
        &f,
        b"POST /small HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef",
    )?;
    assert_eq!(r.status, 200);
    Ok(())
}

#[test]
fn framing_and_target_errors_give_400() -> R {
    let f = start()?;
    for raw in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        b"GET /a%zz HTTP/1.1\r\n\r\n",
        b"GET /a?b=%c3%28 HTTP/1.1\r\n\r\n",
        b"GET a/b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
    ] {
        let r = once(&f, raw)?;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("Connection"), Some("close"));
    }
    let r = once(&f, b"GET http://example.com/abs?q=1 HTTP/1.1\r\n\r\n")?;
    assert_eq!(r.text(), "GET /abs [(\"q\", \"1\")] tcp:true ");
    Ok(())
}

#[test]
fn a_slowloris_head_times_out_as_a_whole() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    let started = Instant::now();
    let mut wrote = 0;
    // One byte every 50 ms never completes a head, though every single read is quick.
    for b in
        b"GET /slow-head HTTP/1.1\r\nX-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if c.get_mut().write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        wrote += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "trickle was never cut ({wrote} bytes)"
    );
    if let Ok(r) = read_resp(&mut c, false) {
        assert_eq!(r.status, 408);
    }
    Ok(())
}

#[test]
fn silent_and_idle_connections_are_closed_by_their_deadlines() -> R {
    let f = start()?;
    let mut silent = connect(&f)?;
    assert!(closed_within(&mut silent, Duration::from_secs(2)));
    let mut idle = connect(&f)?;
    send(&mut idle, b"GET / HTTP/1.1\r\n\r\n")?;
    read_resp(&mut idle, false)?;
    assert!(closed_within(&mut idle, Duration::from_secs(2)));
    // A body that stops arriving is cut by the body deadline.
    let mut body = connect(&f)?;
    send(
        &mut body,
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    )?;
    assert!(closed_within(&mut body, Duration::from_secs(2)));
    Ok(())
}

#[test]
fn connections_over_the_cap_get_a_quick_503() -> R {
    let f = start()?;
    let held: Vec<_> = (0..4).map(|_| connect(&f)).collect::<Result<_, _>>()?;
    // Make sure all four are admitted before the fifth arrives.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut r = once(&f, b"GET / HTTP/1.1\r\n\r\n")?;
    while r.status != 503 && Instant::now() < deadline {
        r = once(&f, b"GET / HTTP/1.1\r\n\r\n")?;
    }
    assert_eq!((r.status, r.text().as_str()), (503, "too many connections"));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if once(&f, b"GET / HTTP/1.1\r\n\r\n").map(|r| r.status).ok() == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "cap never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_handler_panic_is_a_500_and_the_server_lives_on() -> R {
    let f = start()?;
    let r = once(&f, b"GET /panic HTTP/1.1\r\n\r\n")?;
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "internal server error")
    );
    assert_eq!(once(&f, b"GET / HTTP/1.1\r\n\r\n")?.status, 200);
    Ok(())
}

#[test]
fn handler_headers_cannot_inject_lines() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(&mut c, b"GET /inject HTTP/1.1\r\n\r\n")?;
    let r = read_resp(&mut c, false)?;
    assert_eq!(r.header("X-Evil"), Some("aSet-Cookie: pwned=1"));
    assert!(r.header("Set-Cookie").is_none());
    assert_eq!(r.header("Content-Length"), Some("0"));
    assert!(r
        .headers
        .iter()
        .all(|(k, _)| k != "Name" && !k.contains("Bad")));
    send(&mut c, b"GET /after HTTP/1.1\r\n\r\n")?;
    assert_eq!(read_resp(&mut c, false)?.status, 200);
    Ok(())
}

#[test]
fn shutdown_closes_idle_connections_ends_streams_and_finishes_requests() -> R {
    let f = start()?;
    let mut idle = connect(&f)?;
    send(&mut idle, b"GET / HTTP/1.1\r\n\r\n")?;
    read_resp(&mut idle, false)?;
    let mut stream = connect(&f)?;
    send(&mut stream, b"GET /stream HTTP/1.1\r\n\r\n")?;
    let mut busy = connect(&f)?;
    send(&mut busy, b"GET /slow HTTP/1.1\r\n\r\n")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while f.streams_started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    f.server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        f.saw_stop.load(Ordering::SeqCst),
        "the stream was not told to stop"
    );
    let r = read_resp(&mut busy, false)?;
    assert_eq!(
        (r.text().as_str(), r.header("Connection")),
        ("slow done", Some("close"))
    );
    assert!(closed_within(&mut idle, Duration::from_secs(1)));
    assert!(TcpStream::connect(f.addr).is_err() || once(&f, b"GET / HTTP/1.1\r\n\r\n").is_err());
    Ok(())
}

#[test]
fn unix_listener_carries_its_tag_and_stops_alone() -> R {
    let f = start()?;
    let dir = std::env::temp_dir().join(format!("nomadlet-http-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("api.sock");
    let _ = std::fs::remove_file(&path);
    let handle = f
        .server
        .serve_unix(UnixListener::bind(&path)?, Arc::from("task-a"))?;
    let s = UnixStream::connect(&path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut c = BufReader::new(s);
    c.get_mut().write_all(b"GET /u HTTP/1.1\r\n\r\n")?;
    assert_eq!(read_resp(&mut c, false)?.text(), "GET /u [] unix:task-a ");
    // Unix sockets get the same deadlines as TCP.
    let silent = UnixStream::connect(&path)?;
    silent.set_read_timeout(Some(Duration::from_secs(5)))?;
    assert!(closed_within(
        &mut BufReader::new(silent),
        Duration::from_secs(2)
    ));
    let started = Instant::now();
    handle.stop();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed_within(&mut c, Duration::from_secs(1)));
    assert!(UnixStream::connect(&path).is_err());
    // The TCP listener is untouched.
    assert_eq!(once(&f, b"GET / HTTP/1.1\r\n\r\n")?.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn dropping_a_server_with_open_connections_does_not_hang() -> R {
    let f = start()?;
    let _idle = connect(&f)?;
    let started = Instant::now();
    drop(f);
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}

#[test]
fn request_helpers_find_headers_and_repeated_query_values() {
    let req = Request {
        method: "GET".into(),
        path: "/".into(),
        query: vec![
            ("a".into(), "1".into()),
            ("b".into(), "".into()),
            ("a".into(), "2".into()),
        ],
        headers: vec![("X-Nomad-Token".into(), "t".into())],
        body: Vec::new(),
        origin: Origin::Tcp { peer: None },
    };
    assert_eq!(req.header("x-nomad-token"), Some("t"));
    assert_eq!(req.query("a"), Some("1"));
    assert_eq!(req.query_all("a").collect::<Vec<_>>(), vec!["1", "2"]);
    assert!(req.has_query("b") && !req.has_query("c"));
}
