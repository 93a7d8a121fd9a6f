//! How the daemon is talked to: the loop's inbox (`control`) and the control socket (`protocol`, `access`, `server`, `client`); may use `observe` and below.
//!
//! The control socket is a Unix socket (default `/run/netiso/netiso.sock`)
//! speaking a small versioned protocol of JSON lines (see [`protocol`]);
//! every connection's peer credentials are checked (see [`access`]).
pub mod access;
pub mod client;
pub mod control;
pub mod protocol;
pub mod server;

pub use access::{group_id, peer_of, Access, Peer};
pub use client::{call, subscribe, ClientError, Subscription};
pub use protocol::{
    parse_request, socket_path, Request, RequestLine, Response, StreamLine, API_VERSION,
    SOCKET_FILE,
};
pub use server::{bind, serve, ServerContext};
