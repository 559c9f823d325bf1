//! Plain-text output shared by the commands and the demo: left-aligned tables for a terminal.
//! Printing to stdout is what this module is for; the daemon itself only logs.

#![expect(clippy::print_stdout, reason = "printing tables is this module's job")]

use crate::clock::format_instant;
use crate::store::{Delivery, DeliveryState, TicketEvent, WebhookAttempt};

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

/// Prints a ticket's timeline (each change with the time since the one before) and every
/// webhook attempt, for `show`.
pub fn print_history(events: &[TicketEvent], attempts: &[WebhookAttempt]) {
    if !events.is_empty() {
        println!("timeline:");
        let mut previous: Option<chrono::DateTime<chrono::Utc>> = None;
        for event in events {
            let since =
                previous.map(|before| format!("+{}ms", (event.at - before).num_milliseconds())).unwrap_or_default();
            previous = Some(event.at);
            let status = event.ticket_status.as_ref().map(ToString::to_string).unwrap_or_default();
            let mut line = format!(
                "  {} {since:>10} {:<11} {:<9} {status:<9} polls={}",
                format_instant(event.at),
                event.kind,
                event.state.as_str(),
                event.polls
            );
            if let Some(code) = &event.error_code {
                line.push_str(&format!(" error={code}"));
            }
            if let Some(detail) = &event.detail {
                line.push_str(&format!(" ({detail})"));
            }
            println!("{line}");
        }
    }
    if !attempts.is_empty() {
        println!("webhook attempts:");
        for attempt in attempts {
            println!(
                "  #{} attempt {} {} {}ms{}{}",
                attempt.delivery,
                attempt.attempt,
                format_instant(attempt.at),
                attempt.duration_ms,
                attempt.http_status.map(|status| format!(" http={status}")).unwrap_or_default(),
                attempt.error.as_deref().map(|error| format!(" error: {error}")).unwrap_or_default(),
            );
        }
    }
}
