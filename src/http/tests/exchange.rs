//! Well-formed traffic: keep-alive, pipelining, HTTP/1.0, chunked bodies, 100-continue,
//! HEAD, file and stream bodies, header sanitising.

use std::io::{BufRead, Read};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::http::*;

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
fn request_helpers_find_headers_and_repeated_query_values() {
    let req = Request {
        method: Method::Get,
        path: "/".into(),
        query: vec![
            ("a".into(), "1".into()),
            ("b".into(), "".into()),
            ("a".into(), "2".into()),
        ],
        headers: vec![("X-Nomad-Token".into(), "t".into())],
        body: Vec::new(),
        origin: Origin::Tcp { peer: None },
        peer: Peer::none(),
    };
    assert_eq!(req.header("x-nomad-token"), Some("t"));
    assert_eq!(req.query("a"), Some("1"));
    assert_eq!(req.query_all("a").collect::<Vec<_>>(), vec!["1", "2"]);
    assert!(req.has_query("b") && !req.has_query("c"));
    assert!(!req.peer_gone(), "no connection: never gone");
}
