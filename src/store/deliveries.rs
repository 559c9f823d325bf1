//! The `webhook_deliveries` outbox at the store boundary: rows are inserted with the final state
//! of their ticket (see `Store::record_final`), then claimed with a lease, attempted and closed by
//! the webhook loop (`crate::webhook::deliver`), and listed or queued again by the CLI.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Lease, Store, dispatch};

/// The state of one delivery. The strings match the `CHECK` constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not yet accepted by the receiver; will be attempted at `next_attempt_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt failed, or the receiver answered 410 Gone.
    Dead,
}

impl DeliveryState {
    /// The string stored in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "dead" => Ok(DeliveryState::Dead),
            other => Err(format!("unknown delivery state {other:?}: expected pending, delivered or dead")),
        }
    }
}

/// A row of `webhook_deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct Delivery {
    /// Internal row ID (`webhooks resend` takes it).
    pub id: i64,
    /// The `tickets.id` this delivery announces.
    pub ticket: i64,
    /// The receiver.
    pub url: String,
    /// The `webhook-id` header, the same on every attempt.
    pub webhook_id: String,
    /// `ticket.succeeded`, `ticket.failed` or `ticket.expired`.
    pub event_type: String,
    /// The exact JSON body.
    pub payload: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: String,
    /// HTTP status of the last attempt, if it got one.
    pub last_http_status: Option<i64>,
    /// What went wrong on the last attempt.
    pub last_error: Option<String>,
    /// When a receiver accepted it.
    pub delivered_at: Option<String>,
    /// When the row was written.
    pub created_at: String,
    /// When the row last changed.
    pub updated_at: String,
    /// The claim that holds the row while it is being sent.
    pub lease_owner: Option<String>,
    /// When that claim lapses.
    pub lease_until: Option<String>,
}

impl Delivery {
    /// The state as an enum; `None` only if someone bypassed the `CHECK` constraint.
    pub fn state(&self) -> Option<DeliveryState> {
        self.state.parse().ok()
    }
}

/// What one attempt came to, as recorded on its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptRecord {
    /// The receiver answered 2xx.
    Delivered {
        /// The status it answered.
        http_status: u16,
    },
    /// The attempt failed and another one is due at `next_attempt_at`.
    Retry {
        /// When the next attempt is due.
        next_attempt_at: DateTime<Utc>,
        /// The status of the answer, if there was one.
        http_status: Option<u16>,
        /// What went wrong.
        error: String,
    },
    /// The attempt failed and no other will be made (410 Gone, or the schedule is used up).
    Dead {
        /// The status of the answer, if there was one.
        http_status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// What `webhooks resend` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// The delivery is pending again and due now; the row as it is now.
    Queued(Box<Delivery>),
    /// No delivery has this ID.
    NotFound,
    /// An attempt is in flight right now; its outcome decides what happens next.
    InFlight,
}

/// A delivery to create with a ticket's final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The `tickets.id`.
    pub ticket: i64,
    /// The receiver.
    pub url: String,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The event type.
    pub event_type: String,
    /// The JSON body.
    pub payload: String,
}

/// The delivery lease a final state's deliveries are written under: the writing daemon's own
/// delivery loop takes them at once (it claims rows leased to `lease` as if they were due), while
/// every other daemon sees them as not due until `lease_for` has passed. If the writer dies
/// before sending them, the lease lapses and any daemon sends them, under the same `webhook-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The lease owner of the writing daemon's delivery loop (not one of its claims' leases).
    pub lease: Lease,
    /// How long the rows stay with the writer: the delivery lease.
    pub lease_for: Duration,
}

impl Handoff {
    /// When a handoff written at `now` lapses.
    pub(in crate::store) fn until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease_for).unwrap_or(chrono::Duration::MAX)
    }
}

/// What the outbox made of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store) enum Inserted {
    /// The row is in the outbox.
    Written,
    /// One of the outbox's constraints refused the row; the text says which and why.
    Refused(String),
}

impl Store {
    /// The earliest `next_attempt_at` of a pending delivery (a lease counts as not due until it
    /// lapses, because claiming sets `next_attempt_at = lease_until`).
    pub async fn next_delivery_due_at(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        dispatch!(self, backend => backend.next_delivery_due_at(None).await)
    }

    /// [`Store::next_delivery_due_at`] for the delivery loop that owns `handoff`: `now` when a
    /// delivery is handed to it (see [`Handoff`]), whatever its `next_attempt_at`.
    pub async fn next_delivery_due_for(
        &self,
        handoff: &Handoff,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        dispatch!(self, backend => backend.next_delivery_due_at(Some((handoff, now))).await)
    }

    /// The webhook backlog: how many deliveries are pending and when the oldest was written.
    /// One pass over the `(state, created_at)` index.
    pub async fn webhook_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
        dispatch!(self, backend => backend.webhook_backlog().await)
    }

    /// Claims up to `limit` due pending deliveries in one atomic statement, earliest first, with
    /// at most `per_url` in flight to any one receiver (counting rows other claims hold).
    ///
    /// Each claimed row gets `lease_owner = lease`, `lease_until = next_attempt_at = now +
    /// lease_for` and one more `attempts`: no other claim can take it until the lease lapses, a
    /// killed daemon's rows come due again by themselves, and an attempt that kills the daemon
    /// still counts towards the schedule.
    pub async fn claim_due_deliveries(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: u32,
        per_url: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        dispatch!(self, backend => backend.claim_due_deliveries(lease, None, now, lease_for, limit, per_url).await)
    }

    /// [`Store::claim_due_deliveries`] for the delivery loop that owns `handoff`: also claims the
    /// deliveries handed to it (see [`Handoff`]) before their lease lapses. A delivery handed to
    /// a loop and not yet claimed does not count as in flight to its receiver.
    pub async fn claim_due_and_handed_deliveries(
        &self,
        lease: &Lease,
        handoff: &Handoff,
        now: DateTime<Utc>,
        limit: u32,
        per_url: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let lease_for = handoff.lease_for;
        dispatch!(self, backend => backend.claim_due_deliveries(lease, Some(handoff), now, lease_for, limit, per_url).await)
    }

    /// Records the outcome of an attempt that ended at `now` after `took`, and releases the
    /// lease; the attempt joins the delivery's `webhook_attempts` in the same transaction.
    /// Returns `false` (and writes nothing) when the lease is no longer ours or the delivery is
    /// no longer pending.
    pub async fn record_attempt(
        &self,
        lease: &Lease,
        id: i64,
        now: DateTime<Utc>,
        took: Duration,
        record: &AttemptRecord,
    ) -> Result<bool, sqlx::Error> {
        dispatch!(self, backend => backend.record_attempt(lease, id, now, took, record).await)
    }

    /// Releases every delivery lease whose owner starts with `owner_prefix`, making those
    /// deliveries due now (graceful shutdown hands unfinished attempts to the next start at once).
    pub async fn release_deliveries(&self, owner_prefix: &str, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        dispatch!(self, backend => backend.release_deliveries(owner_prefix, now).await)
    }

    /// Deliveries, newest first, optionally in one state.
    pub async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        dispatch!(self, backend => backend.list_deliveries(state, limit).await)
    }

    /// The delivery with this ID.
    pub async fn delivery(&self, id: i64) -> Result<Option<Delivery>, sqlx::Error> {
        dispatch!(self, backend => backend.delivery(id).await)
    }

    /// Queues a delivery for one more attempt now, with the same `webhook-id` and body, whatever
    /// its state. The attempt count is kept: a delivery that had used up its schedule gets
    /// exactly one more attempt, one that stopped early (410) resumes its schedule where it
    /// stopped, and a pending one is simply brought forward. An attempt in flight is left alone.
    pub async fn resend_delivery(&self, id: i64, now: DateTime<Utc>) -> Result<Resend, sqlx::Error> {
        dispatch!(self, backend => backend.resend_delivery(id, now).await)
    }

    /// The deliveries of one ticket, oldest first.
    pub async fn deliveries_of_ticket(&self, ticket: i64) -> Result<Vec<Delivery>, sqlx::Error> {
        dispatch!(self, backend => backend.deliveries_of_ticket(ticket).await)
    }
}
