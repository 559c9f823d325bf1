//! flink-ticketd watches Alibaba Cloud Realtime Compute for Apache Flink deploy tickets queued in
//! a SQLite table, polls their results with durable backoff, records the outcome and announces it
//! with signed webhooks.

pub mod clock;
pub mod domain;
pub mod flink;
pub mod simulator;
