//! Hostile or unlucky traffic: head and body limits, framing errors, deadlines, caps,
//! handler panics, shutdown and listener stop.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

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
    let f = start_with(test_limits())?;
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
    // Both the stream and the slow request must be in their handlers before the shutdown:
    // a connection still in the accept backlog is reset, not served.
    while f.streams_started.load(Ordering::SeqCst) == 0
        || f.slow_started.load(Ordering::SeqCst) == 0
    {
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
fn one_acceptor_serves_every_unix_listener_and_each_stops_alone() -> R {
    let f = start()?;
    let dir = std::env::temp_dir().join(format!("nomadlet-http-unix3-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ask = |path: &std::path::Path, tag: &str| -> R {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut c = BufReader::new(s);
        c.get_mut().write_all(b"GET /u HTTP/1.1\r\n\r\n")?;
        assert_eq!(
            read_resp(&mut c, false)?.text(),
            format!("GET /u [] unix:{tag} ")
        );
        Ok(())
    };
    let mut handles = Vec::new();
    let mut paths = Vec::new();
    for tag in ["a", "b", "c"] {
        let path = dir.join(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&path);
        handles.push(
            f.server
                .serve_unix(UnixListener::bind(&path)?, Arc::from(tag))?,
        );
        paths.push(path);
    }
    for (path, tag) in paths.iter().zip(["a", "b", "c"]) {
        ask(path, tag)?;
    }
    // A silent client on one socket holds its own thread, not the shared acceptor.
    let _silent = UnixStream::connect(&paths[0])?;
    let b = handles.remove(1);
    b.stop();
    assert!(UnixStream::connect(&paths[1]).is_err());
    ask(&paths[0], "a")?;
    ask(&paths[2], "c")?;
    // Listeners added after a stop are served too.
    let d = dir.join("d.sock");
    let _ = std::fs::remove_file(&d);
    let _hd = f
        .server
        .serve_unix(UnixListener::bind(&d)?, Arc::from("d"))?;
    ask(&d, "d")?;
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
fn a_declared_body_holds_no_budget_until_its_bytes_arrive() -> R {
    // The server-wide and per-client budgets are 64 bytes (test_limits).
    let f = start()?;
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut c = connect(&f)?;
        send(
            &mut c,
            b"POST /x HTTP/1.1\r\nContent-Length: 60\r\nExpect: 100-continue\r\n\r\n",
        )?;
        // The 100 Continue proves the head was taken in.
        let r = read_resp(&mut c, false)?;
        assert_eq!(r.status, 100);
        silent.push(c);
    }
    let body = [b'b'; 40];
    let mut raw = b"POST /y HTTP/1.1\r\nContent-Length: 40\r\n\r\n".to_vec();
    raw.extend_from_slice(&body);
    let r = once(&f, &raw)?;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(silent);
    // Bytes that do arrive are counted: a client over its share gets 503 though the server
    // has room, and only for that request.
    let f = start_with(Limits {
        max_body_bytes_in_flight: 100,
        max_body_bytes_per_client: 60,
        ..test_limits()
    })?;
    let mut raw = b"POST /x HTTP/1.1\r\nContent-Length: 80\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'a'; 80]);
    let r = once(&f, &raw)?;
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "server busy, retry later")
    );
    let mut raw = b"POST /x HTTP/1.1\r\nContent-Length: 50\r\n\r\n".to_vec();
    raw.extend_from_slice(&[b'a'; 50]);
    assert_eq!(once(&f, &raw)?.status, 200);
    Ok(())
}

#[test]
fn admit_refuses_before_the_body_is_read() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    // A huge body that is never sent: the refusal comes at once.
    let started = Instant::now();
    send(
        &mut c,
        b"PUT /locked HTTP/1.1\r\nContent-Length: 4000\r\n\r\n",
    )?;
    let r = read_resp(&mut c, false)?;
    assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let r = once(
        &f,
        b"PUT /locked HTTP/1.1\r\nX-Key: k\r\nContent-Length: 2\r\n\r\nok",
    )?;
    assert_eq!(r.status, 200);
    // A request without a body is not asked.
    let r = once(&f, b"GET /locked HTTP/1.1\r\n\r\n")?;
    assert_eq!(r.status, 200);
    Ok(())
}

#[test]
fn a_waiting_handler_sees_its_client_leave() -> R {
    let f = start()?;
    let mut c = connect(&f)?;
    send(&mut c, b"GET /wait-for-peer HTTP/1.1\r\n\r\n")?;
    // Not gone while the client is there (pipelined bytes do not count as leaving).
    send(&mut c, b"GET /next HTTP/1.1\r\n")?;
    std::thread::sleep(Duration::from_millis(100));
    assert!(!f.peer_left.load(Ordering::SeqCst), "gone while connected");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !f.peer_left.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the handler never saw the client leave"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[test]
fn a_full_listener_sheds_its_longest_idle_keep_alive() -> R {
    // Idle keep-alives must outlive a slow test run; the cap is 4 per listener.
    let f = start_with(Limits {
        idle_timeout: Duration::from_secs(10),
        ..test_limits()
    })?;
    // Four kept-alive connections, served once each, in order: all idle now, each one
    // waited for so they go idle in that order.
    let mut idle = Vec::new();
    for i in 0..4 {
        let mut c = connect(&f)?;
        send(&mut c, format!("GET /k{i} HTTP/1.1\r\n\r\n").as_bytes())?;
        assert_eq!(read_resp(&mut c, false)?.status, 200);
        idle.push(c);
        let deadline = Instant::now() + Duration::from_secs(2);
        while f.server.idle_keepalives() < i + 1 {
            assert!(Instant::now() < deadline, "connection {i} never went idle");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // A fifth is served: the first (idle longest) made room.
    let r = once(&f, b"GET /new HTTP/1.1\r\nConnection: close\r\n\r\n")?;
    assert_eq!(r.status, 200);
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(1)),
        "the oldest idle was not shed"
    );
    for c in idle.iter_mut().skip(1) {
        send(c, b"GET /still HTTP/1.1\r\n\r\n")?;
        assert_eq!(
            read_resp(c, false)?.status,
            200,
            "a newer keep-alive was shed"
        );
    }
    // Connections that have not sent a request yet are never shed: a full listener of them
    // refuses with 503.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(2);
    let fresh: Vec<_> = (0..4).map(|_| connect(&f)).collect::<Result<_, _>>()?;
    let mut r = once(&f, b"GET / HTTP/1.1\r\n\r\n")?;
    while r.status != 503 && Instant::now() < deadline {
        r = once(&f, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")?;
    }
    assert_eq!(r.status, 503);
    drop(fresh);
    Ok(())
}
