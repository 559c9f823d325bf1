//! Plain-text output shared by the commands and the demo: left-aligned tables for a terminal.
//! Printing to stdout is what this module is for; the daemon itself only logs.

#![expect(clippy::print_stdout, reason = "printing tables is this module's job")]

use crate::store::{Delivery, DeliveryState};

/// Prints a left-aligned table with a header.
pub fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(&mut header.iter().copied()));
    for row in rows {
        println!("{}", line(&mut row.iter().map(String::as_str)));
    }
}

/// Prints the webhook delivery log as a table, receiver URLs redacted.
pub fn print_delivery_table(deliveries: &[Delivery]) {
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|delivery| {
            vec![
                delivery.id.to_string(),
                delivery.ticket.to_string(),
                delivery.event_type.clone(),
                delivery.state.clone(),
                delivery.attempts.to_string(),
                delivery.last_http_status.map(|status| status.to_string()).unwrap_or_default(),
                delivery_when(delivery),
                crate::redact::redact_text(&delivery.url),
                delivery.webhook_id.clone(),
                delivery.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "ID",
        "TICKET_ROW",
        "EVENT",
        "STATE",
        "ATTEMPTS",
        "HTTP",
        "DELIVERED / NEXT",
        "URL",
        "WEBHOOK_ID",
        "LAST_ERROR",
    ];
    print_rows(&header, &rows);
}

/// When a delivery was delivered, or when it is next attempted.
pub fn delivery_when(delivery: &Delivery) -> String {
    match delivery.state() {
        Some(DeliveryState::Delivered) => delivery.delivered_at.clone().unwrap_or_default(),
        Some(DeliveryState::Pending) => format!("next {}", delivery.next_attempt_at),
        _ => String::new(),
    }
}
