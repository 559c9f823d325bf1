//! [`ChangeProbe`]: a cheap way to notice that another connection (another program, or the
//! daemon's own writer) committed to the database, without reading any table. On SQLite it asks
//! `PRAGMA data_version` on a connection of its own.

use super::{Backend, Store, sqlite};

/// Notices commits by other connections. Opened by [`Store::change_probe`]; the state at opening
/// is the baseline.
#[derive(Debug)]
pub struct ChangeProbe {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Sqlite(sqlite::changes::DataVersion),
}

impl ChangeProbe {
    /// Whether any other connection committed since the probe was opened or last asked. One
    /// `PRAGMA data_version` on an idle connection: no table is read.
    pub async fn changed(&mut self) -> Result<bool, sqlx::Error> {
        match &mut self.inner {
            Inner::Sqlite(probe) => probe.changed().await,
        }
    }

    /// Closes the probe's connection.
    pub async fn close(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Sqlite(probe) => probe.close().await,
        }
    }
}

impl Store {
    /// Opens a [`ChangeProbe`] on a connection of its own, with the current state as its
    /// baseline.
    pub async fn change_probe(&self) -> Result<ChangeProbe, sqlx::Error> {
        let inner = match &self.backend {
            Backend::Sqlite(backend) => Inner::Sqlite(backend.change_probe().await?),
        };
        Ok(ChangeProbe { inner })
    }
}
