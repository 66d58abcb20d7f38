//! Upstream: talking to pool servers — where a server is and how to connect
//! to it, its live state, the HTTP/1.1 client, the body type that flows
//! through the proxy, and active health checks.

mod body;
mod client;
mod connect;
mod health;
mod keepalive;
mod server;
mod spill;

pub use body::{Body, BoxError};
pub use client::{Pulled, Upstream, UpstreamError, error_chain};
pub(crate) use connect::connect;
pub use server::Server;
pub use spill::Replay;
pub(crate) use spill::{MEMORY_LIMIT, Spill};
