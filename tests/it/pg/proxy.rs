//! A TCP proxy on 127.0.0.1 in front of PostgreSQL, for the network faults a daemon must live
//! through: it forwards, cuts every open connection at once, or blackholes (accepts and forwards
//! nothing, in either direction, as a half-open partition does: nothing is closed, nothing
//! arrives), and can be pointed at another server for a failover. One trap goes deeper: cut a
//! connection right after it sends the `COMMIT` of a transaction that touched a given table, once
//! the server has answered it, so the client never learns whether it committed.
//!
//! Blackholing holds bytes rather than dropping them: when traffic flows again, what was sent
//! arrives late, as TCP's retransmissions make it do after a real partition heals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The proxy; dropping it closes the listener and every connection through it.
pub(crate) struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Bytes flow both ways.
    Forward,
    /// Connections are accepted (and open ones kept), but no byte moves either way.
    Blackhole,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds a loopback port");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            mode: watch::channel(Mode::Forward).0,
            cuts: watch::channel(0).0,
            trap: Mutex::new(None),
            trapped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&shared), shutdown.clone()));
        Proxy { address, shared, shutdown }
    }

    /// Where clients connect.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// `url` (a `postgres://` URL) with its host and port replaced by the proxy's.
    pub(crate) fn url_for(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a database URL");
        url.set_host(Some(&self.address.ip().to_string())).expect("an IP host");
        url.set_port(Some(self.address.port())).expect("a port");
        url.to_string()
    }

    /// Bytes flow again (also what was held while blackholed).
    pub(crate) fn forward(&self) {
        self.shared.mode.send_replace(Mode::Forward);
    }

    /// No byte moves from now on, on open connections and on new ones, until [`Proxy::forward`].
    pub(crate) fn blackhole(&self) {
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Closes every open connection now (both sides see the close); new ones are served as usual.
    pub(crate) fn cut(&self) {
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// New connections go to `upstream` from now on; open ones stay where they are.
    pub(crate) fn repoint(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().expect("not poisoned") = upstream;
    }

    /// Arms a one-shot trap: the next transaction (from `BEGIN`) whose statements name `marker`
    /// has its connection cut right after its `COMMIT` is sent, as soon as the server answers
    /// it; the answer is never delivered. A statement the client prepared earlier on the same
    /// connection is sent without its text, so the marker must appear in the text sent.
    pub(crate) fn cut_after_commit_of(&self, marker: &str) {
        *self.shared.trap.lock().expect("not poisoned") = Some(marker.as_bytes().to_vec());
    }

    /// How many connections the commit trap cut.
    pub(crate) fn commits_cut(&self) -> u64 {
        self.shared.trapped.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub(crate) fn open(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    mode: watch::Sender<Mode>,
    /// Bumped by every [`Proxy::cut`]; each connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// The armed commit trap's marker.
    trap: Mutex<Option<Vec<u8>>>,
    trapped: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
}

/// One connection's state of the commit trap.
#[derive(Default)]
struct Watch {
    /// The client sent the trap's marker since its last `BEGIN`.
    marked: bool,
    /// The last bytes of the previous chunk, so a pattern split across reads is still seen.
    tail: Vec<u8>,
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.open.fetch_add(1, Ordering::SeqCst);
        let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
        tokio::spawn(async move {
            let mut cuts = shared.cuts.subscribe();
            cuts.mark_unchanged();
            tokio::select! {
                () = serve(client, &shared) => {}
                _ = cuts.changed() => {}
                () = shutdown.cancelled() => {}
            }
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Forwards one connection until either side closes or the trap fires. Both sockets close when
/// this returns (or when a cut drops it).
async fn serve(client: TcpStream, shared: &Shared) {
    // A blackholed proxy accepts but does not even reach the server until traffic flows again.
    wait_for_forwarding(&mut shared.mode.subscribe()).await;
    let upstream = *shared.upstream.lock().expect("not poisoned");
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let committed = AtomicBool::new(false);
    let outbound = async {
        let mut mode = shared.mode.subscribe();
        let mut watch = Watch::default();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            wait_for_forwarding(&mut mode).await;
            let Ok(read) = client_read.read(&mut buffer).await else { return };
            if read == 0 {
                return;
            }
            // Bytes read just before a blackhole are held until it lifts.
            wait_for_forwarding(&mut mode).await;
            if spring_trap(shared, &mut watch, &buffer[..read]) {
                // Set before the COMMIT leaves, so whatever the server says next is its answer.
                committed.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    let inbound = async {
        let mut mode = shared.mode.subscribe();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            wait_for_forwarding(&mut mode).await;
            let Ok(read) = server_read.read(&mut buffer).await else { return };
            if read == 0 {
                return;
            }
            if committed.load(Ordering::SeqCst) {
                // The server has handled the COMMIT: the client never hears how it went.
                shared.trapped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            wait_for_forwarding(&mut mode).await;
            if client_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
    }
}

/// Follows the client's statements for the armed trap; true when `chunk` carries the `COMMIT`
/// that springs it (the trap is then disarmed).
fn spring_trap(shared: &Shared, watch: &mut Watch, chunk: &[u8]) -> bool {
    let mut trap = shared.trap.lock().expect("not poisoned");
    let Some(marker) = trap.as_ref() else {
        watch.tail.clear();
        return false;
    };
    let mut text = std::mem::take(&mut watch.tail);
    let seen = text.len();
    text.extend_from_slice(chunk);
    // The statements in this chunk, in order: a BEGIN starts over, the marker marks the
    // transaction, and a COMMIT after the marker springs the trap. A match lying wholly in the
    // previous chunk's tail was counted then.
    let mut events: Vec<(usize, u8)> = Vec::new();
    for (pattern, event) in [(&b"BEGIN"[..], b'b'), (marker.as_slice(), b'm'), (&b"COMMIT\0"[..], b'c')] {
        let new = find_all(&text, pattern).into_iter().filter(|at| at + pattern.len() > seen);
        events.extend(new.map(|at| (at, event)));
    }
    events.sort_unstable();
    let mut sprung = false;
    for (_, event) in events {
        match event {
            b'b' => watch.marked = false,
            b'm' => watch.marked = true,
            _ if watch.marked => sprung = true,
            _ => {}
        }
    }
    let keep = marker.len().max(b"COMMIT\0".len()).saturating_sub(1).min(text.len());
    watch.tail = text[text.len() - keep..].to_vec();
    if sprung {
        *trap = None;
        watch.marked = false;
    }
    sprung
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    (0..=haystack.len() - needle.len()).filter(|&at| &haystack[at..at + needle.len()] == needle).collect()
}

async fn wait_for_forwarding(mode: &mut watch::Receiver<Mode>) {
    // An error means the proxy is gone; the connection ends with it.
    let _ = mode.wait_for(|mode| *mode == Mode::Forward).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Connection as _;

    use super::Proxy;
    use crate::harness::HANG;
    use crate::pg::{TestDatabase, database, server_address};

    async fn through(proxy: &Proxy, database: &TestDatabase) -> sqlx::PgConnection {
        let url = proxy.url_for(database.url());
        tokio::time::timeout(HANG, sqlx::PgConnection::connect(&url))
            .await
            .expect("no hang")
            .expect("a connection through the proxy")
    }

    async fn answer(connection: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
        tokio::time::timeout(HANG, sqlx::query_scalar::<_, i32>("SELECT 41 + 1").fetch_one(connection))
            .await
            .expect("no hang")
    }

    #[tokio::test]
    async fn the_proxy_forwards_and_a_cut_ends_every_open_connection_but_not_later_ones() {
        let Some(database) = database().await else { return };
        let proxy = Proxy::start(server_address(&database)).await;
        let mut first = through(&proxy, &database).await;
        let mut second = through(&proxy, &database).await;
        assert_eq!(answer(&mut first).await.expect("forwarded"), 42);
        assert_eq!(proxy.open(), 2);

        proxy.cut();
        assert!(answer(&mut first).await.is_err(), "a cut connection fails at once");
        assert!(answer(&mut second).await.is_err(), "every open connection is cut");
        let mut later = through(&proxy, &database).await;
        assert_eq!(answer(&mut later).await.expect("a new connection is served"), 42);
        assert_eq!(proxy.accepted(), 3);
    }

    #[tokio::test]
    async fn a_blackholed_proxy_accepts_but_moves_nothing_until_traffic_flows_again() {
        let Some(database) = database().await else { return };
        let proxy = Proxy::start(server_address(&database)).await;
        let mut open = through(&proxy, &database).await;
        proxy.blackhole();

        let held = tokio::spawn(async move { answer(&mut open).await.map(|value| (value, open)) });
        let url = proxy.url_for(database.url());
        let connecting = tokio::spawn(async move { sqlx::PgConnection::connect(&url).await });
        // The TCP handshake with the proxy succeeds: the partition is half-open, not refused.
        let _socket = tokio::net::TcpStream::connect(proxy.address()).await.expect("the proxy accepts");
        // What is being checked is an absence: bounded, and far above a loopback round trip.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "no answer crosses a blackhole");
        assert!(!connecting.is_finished(), "no new session starts across a blackhole");

        proxy.forward();
        let (value, mut open) = tokio::time::timeout(HANG, held).await.expect("no hang").expect("joins").expect("held");
        assert_eq!(value, 42, "the held query is answered once traffic flows");
        let mut fresh =
            tokio::time::timeout(HANG, connecting).await.expect("no hang").expect("joins").expect("connects");
        assert_eq!(answer(&mut fresh).await.expect("answered"), 42);
        assert_eq!(answer(&mut open).await.expect("answered"), 42);
    }

    #[tokio::test]
    async fn a_repointed_proxy_sends_new_connections_to_the_new_upstream() {
        let Some(database) = database().await else { return };
        let proxy = Proxy::start(server_address(&database)).await;
        let mut before = through(&proxy, &database).await;
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a second upstream");
        proxy.repoint(other.local_addr().expect("its address"));

        let _client = tokio::net::TcpStream::connect(proxy.address()).await.expect("the proxy accepts");
        let accepted = tokio::time::timeout(HANG, other.accept()).await.expect("no hang");
        accepted.expect("the new upstream got the connection");
        assert_eq!(answer(&mut before).await.expect("answered"), 42, "open connections stay where they were");
    }

    #[tokio::test]
    async fn the_commit_trap_cuts_the_connection_once_the_server_has_committed() {
        let Some(database) = database().await else { return };
        database.execute("CREATE TABLE marked (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)").await;
        let proxy = Proxy::start(server_address(&database)).await;
        let mut connection = through(&proxy, &database).await;
        proxy.cut_after_commit_of("marked");

        // A transaction that does not name the marker commits as usual.
        let mut transaction = connection.begin().await.expect("begins");
        sqlx::query("INSERT INTO other VALUES (1)").execute(&mut *transaction).await.expect("inserted");
        transaction.commit().await.expect("an unmarked transaction commits normally");

        let mut transaction = connection.begin().await.expect("begins");
        sqlx::query("INSERT INTO marked VALUES (7)").execute(&mut *transaction).await.expect("inserted");
        let committed = tokio::time::timeout(HANG, transaction.commit()).await.expect("no hang");
        assert!(committed.is_err(), "the client never hears that its COMMIT went through");
        assert_eq!(proxy.commits_cut(), 1);

        let mut direct = database.connect().await;
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM marked WHERE id = 7").fetch_one(&mut direct).await.expect("read");
        assert_eq!(rows, 1, "the server committed what the client could not confirm");

        // The trap is one-shot: the next marked transaction commits normally.
        let mut again = through(&proxy, &database).await;
        let mut transaction = again.begin().await.expect("begins");
        sqlx::query("INSERT INTO marked VALUES (8)").execute(&mut *transaction).await.expect("inserted");
        transaction.commit().await.expect("commits");
        assert_eq!(proxy.commits_cut(), 1);
    }
}
