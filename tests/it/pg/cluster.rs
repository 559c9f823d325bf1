//! PostgreSQL clusters of a test's own, for what the shared server must not go through: a real
//! failover. [`Cluster::primary`] runs `initdb` and starts a server on a free loopback port in
//! the scratch dir `.ci/postgres` exports; [`Cluster::standby`] clones it with
//! `pg_basebackup -R` (a streaming standby) onto another port; [`Cluster::promote`] makes that
//! standby the primary. Under root the server tools run as the server's OS user (initdb refuses
//! root). Dropping a cluster stops it at once and removes its files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use sqlx::Connection as _;

/// Where the server tools are, from the variables `.ci/postgres` exports.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    bin: PathBuf,
    scratch: PathBuf,
    os_user: Option<String>,
}

/// A running cluster of this test's own.
pub(crate) struct Cluster {
    tools: Tools,
    data: PathBuf,
    port: u16,
}

/// The server tools, or `None` (after one skip line) when the scratch variables are not set;
/// under `CI=true` that is a failure.
pub(crate) fn tools() -> Option<Tools> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let (bin, scratch) =
        match (variable("FLINK_TICKETD_TEST_POSTGRES_BIN"), variable("FLINK_TICKETD_TEST_POSTGRES_SCRATCH")) {
            (Some(bin), Some(scratch)) => (PathBuf::from(bin), PathBuf::from(scratch)),
            _ => {
                assert!(
                    !super::under_ci(),
                    "FLINK_TICKETD_TEST_POSTGRES_BIN and _SCRATCH are not set but CI=true \
                     (run the tests under `bash .ci/postgres cargo test --locked`)"
                );
                eprintln!("skipped: no PostgreSQL server binaries (run `bash .ci/postgres cargo test --locked`)");
                return None;
            }
        };
    Some(Tools { bin, scratch, os_user: variable("FLINK_TICKETD_TEST_POSTGRES_OS_USER") })
}

impl Cluster {
    /// A new primary: `initdb`, then started on a free loopback port (trust authentication,
    /// loopback only, fsync off, replication allowed).
    pub(crate) async fn primary(tools: &Tools) -> Cluster {
        let base = tools.scratch.join(unique_name());
        let data = base.join("primary");
        let cluster = Cluster { tools: tools.clone(), data, port: 0 };
        let data_arg = cluster.data.display().to_string();
        run(cluster.tool("initdb", &["-D", &data_arg, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]))
            .await;
        cluster.start().await
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started on a port of its own.
    pub(crate) async fn standby(&self) -> Cluster {
        let data = self.data.with_file_name(format!("standby-{}", unique_name()));
        let standby = Cluster { tools: self.tools.clone(), data, port: 0 };
        let source = format!("host=127.0.0.1 port={} user=postgres", self.port);
        let data_arg = standby.data.display().to_string();
        run(standby.tool("pg_basebackup", &["-D", &data_arg, "-d", &source, "-R", "-X", "stream", "-c", "fast"])).await;
        standby.start().await
    }

    /// Ends recovery: the standby becomes a primary that takes writes (waits until it does).
    pub(crate) async fn promote(&self) {
        run(self.tool("pg_ctl", &["promote", "-w", "-t", "60", "-D", &self.data.display().to_string()])).await;
    }

    /// Stops the server (fast shutdown: open sessions are ended).
    pub(crate) async fn stop(&self) {
        run(self.tool("pg_ctl", &["stop", "-w", "-t", "60", "-m", "fast", "-D", &self.data.display().to_string()]))
            .await;
    }

    /// Where the server listens.
    pub(crate) fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A superuser URL of `database` on this server.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` on `database` on a connection of its own.
    pub(crate) async fn execute(&self, database: &str, sql: &str) {
        let mut connection =
            sqlx::PgConnection::connect(&self.url(database)).await.expect("a connection to the cluster");
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
        connection.close().await.expect("the connection closes");
    }

    async fn start(mut self) -> Cluster {
        for _ in 0..3 {
            self.port = free_port();
            let socket_dir = self.data.parent().expect("the data dir has a parent").display().to_string();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={socket_dir} -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 -c timezone=UTC",
                self.port
            );
            let log = self.data.with_extension("log").display().to_string();
            let data = self.data.display().to_string();
            let pg_ctl = self.tool("pg_ctl", &["start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options]);
            if output(pg_ctl).await.status.success() {
                return self;
            }
        }
        let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        panic!("the test cluster in {} did not start:\n{log}", self.data.display());
    }

    /// A command running server tool `name` with `args`, as the server's OS user when there is
    /// one.
    fn tool(&self, name: &str, args: &[&str]) -> Command {
        let program = self.tools.bin.join(name);
        let mut command = match &self.tools.os_user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.args(args);
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let data = self.data.display().to_string();
            let _ = self.tool("pg_ctl", &["stop", "-m", "immediate", "-D", &data]).output();
        }
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
        if let Some(base) = self.data.parent() {
            // Removed with the last cluster of the test only: it fails while another's files remain.
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// Runs `command` off the async runtime and panics with its output when it fails.
async fn run(command: Command) {
    let shown = format!("{command:?}");
    let output = output(command).await;
    assert!(
        output.status.success(),
        "{shown} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn output(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("the server tool runs")).await.expect("joins")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!("cluster-{}-{}-{nanos:09}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::{Cluster, tools};

    #[tokio::test]
    async fn a_promoted_standby_has_the_primarys_rows_and_takes_writes_after_the_primary_stops() {
        let Some(tools) = tools() else { return };
        let primary = Cluster::primary(&tools).await;
        primary
            .execute("postgres", "CREATE TABLE replicated (id int PRIMARY KEY); INSERT INTO replicated VALUES (1)")
            .await;
        let standby = primary.standby().await;
        let mut reader = sqlx::PgConnection::connect(&standby.url("postgres")).await.expect("the standby answers");
        let in_recovery: bool =
            sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut reader).await.expect("read");
        assert!(in_recovery, "a fresh standby is in recovery");
        let refused = sqlx::raw_sql("INSERT INTO replicated VALUES (2)").execute(&mut reader).await;
        let code = refused
            .expect_err("a standby refuses writes")
            .into_database_error()
            .and_then(|error| error.code().map(|code| code.into_owned()));
        assert_eq!(code.as_deref(), Some("25006"), "read_only_sql_transaction");

        primary.stop().await;
        standby.promote().await;
        standby.execute("postgres", "INSERT INTO replicated VALUES (2)").await;
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM replicated").fetch_one(&mut reader).await.expect("read");
        assert_eq!(rows, 2, "the promoted standby kept the primary's row and took a new one");
    }
}
