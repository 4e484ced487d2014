//! The server side of the agent as the client sees it: the in-process [`local_link::LocalLink`]
//! that answers the client's [`crate::client::link::ServerLink`] calls from the server state.

pub mod local_link;
pub mod scheduler;
