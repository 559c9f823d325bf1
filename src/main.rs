//! The `flink-ticketd` binary.

fn main() {}
