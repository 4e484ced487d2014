//! The binary starts, listens, answers an unknown path with Nomad's empty 404, and stops
//! cleanly on SIGTERM.

mod common;
use common::TestAgent;

#[test]
fn unknown_path_is_an_empty_404_and_sigterm_exits_zero() {
    let mut agent = TestAgent::start(&[]);
    let r = agent.get("/v1/does-not-exist");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert!(r.header("Content-Type").is_none());
    let st = agent.stop();
    assert!(st.success(), "exit status {st}");
}
