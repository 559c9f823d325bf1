//! The operator pages' HTML, rendered on the server with `maud` (which escapes every value it
//! inserts): the overview, the tickets list, one ticket, and the deliveries list; plus the one
//! embedded stylesheet. No JavaScript, no external resources. Every link is relative, so the
//! pages work behind a reverse proxy under any prefix. Times are absolute UTC with the relative
//! time beside them. No IO here: the handlers in `ui.rs` pass in what was read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::domain::{TicketKind, TicketState, ValidationIssue};
use crate::poller::{PauseReport, PauseView};
use crate::redact::token_like;
use crate::retention::LastRun;
use crate::store::{
    Delivery, DeliveryFilter, DeliveryState, Overview as DatabaseOverview, Ticket, TicketEvent, TicketFilter,
    WebhookAttempt,
};

/// The stylesheet, served as `/ui/style.css`: light and dark schemes after
/// `prefers-color-scheme`.
pub(super) const STYLESHEET: &str = include_str!("style.css");

/// What every list page knows besides its rows.
pub(super) struct Page {
    /// The time the page is rendered at (relative times).
    pub(super) now: DateTime<Utc>,
    /// Rows asked for; a full page gets an `older` link.
    pub(super) limit: u32,
}

/// Everything the overview shows.
pub(super) struct Overview {
    pub(super) now: DateTime<Utc>,
    pub(super) ready: bool,
    pub(super) reasons: Vec<String>,
    pub(super) pauses: PauseReport,
    pub(super) loops: Vec<(&'static str, Duration)>,
    pub(super) stall_window: Duration,
    pub(super) configured_rate: f64,
    pub(super) current_rate: f64,
    pub(super) slowed: bool,
    pub(super) database: DatabaseOverview,
    pub(super) retention_keep: Duration,
    pub(super) retention_schedule: String,
    pub(super) retention_last: Option<LastRun>,
    pub(super) retention_next: Option<DateTime<Utc>>,
    pub(super) credentials: String,
    pub(super) version: &'static str,
    pub(super) started_at: DateTime<Utc>,
    pub(super) refresh: Option<u64>,
}

/// `/ui/`.
pub(super) fn overview(page: &Overview) -> Markup {
    let now = page.now;
    let lag = page.database.next_due_at.map(|due| now - due).filter(|lag| *lag > chrono::Duration::zero());
    let body = html! {
        section {
            h2 { "Readiness" }
            @if page.ready {
                p.ok { "Ready: the database answers, every loop makes progress and polling is not paused." }
            } @else {
                p.bad { "Not ready:" }
                ul { @for reason in &page.reasons { li { (reason) } } }
            }
        }
        section {
            h2 { "Pauses" }
            @match &page.pauses.global {
                Some(pause) => { p.bad { "All " (pause.cause.describe()) "." } (pause_table(now, None, pause)) }
                None => p.ok { "Polling is not paused globally." },
            }
            @if page.pauses.workspaces.is_empty() {
                p { "No workspace is paused." }
            } @else {
                table {
                    thead { tr { th { "workspace" } th { "reason" } th { "since" } th { "next probe" } } }
                    tbody {
                        @for (workspace, pause) in &page.pauses.workspaces {
                            tr {
                                td { a href={ "tickets?workspace=" (query_value(workspace)) } { (workspace) } }
                                td { code { (pause.reason.0) } " " (pause.reason.1) }
                                td { (when(now, pause.since)) }
                                td { (probe(now, pause)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Loops and rate limit" }
            table {
                thead { tr { th { "loop" } th { "last progress" } th { "state" } } }
                tbody {
                    @for (name, age) in &page.loops {
                        tr {
                            td { (name) }
                            td { (format_duration(*age)) " ago" }
                            td { @if *age > page.stall_window { span.bad { "stuck" } } @else { span.ok { "live" } } }
                        }
                    }
                }
            }
            p {
                "Rate limit: " (format!("{:.2}", page.current_rate)) " requests/s now, "
                (format!("{:.2}", page.configured_rate)) " configured"
                @if page.slowed { " — " span.bad { "slowed by throttling answers" } }
                "."
            }
        }
        section {
            h2 { "Tickets" }
            table {
                thead { tr { th { "state" } th.num { "tickets" } } }
                tbody {
                    @for state in TicketState::ALL {
                        tr {
                            td { a href={ "tickets?state=" (state.as_str()) } { (state_badge(state)) } }
                            td.num { (count_of(&page.database.tickets_by_state, state)) }
                        }
                    }
                }
            }
            p {
                "Queue lag: "
                @match lag { Some(lag) => (format_duration(lag.to_std().unwrap_or_default())), None => "none (nothing is overdue)" }
                "."
            }
            @if page.database.leases.is_empty() {
                p { "No ticket is being polled right now." }
            } @else {
                table {
                    thead { tr { th { "leased by" } th.num { "tickets" } } }
                    tbody { @for (owner, count) in &page.database.leases { tr { td { code { (owner) } } td.num { (count) } } } }
                }
            }
        }
        section {
            h2 { "Webhooks" }
            p {
                a href="deliveries?state=pending" { (page.database.webhook_backlog) " waiting" }
                @if let Some(oldest) = page.database.webhook_oldest { ", the oldest written " (when(now, oldest)) }
                "; " a href="deliveries?state=dead" { (page.database.webhook_dead) " dead" } "."
            }
        }
        section {
            h2 { "Retention" }
            p {
                "Finished tickets older than " (format_duration(page.retention_keep)) " are deleted on "
                code { (page.retention_schedule) } "."
            }
            p {
                "Last run: "
                @match &page.retention_last {
                    Some(LastRun { at, deleted: Some(deleted), .. }) => { (when(now, *at)) ", " (deleted) " tickets deleted" }
                    Some(LastRun { at, error, .. }) => { (when(now, *at)) ", " span.bad { "failed: " (error.clone().unwrap_or_default()) } }
                    None => "none since the start",
                }
                ". Next run: "
                @match page.retention_next { Some(next) => (when(now, next)), None => "never" }
                "."
            }
        }
        section {
            h2 { "Process" }
            dl {
                dt { "version" } dd { (page.version) }
                dt { "started" } dd { (when(now, page.started_at)) }
                dt { "credentials" } dd { (page.credentials) }
            }
        }
    };
    let refresh = page.refresh.map(|seconds| html! { meta http-equiv="refresh" content=(seconds); });
    layout("Overview", "", refresh, &body)
}

/// `/ui/tickets`.
pub(super) fn tickets(page: &Page, filter: &TicketFilter, rows: &[Ticket]) -> Markup {
    let now = page.now;
    let body = html! {
        form.filters method="get" action="tickets" {
            fieldset {
                legend { "state" }
                @for state in TicketState::ALL {
                    label { input type="checkbox" name="state" value=(state.as_str()) checked[filter.states.contains(&state)]; " " (state.as_str()) }
                }
            }
            label { "kind " select name="kind" {
                option value="" { "any" }
                @for kind in TicketKind::ALL { option value=(kind.as_str()) selected[filter.kind == Some(kind)] { (kind.as_str()) } }
            } }
            (text_input("workspace", filter.workspace.as_deref()))
            (text_input("namespace", filter.namespace.as_deref()))
            (text_input("ticket_id", filter.ticket_id.as_deref()))
            (text_input("error_code", filter.error_code.as_deref()))
            label { input type="checkbox" name="dead_webhook" value="1" checked[filter.dead_webhook]; " with a dead webhook" }
            button type="submit" { "Filter" }
            " " a href="tickets" { "clear" }
        }
        @if rows.is_empty() {
            p { "No ticket matches." }
        } @else {
            table {
                thead { tr {
                    th.num { "row" } th { "ticket_id" } th { "kind" } th { "workspace / namespace" } th { "state" }
                    th { "status" } th.num { "polls" } th { "error" } th { "created" } th { "finished" }
                } }
                tbody {
                    @for ticket in rows {
                        tr {
                            td.num { a href={ "tickets/" (ticket.id.0) } { (ticket.id.0) } }
                            td { a href={ "tickets/" (ticket.id.0) } { code { (ticket.key.ticket_id) } } }
                            td { (ticket.kind.as_str()) }
                            td { (ticket.key.workspace) " / " (ticket.key.namespace) }
                            td { (state_badge(ticket.state)) }
                            td { (ticket.ticket_status.as_ref().map(ToString::to_string).unwrap_or_default()) }
                            td.num { (ticket.polls) }
                            td { (optional_code(ticket.error_code.as_deref())) }
                            td { (when(now, ticket.created_at)) }
                            td { @if let Some(finished) = ticket.finished_at { (when(now, finished)) } }
                        }
                    }
                }
            }
        }
        @if let Some(last) = rows.last().filter(|_| rows.len() >= page.limit as usize) {
            p.paging { a rel="next" href={ "tickets?" (ticket_query(filter, page.limit, last.id.0)) } { "older →" } }
        }
    };
    layout("Tickets", "", None, &body)
}

/// One ticket with everything the ticket page shows.
pub(super) struct TicketHistory {
    pub(super) ticket: Ticket,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) events: Vec<TicketEvent>,
    pub(super) attempts: Vec<WebhookAttempt>,
}

/// `/ui/tickets/{id}`.
pub(super) fn ticket(now: DateTime<Utc>, history: &TicketHistory) -> Markup {
    let TicketHistory { ticket, deliveries, events, attempts } = history;
    let status = ticket.ticket_status.as_ref().map(ToString::to_string);
    let optional_time = |at: Option<DateTime<Utc>>| html! { @if let Some(at) = at { (when(now, at)) } };
    let body = html! {
        section {
            dl.columns {
                dt { "request_id" } dd { code { (ticket.request_id.as_deref().unwrap_or("none yet")) } }
                dt { "row" } dd { (ticket.id.0) }
                dt { "ticket_id" } dd { code { (ticket.key.ticket_id) } }
                dt { "kind" } dd { (ticket.kind.as_str()) }
                dt { "workspace" } dd { (ticket.key.workspace) }
                dt { "namespace" } dd { (ticket.key.namespace) }
                dt { "region" } dd { (ticket.region.as_deref().unwrap_or_default()) }
                dt { "state" } dd { (state_badge(ticket.state)) }
                dt { "ticket_status" } dd { (status.unwrap_or_default()) }
                dt { "deployment_id" } dd { (optional_code(ticket.deployment_id.as_deref())) }
                dt { "deploy_success" } dd { (ticket.deploy_success.map(|success| success.to_string()).unwrap_or_default()) }
                dt { "message" } dd { (ticket.message.as_deref().unwrap_or_default()) }
                dt { "validation_result" } dd { (ticket.validation_result.as_deref().unwrap_or_default()) }
                dt { "error_code" } dd { (optional_code(ticket.error_code.as_deref())) }
                dt { "error_message" } dd { (ticket.error_message.as_deref().unwrap_or_default()) }
                dt { "polls" } dd { (ticket.polls) }
                dt { "retries" } dd { (ticket.retries) }
                dt { "running_streak / error_streak" } dd { (ticket.running_streak) " / " (ticket.error_streak) }
                dt { "webhook_url" } dd { (ticket.webhook_url.as_deref().map(shown_url).unwrap_or_default()) }
                dt { "webhook_note" } dd { (ticket.webhook_note.as_deref().unwrap_or_default()) }
                dt { "created_at" } dd { (when(now, ticket.created_at)) }
                dt { "updated_at" } dd { (when(now, ticket.updated_at)) }
                dt { "next_poll_at" } dd { @if ticket.is_pending() { (when(now, ticket.next_poll_at)) } }
                dt { "deadline_at" } dd { (optional_time(ticket.deadline_at)) }
                dt { "finished_at" } dd { (optional_time(ticket.finished_at)) }
                dt { "lease" } dd {
                    @if let (Some(owner), Some(until)) = (&ticket.lease_owner, ticket.lease_until) { code { (owner) } " until " (when(now, until)) }
                }
            }
        }
        @if !ticket.validation_errors.is_empty() {
            section {
                h2 { "Validation errors" }
                (issues(&ticket.validation_errors))
            }
        }
        section {
            h2 { "Timeline" }
            @if events.is_empty() { p { "Nothing has happened yet." } } @else { (timeline(now, events)) }
        }
        section {
            h2 { "Commands" }
            pre.command { (command_lines(ticket, deliveries)) }
        }
        section {
            h2 { "Webhook deliveries" }
            @if deliveries.is_empty() { p { "None." } }
            @for delivery in deliveries {
                article.delivery {
                    h3 { "Delivery " (delivery.id) " — " (delivery_badge(delivery)) }
                    dl.columns {
                        dt { "receiver" } dd { (shown_url(&delivery.url)) }
                        dt { "webhook-id" } dd { code { (delivery.webhook_id) } }
                        dt { "event" } dd { (delivery.event_type) }
                        dt { "attempts" } dd { (delivery.attempts) }
                        dt { "last HTTP status" } dd { (delivery.last_http_status.map(|status| status.to_string()).unwrap_or_default()) }
                        dt { "last error" } dd { (delivery.last_error.as_deref().unwrap_or_default()) }
                        dt { "next attempt" } dd { @if delivery.state() == Some(DeliveryState::Pending) { (stored_time(now, &delivery.next_attempt_at)) } }
                        dt { "delivered" } dd { @if let Some(at) = &delivery.delivered_at { (stored_time(now, at)) } }
                    }
                    (attempt_table(now, attempts.iter().filter(|attempt| attempt.delivery == delivery.id)))
                    details {
                        summary { "Signed body (exactly as sent)" }
                        pre.body { (delivery.payload) }
                    }
                }
            }
        }
    };
    layout(&format!("Ticket {}", ticket.key.ticket_id), "../", None, &body)
}

/// `/ui/deliveries`.
pub(super) fn deliveries(page: &Page, filter: &DeliveryFilter, rows: &[Delivery]) -> Markup {
    let now = page.now;
    let states = [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Dead];
    let events = ["ticket.succeeded", "ticket.failed", "ticket.expired"];
    let body = html! {
        form.filters method="get" action="deliveries" {
            label { "state " select name="state" {
                option value="" { "any" }
                @for state in states { option value=(state.as_str()) selected[filter.state == Some(state)] { (state.as_str()) } }
            } }
            label { "event_type " select name="event_type" {
                option value="" { "any" }
                @for event in events { option value=(event) selected[filter.event_type.as_deref() == Some(event)] { (event) } }
            } }
            label { "min_attempts " input type="number" min="0" name="min_attempts" value=[filter.min_attempts]; }
            button type="submit" { "Filter" }
            " " a href="deliveries" { "clear" }
        }
        @if rows.is_empty() {
            p { "No delivery matches." }
        } @else {
            table {
                thead { tr {
                    th.num { "id" } th { "ticket" } th { "receiver" } th { "event" } th { "state" }
                    th.num { "attempts" } th.num { "last status" } th { "last error" } th { "created" }
                } }
                tbody {
                    @for delivery in rows {
                        tr {
                            td.num { (delivery.id) }
                            td { a href={ "tickets/" (delivery.ticket) } { "row " (delivery.ticket) } }
                            td { (shown_url(&delivery.url)) }
                            td { (delivery.event_type) }
                            td { (delivery_badge(delivery)) }
                            td.num { (delivery.attempts) }
                            td.num { (delivery.last_http_status.map(|status| status.to_string()).unwrap_or_default()) }
                            td { (delivery.last_error.as_deref().unwrap_or_default()) }
                            td { (stored_time(now, &delivery.created_at)) }
                        }
                    }
                }
            }
        }
        @if let Some(last) = rows.last().filter(|_| rows.len() >= page.limit as usize) {
            p.paging { a rel="next" href={ "deliveries?" (delivery_query(filter, page.limit, last.id)) } { "older →" } }
        }
    };
    layout("Webhook deliveries", "", None, &body)
}

/// A page that only says what was wrong with the request.
/// `root` leads from the page's directory back to `/ui/`.
pub(super) fn problem(message: &str, root: &str) -> Markup {
    layout(
        "Cannot show that",
        root,
        None,
        &html! { p.bad { (message) } p { a href={ (root) "./" } { "Back to the overview" } } },
    )
}

/// The frame of every page. `root` leads from the page's directory back to `/ui/`.
fn layout(title: &str, root: &str, head: Option<Markup>, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                @if let Some(head) = head { (head) }
                title { (title) " · flink-ticketd" }
                link rel="stylesheet" href={ (root) "style.css" };
            }
            body {
                nav {
                    strong { "flink-ticketd" }
                    a href={ (root) "./" } { "Overview" }
                    a href={ (root) "tickets" } { "Tickets" }
                    a href={ (root) "deliveries" } { "Deliveries" }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn timeline(now: DateTime<Utc>, events: &[TicketEvent]) -> Markup {
    let mut previous: Option<DateTime<Utc>> = None;
    html! {
        table.timeline {
            thead { tr { th { "when" } th { "after" } th { "what" } th { "state" } th { "status" } th.num { "polls" } th { "error" } th { "detail" } } }
            tbody {
                @for event in events {
                    @let after = previous.replace(event.at).map(|before| format_duration((event.at - before).to_std().unwrap_or_default()));
                    tr {
                        td { (when(now, event.at)) }
                        td { (after.unwrap_or_default()) }
                        td { (event.kind.replace('_', " ")) }
                        td { (state_badge(event.state)) }
                        td { (event.ticket_status.as_ref().map(ToString::to_string).unwrap_or_default()) }
                        td.num { (event.polls) }
                        td { (optional_code(event.error_code.as_deref())) }
                        td { (event.detail.as_deref().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

fn attempt_table<'a>(now: DateTime<Utc>, attempts: impl Iterator<Item = &'a WebhookAttempt>) -> Markup {
    let attempts: Vec<&WebhookAttempt> = attempts.collect();
    html! {
        @if attempts.is_empty() {
            p { "No attempt recorded yet." }
        } @else {
            table {
                thead { tr { th.num { "attempt" } th { "started" } th.num { "took" } th.num { "HTTP status" } th { "error" } } }
                tbody {
                    @for attempt in attempts {
                        tr {
                            td.num { (attempt.attempt) }
                            td { (when(now, attempt.at)) }
                            td.num { (attempt.duration_ms) " ms" }
                            td.num { (attempt.http_status.map(|status| status.to_string()).unwrap_or_default()) }
                            td { (attempt.error.as_deref().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    }
}

fn pause_table(now: DateTime<Utc>, workspace: Option<&str>, pause: &PauseView) -> Markup {
    html! {
        dl {
            @if let Some(workspace) = workspace { dt { "workspace" } dd { (workspace) } }
            dt { "reason" } dd { code { (pause.reason.0) } " " (pause.reason.1) }
            dt { "since" } dd { (when(now, pause.since)) }
            dt { "next probe" } dd { (probe(now, pause)) }
        }
    }
}

fn probe(now: DateTime<Utc>, pause: &PauseView) -> Markup {
    html! { @if pause.probing { "a probe is out now" } @else { (when(now, pause.until)) } }
}

fn issues(issues: &[ValidationIssue]) -> Markup {
    html! {
        ul.issues { @for issue in issues { li { code { (issue.to_string()) } } } }
    }
}

/// The commands an operator may copy, each argument quoted for a POSIX shell.
fn command_lines(ticket: &Ticket, deliveries: &[Delivery]) -> String {
    // Named in full, so that the command finds this row even when the ID is queued in several
    // workspaces, namespaces or kinds.
    let id = format!(
        "{} --kind {} --workspace {} --namespace {}",
        shell_quote(&ticket.key.ticket_id),
        ticket.kind.as_str(),
        shell_quote(&ticket.key.workspace),
        shell_quote(&ticket.key.namespace)
    );
    let mut lines = vec![format!("flink-ticketd show {id}")];
    // `retry` puts a finished ticket back; `cancel` stops a pending one.
    lines.push(if ticket.is_pending() {
        format!("flink-ticketd cancel {id}")
    } else {
        format!("flink-ticketd retry {id}")
    });
    lines.extend(deliveries.iter().map(|delivery| format!("flink-ticketd webhooks resend {}", delivery.id)));
    lines.join("\n")
}

/// `text` as one POSIX shell word: single quotes, with `'` written as `'\''`.
fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b)) {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A URL for the pages: scheme, host, port and path only (no user information, no query, no
/// fragment), with token-like path segments hidden.
fn shown_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(url) => {
            let path = url
                .path_segments()
                .map(|segments| {
                    segments
                        .map(|segment| if token_like(segment) { "***" } else { segment })
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default();
            let port = url.port().map(|port| format!(":{port}")).unwrap_or_default();
            format!("{}://{}{port}/{path}", url.scheme(), url.host_str().unwrap_or_default())
        }
        Err(_) => crate::redact::redact_text(text),
    }
}

/// A value in `code`, or nothing at all when there is none.
fn optional_code(value: Option<&str>) -> Markup {
    html! { @if let Some(value) = value.filter(|value| !value.is_empty()) { code { (value) } } }
}

fn text_input(name: &str, value: Option<&str>) -> Markup {
    html! { label { (name) " " input type="text" name=(name) value=[value]; } }
}

fn ticket_query(filter: &TicketFilter, limit: u32, older: i64) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for state in &filter.states {
        query.append_pair("state", state.as_str());
    }
    if let Some(kind) = filter.kind {
        query.append_pair("kind", kind.as_str());
    }
    for (name, value) in [
        ("workspace", &filter.workspace),
        ("namespace", &filter.namespace),
        ("ticket_id", &filter.ticket_id),
        ("error_code", &filter.error_code),
    ] {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    if filter.dead_webhook {
        query.append_pair("dead_webhook", "1");
    }
    query.append_pair("limit", &limit.to_string()).append_pair("older", &older.to_string()).finish()
}

fn delivery_query(filter: &DeliveryFilter, limit: u32, older: i64) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(state) = filter.state {
        query.append_pair("state", state.as_str());
    }
    if let Some(event_type) = &filter.event_type {
        query.append_pair("event_type", event_type);
    }
    if let Some(min_attempts) = filter.min_attempts {
        query.append_pair("min_attempts", &min_attempts.to_string());
    }
    query.append_pair("limit", &limit.to_string()).append_pair("older", &older.to_string()).finish()
}

fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn state_badge(state: TicketState) -> Markup {
    html! { span class={ "badge state-" (state.as_str()) } { (state.as_str()) } }
}

fn delivery_badge(delivery: &Delivery) -> Markup {
    let class = delivery.state().map_or("unknown", DeliveryState::as_str);
    html! { span class={ "badge delivery-" (class) } { (delivery.state) } }
}

fn count_of(counts: &[(TicketState, i64)], state: TicketState) -> i64 {
    counts.iter().find(|(counted, _)| *counted == state).map_or(0, |(_, count)| *count)
}

/// An instant as UTC with milliseconds, and how long ago (or ahead) it is beside it.
fn when(now: DateTime<Utc>, at: DateTime<Utc>) -> Markup {
    let delta = now - at;
    let relative = match delta.to_std() {
        Ok(ago) => format!("{} ago", format_duration(ago)),
        Err(_) => format!("in {}", format_duration((-delta).to_std().unwrap_or_default())),
    };
    html! {
        time datetime=(crate::clock::format_instant(at)) { (at.format("%Y-%m-%d %H:%M:%S%.3fZ")) }
        " " span.relative { "(" (relative) ")" }
    }
}

/// A stored instant (text); shown as it is stored when it cannot be read.
fn stored_time(now: DateTime<Utc>, text: &str) -> Markup {
    match crate::clock::parse_instant(text) {
        Some(at) => when(now, at),
        None => html! { (text) },
    }
}

/// A duration in the largest two units that matter: `3 d 4 h`, `5 min 2 s`, `850 ms`.
fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let seconds = duration.as_secs();
    match seconds {
        0 => format!("{millis} ms"),
        1..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_hostile_ids_one_word() {
        assert_eq!(shell_quote("88a8fc49-e090"), "88a8fc49-e090");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("x'; rm -rf / #"), "'x'\\''; rm -rf / #'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
    }

    #[test]
    fn urls_are_shown_without_userinfo_query_or_tokens() {
        assert_eq!(
            shown_url("https://u:pw@hooks.example.com:8443/a/b?token=x#f"),
            "https://hooks.example.com:8443/a/b"
        );
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/aB3dE6gH9jK2mN5pQ8rS1tU4"),
            "https://hooks.slack.com/services/T0/B0/***"
        );
    }

    #[test]
    fn durations_read_in_two_units() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(format_duration(Duration::from_secs(302)), "5 min 2 s");
        assert_eq!(format_duration(Duration::from_secs(90_061)), "1 d 1 h");
    }
}
