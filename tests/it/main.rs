//! The integration tests: one binary, one shared harness.

mod cli;
mod cloud;
mod harness;
mod ops;
mod polling;
mod signing;
mod store;
mod webhooks;
