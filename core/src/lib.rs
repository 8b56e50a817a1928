//! Weir: a VXLAN hub-and-spoke container overlay whose policy decisions are made by sandboxed
//! plugins.
//!
//! Data flows one way: [`config`] → [`plan`] → store → policy → dataplane → kernel. The binary
//! (`src/main.rs`) is a thin shell over [`cli`].

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod failpoint;
pub mod hub;
pub mod ipam;
pub mod lab;
pub mod logging;
pub mod network;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod store;
pub mod telemetry;
