//! The small HTTP/1.1 servers the agent runs (health, service health checks, metrics): bind as
//! Go's `net.Listen` does, serve every connection with one synchronous handler, stop when the
//! serving task is aborted (the listener and every connection with it).
//!
//! Unlike Go's server, they hold a bounded number of connections, and not for long: every
//! connection is a file descriptor, and so is every pipe to `iptables-restore` and every file
//! the agent reads, so clients that were let take them all would stop the node's syncs.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// What a handler answers.
pub(crate) type Reply = Response<Full<Bytes>>;

/// A request handler: called once per request, never blocks.
pub(crate) type Handler = Arc<dyn Fn(&Request<Incoming>) -> Reply + Send + Sync>;

/// How long a client may take to send a request's headers, and how long a kept-alive connection
/// may wait for its next request (hyper starts this timer again for each one). Go's server, as
/// upstream runs it, has no limit; 5 s is the default timeout of cloud load balancers' health
/// checks (GCP, AWS) and five times kubelet's probe timeout: a checker has given up on an answer
/// by then, and a client that stalls holds its connection slot no longer.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may last in all, however busy: hyper has no write timeout, so a
/// client that stops reading its answer would keep the connection otherwise. Three times
/// Prometheus' default scrape timeout (10 s); an answer is a few kilobytes.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The most connections one server holds at once, however high the open-file limit: far more
/// than the load balancers' checkers, probes and scrapers of one node keep open together.
const MAX_CONNECTIONS_PER_SERVER: usize = 1024;

/// How often refused connections are logged (with how many were refused since), at most.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How a server bounds its connections: a connection is served only while it holds one of
/// the server's slots and one of the process's, and for a limited time.
#[derive(Clone)]
pub(crate) struct Limits {
    server: Arc<Semaphore>,
    process: Arc<Semaphore>,
    header_read_timeout: Duration,
    lifetime: Duration,
}

impl Limits {
    /// `per_server` slots of its own for a new server, sharing the process's `process`, with
    /// the default timeouts.
    pub(crate) fn new(per_server: usize, process: Arc<Semaphore>) -> Self {
        Limits {
            server: Arc::new(Semaphore::new(per_server)),
            process,
            header_read_timeout: HEADER_READ_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
        }
    }

    /// A new server's limits, its slots sized on the soft open-file limit `L` when the first
    /// server started (the agent has raised it by then): a quarter of `L` per server (at most
    /// [`MAX_CONNECTIONS_PER_SERVER`]), half of `L` for every server's connections together.
    /// The other half is left for the listeners, restore pipes, netlink sockets and files: with
    /// 1,024 files, 256 connections per server and 512 in all.
    fn for_new_server() -> Self {
        static PROCESS: OnceLock<(usize, Arc<Semaphore>)> = OnceLock::new();
        let (per_server, process) = PROCESS.get_or_init(|| {
            let limit = crate::telemetry::fdlimit::open_file_limits()
                .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
                .unwrap_or(1024);
            let per_server = (limit / 4).clamp(1, MAX_CONNECTIONS_PER_SERVER);
            // Bounded: an unlimited soft limit must not ask the semaphore for more than it
            // holds.
            let process = (limit / 2).clamp(1, Semaphore::MAX_PERMITS.min(1 << 20));
            (per_server, Arc::new(Semaphore::new(process)))
        });
        Limits::new(*per_server, process.clone())
    }

    /// Both slots, or `None` when this server's or the process's are all taken.
    fn try_take(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let server = self.server.clone().try_acquire_owned().ok()?;
        let process = self.process.clone().try_acquire_owned().ok()?;
        Some((server, process))
    }
}

/// `Content-Type` of the JSON health answers.
pub(crate) const JSON: &str = "application/json";
/// `Content-Type` of Go's plain-text answers.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

/// A response with `status`, `content_type`, upstream's `X-Content-Type-Options: nosniff`, and
/// `body`.
pub(crate) fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(CONTENT_TYPE, v);
    }
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Go's `http.NotFound`: 404 `404 page not found`.
pub(crate) fn not_found() -> Reply {
    reply(404, TEXT, "404 page not found\n")
}

/// Binds a TCP listener on `addr` as Go's `net.Listen("tcp", addr)` does: an unspecified
/// address (`0.0.0.0` or `::`) listens on every address of both families (one dual-stack
/// socket; IPv4 only when the kernel has no IPv6), any other address on that address alone.
/// Must be called inside the runtime.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip().is_unspecified() {
        let any6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port());
        match listen(any6, true) {
            Ok(l) => return Ok(l),
            // No IPv6 in this kernel (or namespace): IPv4 alone, as Go falls back too.
            Err(e) if is_no_ipv6(&e) && addr.is_ipv4() => {}
            Err(e) => return Err(e),
        }
    }
    listen(addr, false)
}

fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn listen(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As Go: a restarted agent rebinds at once, whatever TIME_WAIT connections remain.
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        set_v6only(&socket, !dual_stack)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

fn set_v6only(socket: &TcpSocket, only: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = only.into();
    // SAFETY: setsockopt on a socket this function's caller owns, with a pointer to a c_int
    // that lives across the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Serves `listener` with `handler` until the returned task is aborted; aborting it closes the
/// listener and every connection it accepted (as Go's `Server.Close`).
pub(crate) fn spawn(listener: TcpListener, handler: Handler) -> JoinHandle<()> {
    spawn_with(listener, handler, Limits::for_new_server())
}

/// [`spawn`] with the connection limits `limits`. A connection that finds no free slot is closed
/// as soon as it is accepted rather than left waiting in the listen backlog: the server then
/// answers the next client as soon as a slot frees up, not after every connection queued
/// before it (an attacker's among them) has had its turn.
pub(crate) fn spawn_with(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        let mut refusals = Refusals::default();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match limits.try_take() {
                        Some(permits) => {
                            let served = serve_connection(stream, handler.clone(), &limits, permits);
                            connections.spawn(served);
                        }
                        None => {
                            drop(stream);
                            refusals.note(&listener, connections.len());
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors and the like: back off, as Go's server does.
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// Connections closed for want of a slot, logged at most every [`REFUSED_LOG_INTERVAL`]: a
/// flood of them must not flood the log too.
#[derive(Default)]
struct Refusals {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl Refusals {
    /// One more refused on `listener`, which has `open` connections.
    fn note(&mut self, listener: &TcpListener, open: usize) {
        self.since_logged += 1;
        if self
            .logged_at
            .is_some_and(|t| t.elapsed() < REFUSED_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            address = ?listener.local_addr().ok(),
            refused = self.since_logged,
            open,
            "too many HTTP connections open; closing new ones unanswered"
        );
        self.since_logged = 0;
        self.logged_at = Some(Instant::now());
    }
}

/// Serves one connection within `limits`' timeouts, holding its `slots` until it is closed.
fn serve_connection(
    stream: TcpStream,
    handler: Handler,
    limits: &Limits,
    slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> impl Future<Output = ()> + Send + 'static {
    let (header_read_timeout, lifetime) = (limits.header_read_timeout, limits.lifetime);
    async move {
        let _slots = slots;
        serve_within(stream, handler, header_read_timeout, lifetime).await;
    }
}

async fn serve_within(
    stream: TcpStream,
    handler: Handler,
    header_read_timeout: Duration,
    lifetime: Duration,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = handler(&req);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // A client that sends its request and then shuts its write side down (`printf … |
        // socat`, `nc -N`, some load-balancer checkers) still reads the answer: without this,
        // hyper takes that EOF for an aborted request and closes without answering whenever it
        // notices the EOF before it has written the answer. Go's server answers such clients.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    if tokio::time::timeout(lifetime, conn.as_mut()).await.is_ok() {
        return;
    }
    // Past its lifetime: finish the answer under way, if any, then close; a client that does
    // not read it is cut off.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(header_read_timeout, conn).await;
}

/// Binds `addr` and serves it with `handler`, retrying the bind every 5 s in the background
/// when it fails (upstream's `wait.Until(…, 5*time.Second)` without `--bind-address-hard-fail`).
/// Returns the bound address when the first attempt succeeded.
pub(crate) fn serve_retrying(
    what: &'static str,
    addr: SocketAddr,
    handler: Handler,
) -> Option<SocketAddr> {
    match bind(addr) {
        Ok(listener) => {
            let local = listener.local_addr().ok();
            tracing::info!(address = %addr, "serving {what}");
            spawn(listener, handler);
            local
        }
        Err(e) => {
            tracing::error!(address = %addr, error = %e, "cannot serve {what}; retrying every 5s");
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if let Ok(listener) = bind(addr) {
                        tracing::info!(address = %addr, "serving {what}");
                        spawn(listener, handler);
                        return;
                    }
                }
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn server(limits: Limits) -> SocketAddr {
        server_with(limits, Arc::new(|_| reply(200, TEXT, "ok")))
    }

    fn server_with(limits: Limits, handler: Handler) -> SocketAddr {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        spawn_with(listener, handler, limits);
        addr
    }

    /// A connection that sent part of a request: it holds a slot until the header timeout.
    async fn partial(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        s
    }

    /// Whether a whole request on a new connection is answered (rather than the connection
    /// closed unanswered).
    async fn answered(addr: SocketAddr) -> bool {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if s.write_all(request).await.is_err() {
            return false;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out.starts_with(b"HTTP/1.1 200 OK")
    }

    /// Connections past a server's slots, or past the process's, are closed unanswered; a slot
    /// freed is taken by the next client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_slots_are_closed_at_once() {
        let process = Arc::new(Semaphore::new(3));
        let a = server(Limits::new(2, process.clone()));
        let b = server(Limits::new(2, process.clone()));

        // a's two slots taken (the listen backlog is accepted in order): the next is refused.
        let first = partial(a).await;
        let _second = partial(a).await;
        assert!(!answered(a).await, "past a's own slots");
        // b has slots of its own, but the process has one left: one client holds it.
        let _third = partial(b).await;
        assert!(!answered(b).await, "past the process's slots");

        // One of a's clients leaves: its slots go to the next client, of either server.
        drop(first);
        let mut tries = 0;
        while !answered(b).await {
            tries += 1;
            assert!(tries < 200, "the freed slot was never reused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client that sends a request and never reads the (large) answer loses its connection,
    /// and its slot, once the connection's lifetime is over; so does one that stalls in its
    /// headers, after the header timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_clients_lose_their_slot() {
        let mut limits = Limits::new(1, Arc::new(Semaphore::new(1)));
        limits.header_read_timeout = Duration::from_millis(200);
        limits.lifetime = Duration::from_millis(300);
        // Far more than the socket buffers hold: the write stalls while the client does not
        // read.
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        let addr = server_with(limits, Arc::new(move |_| reply(200, TEXT, big.clone())));
        let eventually_answered = || async {
            let mut tries = 0;
            loop {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let request = b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                let mut out = Vec::new();
                if s.write_all(request).await.is_ok() {
                    let _ = s.read_to_end(&mut out).await;
                }
                if out.starts_with(b"HTTP/1.1 200 OK") {
                    return;
                }
                tries += 1;
                assert!(tries < 600, "the stalled client kept its slot");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };

        let mut reader = TcpStream::connect(addr).await.unwrap();
        reader
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        eventually_answered().await;
        drop(reader);

        let _stalled = partial(addr).await;
        eventually_answered().await;
    }
}
