//! Webhooks announcing finished tickets. [`plan`] decides, for a ticket's final row, which
//! receivers get which body (the rows are written in the same transaction as the final state);
//! `deliver` is the loop that sends them ([`Deliverer`]); `signing` holds the Standard Webhooks
//! signature.

pub mod deliver;
pub mod settings;
pub mod signing;

pub use deliver::Deliverer;
pub use settings::{
    MAX_WEBHOOK_URL_CHARS, SecretBytes, SecretError, WebhookSettings, WebhookUrlError, decode_webhook_secret,
    parse_webhook_url,
};

use crate::clock::format_instant;
use crate::domain::{ConfigIssue, RawJson, TicketKind, TicketState, TicketStatus, ValidationIssue};
use crate::store::{Announce, Announcement, NewDelivery, Ticket};

/// Why a ticket's own `webhook_url` was not used.
pub const TICKET_URL_NOT_ALLOWED: &str = "webhook_url ignored: webhook.allow_ticket_urls is false";

/// The deliveries announcing `ticket`'s final state, one per receiver (configured URLs, plus the
/// ticket's own URL when allowed), and a note for the ticket when its URL was ignored. Every
/// planned URL is in its normalised form and fits the outbox's length limit.
pub fn plan(ticket: &Ticket, config: &WebhookSettings) -> Announcement {
    let Some(event_type) = ticket.state.event_type() else {
        return Announcement::default();
    };
    let mut urls: Vec<String> = config.urls.iter().map(|url| url.as_str().to_owned()).collect();
    let mut note = None;
    if let Some(url) = &ticket.webhook_url {
        if !config.allow_ticket_urls {
            note = Some(TICKET_URL_NOT_ALLOWED.to_owned());
        } else {
            match ticket_url(url, config.allow_private_ticket_urls) {
                Ok(url) => urls.push(url.as_str().to_owned()),
                Err(why) => note = Some(format!("webhook_url ignored: {why}")),
            }
        }
    }
    if urls.is_empty() {
        // Nothing to send: the payload is not built.
        return Announcement { deliveries: Vec::new(), webhook_note: note, handoff: None };
    }
    let mut seen = std::collections::HashSet::new();
    urls.retain(|url| seen.insert(url.clone()));
    let payload = payload(ticket, event_type);
    let webhook_id = webhook_id(ticket);
    let deliveries = urls
        .into_iter()
        .map(|url| NewDelivery {
            ticket: ticket.id.0,
            url,
            webhook_id: webhook_id.clone(),
            event_type: event_type.to_owned(),
            payload: payload.clone(),
        })
        .collect();
    Announcement { deliveries, webhook_note: note, handoff: None }
}

/// Plans each final state's announcement with [`plan`]. With no receivers configured only the
/// tickets naming their own are announced, so the others' final rows are not read back.
pub fn announcer(config: &WebhookSettings) -> Announce {
    let settings = std::sync::Arc::new(config.clone());
    let plan = move |row: &Ticket| plan(row, &settings);
    if config.urls.is_empty() { Announce::own_receivers_only(plan) } else { Announce::every_ticket(plan) }
}

/// Why a ticket's own receiver URL is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketUrlError {
    /// It is not a receiver URL at all.
    #[error(transparent)]
    Invalid(#[from] WebhookUrlError),
    /// Its host is private and private receivers are not allowed; says which kind of address.
    #[error("its host is {0}; set webhook.allow_private_ticket_urls = true to allow it")]
    Private(&'static str),
}

/// Checks a ticket's own receiver URL: what [`parse_webhook_url`] checks, and, unless
/// `allow_private`, that its host is not a private address (see [`private_address`]).
pub fn ticket_url(text: &str, allow_private: bool) -> Result<url::Url, TicketUrlError> {
    let url = parse_webhook_url(text)?;
    if !allow_private {
        if let Some(why) = private_host(&url) {
            return Err(TicketUrlError::Private(why));
        }
    }
    Ok(url)
}

/// Why `address` is not a public one, if it is not: loopback, unspecified, link-local, private
/// (RFC 1918, unique local), shared (100.64.0.0/10, which holds the cloud metadata address
/// 100.100.100.200), broadcast, or an IPv4-mapped IPv6 form of any of these.
pub fn private_address(address: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(v4) => {
            let [first, second, ..] = v4.octets();
            if v4 == std::net::Ipv4Addr::new(100, 100, 100, 200) {
                Some("the cloud metadata address")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_unspecified() || first == 0 {
                Some("an unspecified address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_private() {
                Some("a private address")
            } else if first == 100 && (64..128).contains(&second) {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_broadcast() || first >= 224 {
                Some("a multicast or reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a private address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

/// Why a URL's host is private, if it is: a private IP literal, or `localhost`.
fn private_host(url: &url::Url) -> Option<&'static str> {
    match url.host()? {
        url::Host::Ipv4(v4) => private_address(v4.into()),
        url::Host::Ipv6(v6) => private_address(v6.into()),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost")).then_some("a loopback address")
        }
    }
}

/// Hex digits of the ticket's digest in a `webhook-id` (96 bits).
const WEBHOOK_ID_DIGEST_HEX: usize = 24;

/// The `webhook-id` of a ticket's current outcome, `tkt_<digest>_<retries>.<state>`: the same for
/// every receiver, attempt and daemon, new after each `retry`.
///
/// `<digest>` is a SHA-256 prefix of what names the ticket for good and replicates with its row:
/// workspace, namespace, kind, ticket ID, `created_at` (to the millisecond, as stored) and row ID.
/// The row ID alone is not enough: after a PostgreSQL failover with asynchronous replication the
/// sequence can issue an ID again, to a ticket whose other fields differ; and a ticket deleted
/// and inserted again under the same key gets a new `created_at` and row ID. Each field is
/// length-prefixed, so no two tuples hash the same input. Ids of the earlier form
/// (`tkt_<row>_<retries>.<state>`, at most 19 digits) never equal one of this form (24 digits).
pub fn webhook_id(ticket: &Ticket) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    let created_at = format_instant(ticket.created_at);
    let row = ticket.id.0.to_string();
    for field in [
        ticket.key.workspace.as_str(),
        ticket.key.namespace.as_str(),
        ticket.kind.as_str(),
        ticket.key.ticket_id.as_str(),
        created_at.as_str(),
        row.as_str(),
    ] {
        hash.update((field.len() as u64).to_be_bytes());
        hash.update(field.as_bytes());
    }
    let digest = hex::encode(hash.finalize());
    format!("tkt_{}_{}.{}", &digest[..WEBHOOK_ID_DIGEST_HEX], ticket.retries, ticket.state)
}

/// The JSON body announcing a final ticket, as the public interface defines it. `data.result` is
/// the raw `data` of the last answer, embedded byte for byte (never re-serialised), and
/// `data.resource_plan` the plan text exactly as the API sent it.
pub fn payload(ticket: &Ticket, event_type: &str) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        r#type: &'a str,
        timestamp: String,
        data: Data<'a>,
    }
    #[derive(serde::Serialize)]
    struct Data<'a> {
        ticket_id: &'a str,
        kind: TicketKind,
        namespace: &'a str,
        workspace: &'a str,
        state: TicketState,
        ticket_status: Option<&'a TicketStatus>,
        deployment_id: Option<&'a str>,
        deploy_success: Option<bool>,
        message: Option<&'a str>,
        validation_result: Option<&'a str>,
        validation_errors: &'a [ValidationIssue],
        config_errors: &'a [ConfigIssue],
        resource_plan: Option<&'a str>,
        result: Option<&'a RawJson>,
        error_code: Option<&'a str>,
        error_message: Option<&'a str>,
        polls: i64,
        created_at: String,
        finished_at: Option<String>,
    }
    let body = Body {
        r#type: event_type,
        timestamp: format_instant(ticket.finished_at.unwrap_or(ticket.updated_at)),
        data: Data {
            ticket_id: &ticket.key.ticket_id,
            kind: ticket.kind,
            namespace: &ticket.key.namespace,
            workspace: &ticket.key.workspace,
            state: ticket.state,
            ticket_status: ticket.ticket_status.as_ref(),
            deployment_id: ticket.deployment_id.as_deref(),
            deploy_success: ticket.deploy_success,
            message: ticket.message.as_deref(),
            validation_result: ticket.validation_result.as_deref(),
            validation_errors: &ticket.validation_errors,
            config_errors: &ticket.config_errors,
            resource_plan: ticket.resource_plan.as_deref(),
            result: ticket.result_json.as_ref(),
            error_code: ticket.error_code.as_deref(),
            error_message: ticket.error_message.as_deref(),
            polls: ticket.polls,
            created_at: format_instant(ticket.created_at),
            finished_at: ticket.finished_at.map(format_instant),
        },
    };
    serde_json::to_string(&body).expect("a webhook body serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_shared_and_metadata_addresses_are_told_from_public_ones() {
        for private in [
            "127.0.0.1",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:100.100.100.200",
        ] {
            assert!(private_address(private.parse().unwrap()).is_some(), "{private}");
        }
        for public in ["8.8.8.8", "47.96.1.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert_eq!(private_address(public.parse().unwrap()), None, "{public}");
        }
    }

    #[test]
    fn ticket_urls_naming_private_hosts_are_refused_unless_allowed() {
        for url in ["http://localhost:8080/x", "http://api.localhost/x", "http://[::1]/x", "http://0x7f.1/x"] {
            assert!(ticket_url(url, false).is_err(), "{url}");
            assert!(ticket_url(url, true).is_ok(), "{url}");
        }
        assert!(ticket_url("https://hooks.example.com/x", false).is_ok());
    }
}
