//! Upstream: everything about talking to the servers of a pool, one server
//! at a time.
//!
//! - `server`: a pool member ([`Server`]): its address, passive and active
//!   health, requests in flight, idle connections.
//! - `connect`: the one way to open a connection to any kind of server
//!   `Address` (`host:port` or `unix:PATH`), as a `Stream`.
//! - `client`: the HTTP/1.1 client ([`Upstream`]) that carries pool
//!   requests, driven by the request using the connection; `codec` is its
//!   wire format (heads, framing), `keepalive` holds the idle connections
//!   it reuses. WebSocket handshakes and health checks go through hyper's
//!   client (`handshake`).
//! - `body`: the [`Body`] that flows through the proxy in both directions;
//!   `spill`: the one buffer that holds a body in memory, then on disk.
//! - `health`: active health checks.
//! - `error`: [`UpstreamError`], who is at fault (`Fault`), and whether a
//!   failure may be retried; `retry`: the one retry policy.
//!
//! This module knows servers, not admission: which server a request may
//! use, and when, is `crate::pool`'s business. The pool builds on this
//! module and never the other way round, so none of these files imports it.

mod body;
mod client;
mod codec;
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
pub(crate) use connect::{Stream, connect};
pub use error::{BoxError, ExchangeError, UpstreamError};
pub(crate) use error::{Failure, Fault};
pub use server::Server;
pub use spill::Replay;
pub(crate) use spill::{MEMORY_LIMIT, Spill};
