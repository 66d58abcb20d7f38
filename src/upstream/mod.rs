//! Upstream: talking to pool servers — where a server is and how to connect
//! to it, its live state, the HTTP/1.1 client, the body type that flows
//! through the proxy, and active health checks.

mod body;
mod client;
mod connect;
mod error;
mod health;
mod keepalive;
pub(crate) mod retry;
mod server;
mod spill;

pub use body::Body;
pub(crate) use client::handshake;
pub use client::{Pulled, Upstream};
pub(crate) use connect::connect;
pub use error::{BoxError, UpstreamError};
pub(crate) use error::{Failure, Fault};
pub use server::Server;
pub use spill::Replay;
pub(crate) use spill::{MEMORY_LIMIT, Spill};
