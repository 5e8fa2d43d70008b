//! A small, synchronous server of simulated website-traffic analytics: REST for polling
//! and a WebSocket or Server-Sent Events stream on the same path, fed by one generator
//! thread.
//!
//! Data flows one way: [`simulator`] (pure) → `generator` (one thread) → `hub` (latest
//! sample and subscribers) → `ws` and `sse` (a thread per client) and `routes` (REST).
//! `server` owns the listener and picks REST, WebSocket or SSE for each request. [`start`] runs it all
//! in-process, which is how the integration tests drive the real server on port 0.

pub mod config;
mod connections;
mod generator;
mod http;
mod hub;
mod metrics;
mod options;
mod paths;
mod routes;
pub mod sample;
mod server;
pub mod simulator;
mod socket;
mod sse;
mod watchdog;
mod watcher;
mod ws;

pub use config::Config;
pub use server::{Server, StartError, start};
