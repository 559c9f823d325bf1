//! [`ChangeProbe`]: a cheap way to notice that another connection (another program, or the
//! daemon's own writer) committed to the database, without reading any table. On SQLite it asks
//! `PRAGMA data_version` on a connection of its own; on PostgreSQL it `LISTEN`s for the insert
//! trigger's notifications (or, with `database.listen` off, never fires: the safety timer finds
//! new rows).

use std::time::Duration;

use super::{Backend, Store, postgres, sqlite};

/// Notices commits by other connections. Opened by [`Store::change_probe`]; the state at opening
/// is the baseline.
#[derive(Debug)]
pub struct ChangeProbe {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Sqlite(sqlite::changes::DataVersion),
    Postgres(postgres::listen::Listener),
    /// Listening is off.
    Never,
}

impl ChangeProbe {
    /// Whether any other connection committed since the probe was opened or last asked. One
    /// `PRAGMA data_version` on an idle connection: no table is read.
    pub async fn changed(&mut self) -> Result<bool, sqlx::Error> {
        match &mut self.inner {
            Inner::Sqlite(probe) => probe.changed().await,
            Inner::Postgres(listener) => match tokio::time::timeout(Duration::ZERO, listener.next_change()).await {
                Ok(result) => result.map(|()| true),
                Err(_) => Ok(false),
            },
            Inner::Never => Ok(false),
        }
    }

    /// Resolves at the next commit by another connection: on SQLite by asking every `interval`,
    /// on PostgreSQL at the next notification (or a reconnect of the listener, after which the
    /// caller must look, since notifications sent meanwhile are lost). Never resolves when
    /// listening is off.
    pub async fn next_change(&mut self, interval: Duration) -> Result<(), sqlx::Error> {
        match &mut self.inner {
            Inner::Sqlite(probe) => loop {
                tokio::time::sleep(interval).await;
                if probe.changed().await? {
                    return Ok(());
                }
            },
            Inner::Postgres(listener) => listener.next_change().await,
            Inner::Never => std::future::pending().await,
        }
    }

    /// Closes the probe's connection.
    pub async fn close(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Sqlite(probe) => probe.close().await,
            Inner::Postgres(_) | Inner::Never => Ok(()),
        }
    }
}

impl Store {
    /// Opens a [`ChangeProbe`] on a connection of its own, with the current state as its
    /// baseline.
    pub async fn change_probe(&self) -> Result<ChangeProbe, sqlx::Error> {
        let inner = match &self.backend {
            Backend::Sqlite(backend) => Inner::Sqlite(backend.change_probe().await?),
            Backend::Postgres(backend) => match backend.listener().await? {
                Some(listener) => Inner::Postgres(listener),
                None => Inner::Never,
            },
        };
        Ok(ChangeProbe { inner })
    }
}
