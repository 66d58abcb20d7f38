//! Upstream: talking to pool servers — the HTTP/1.1 client, the body type
//! that flows through the proxy, and active health checks.

mod body;
mod client;
mod health;

pub use body::{Body, BoxError};
pub use client::{Connections, Pulled, Upstream, UpstreamError, connect_tcp, error_chain};
pub(crate) use health::spawn as spawn_health_checker;
