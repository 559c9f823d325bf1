//! `LISTEN flink_ticketd_tickets`: the insert trigger's notifications wake the daemon at once.
//! The listener reconnects by itself (re-subscribing); a reconnect counts as a change, so the
//! daemon claims once to catch up on whatever was inserted while it was away.

use super::PgStore;

/// The channel the migrations' trigger notifies.
pub(in crate::store) const CHANNEL: &str = "flink_ticketd_tickets";

/// A connection of its own, listening.
pub(in crate::store) struct Listener {
    listener: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Listener")
    }
}

impl Listener {
    /// Resolves at the next notification (taking every one already buffered with it), or once
    /// the connection was lost and opened again (whatever was notified meanwhile is lost, so the
    /// caller must look).
    pub(in crate::store) async fn next_change(&mut self) -> Result<(), sqlx::Error> {
        if self.listener.try_recv().await?.is_none() {
            tracing::info!("listening for new tickets again after the connection was lost");
        }
        while self.listener.next_buffered().is_some() {}
        Ok(())
    }
}

impl PgStore {
    /// Opens a listener on a connection of its own, within the call timeout. `None` when
    /// `database.listen` is off.
    pub(in crate::store) async fn listener(&self) -> Result<Option<Listener>, sqlx::Error> {
        if !self.listen {
            return Ok(None);
        }
        let open = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.call_timeout, open).await {
            Ok(listener) => Ok(Some(Listener { listener: listener? })),
            Err(_) => Err(super::errors::timed_out(self.call_timeout)),
        }
    }
}
