//! Webhooks announcing finished tickets. [`plan`] decides, for a ticket's final row, which
//! receivers get which body (the rows are written in the same transaction as the final state);
//! `deliver` is the loop that sends them ([`Deliverer`]); `signing` holds the Standard Webhooks
//! signature.

pub mod deliver;
pub mod signing;

pub use deliver::Deliverer;

use serde_json::{Value, json};

use crate::config::WebhookConfig;
use crate::store::{Announcement, NewDelivery, Ticket};

/// Why a ticket's own `webhook_url` was not used.
pub const TICKET_URL_NOT_ALLOWED: &str = "webhook_url ignored: webhook.allow_ticket_urls is false";

/// The deliveries announcing `ticket`'s final state, one per receiver (configured URLs, plus the
/// ticket's own URL when allowed), and a note for the ticket when its URL was ignored.
pub fn plan(ticket: &Ticket, config: &WebhookConfig) -> Announcement {
    let Some(event_type) = ticket.state().and_then(|state| state.event_type()) else {
        return Announcement::default();
    };
    let mut urls: Vec<String> = config.urls.iter().map(|url| url.as_str().to_owned()).collect();
    let mut note = None;
    if let Some(url) = &ticket.webhook_url {
        if !config.allow_ticket_urls {
            note = Some(TICKET_URL_NOT_ALLOWED);
        } else {
            match crate::config::parse_webhook_url(url) {
                Ok(url) => urls.push(url.as_str().to_owned()),
                Err(_) => note = Some("webhook_url ignored: not an http or https URL"),
            }
        }
    }
    urls.dedup();
    let mut seen = std::collections::HashSet::new();
    urls.retain(|url| seen.insert(url.clone()));
    let payload = payload(ticket, event_type);
    let webhook_id = webhook_id(ticket);
    let deliveries = urls
        .into_iter()
        .map(|url| NewDelivery {
            ticket: ticket.id,
            url,
            webhook_id: webhook_id.clone(),
            event_type: event_type.to_owned(),
            payload: payload.clone(),
        })
        .collect();
    Announcement { deliveries, webhook_note: note.map(str::to_owned) }
}

/// The `webhook-id` of a ticket's current outcome: the same for every receiver and attempt, new
/// after each `retry`.
pub fn webhook_id(ticket: &Ticket) -> String {
    format!("tkt_{}_{}.{}", ticket.id, ticket.retries, ticket.state)
}

/// The JSON body announcing a final ticket, as the public interface defines it.
pub fn payload(ticket: &Ticket, event_type: &str) -> String {
    let validation_errors: Value = serde_json::from_str(&ticket.validation_errors).unwrap_or_else(|_| json!([]));
    let body = json!({
        "type": event_type,
        "timestamp": ticket.finished_at.as_deref().unwrap_or(&ticket.updated_at),
        "data": {
            "ticket_id": ticket.ticket_id,
            "namespace": ticket.namespace,
            "workspace": ticket.workspace,
            "state": ticket.state,
            "ticket_status": ticket.ticket_status,
            "deployment_id": ticket.deployment_id,
            "deploy_success": ticket.deploy_success,
            "message": ticket.message,
            "validation_result": ticket.validation_result,
            "validation_errors": validation_errors,
            "error_code": ticket.error_code,
            "error_message": ticket.error_message,
            "polls": ticket.polls,
            "created_at": ticket.created_at,
            "finished_at": ticket.finished_at,
        }
    });
    body.to_string()
}
