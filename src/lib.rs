//! hashpress: a streaming hash and gzip HTTP server.
//!
//! `kernel` holds the pure digest and gzip code; `http` the API; `server`
//! the accept loop and its connections; `accept_gate` evens connections
//! across workers; `cpu_pool` the bounded pool that runs heavy work;
//! `root` confines every file access to the served directory; `storage`
//! puts that directory, or an S3 bucket prefix, behind one interface;
//! `worker` is one serving process (the whole server with `--workers 0`);
//! `supervisor` runs the cluster mode (one supervisor, N worker processes)
//! and knows nothing of HTTP.

#![deny(unsafe_code)]

pub mod accept_gate;
pub mod block_pipeline;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod cpu_pool;
pub mod digest_cache;
pub mod error;
pub mod http;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod root;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod start_error;
pub mod storage;
pub mod supervisor;
pub mod sys;
pub mod tls;
pub mod tree;
pub mod worker;
