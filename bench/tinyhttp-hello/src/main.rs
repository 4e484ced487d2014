//! Bench baseline: a bare tiny_http server. `hello` answers every request with a short body;
//! `file PATH` serves PATH with `Response::from_file` (the `cat` baseline).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = args.get(1).cloned().unwrap_or_else(|| "18080".into());
    let file = args.get(2).cloned();
    let server = tiny_http::Server::http(format!("127.0.0.1:{port}")).expect("bind");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let server = &server as *const tiny_http::Server as usize;
            let file = file.clone();
            std::thread::spawn(move || {
                // SAFETY: the server outlives these threads (main never returns).
                let server = unsafe { &*(server as *const tiny_http::Server) };
                for req in server.incoming_requests() {
                    let _ = match &file {
                        Some(p) => req.respond(tiny_http::Response::from_file(std::fs::File::open(p).expect("open"))),
                        None => req.respond(tiny_http::Response::from_string("{\"client\":{\"ok\":true,\"message\":\"ok\"}}")),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
