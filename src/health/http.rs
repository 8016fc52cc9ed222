//! The small HTTP/1.1 servers the agent runs (health, service health checks, metrics): bind as
//! Go's `net.Listen` does, serve every connection with one synchronous handler, stop when the
//! serving task is aborted (the listener and every connection with it).

use std::convert::Infallible;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// What a handler answers.
pub(crate) type Reply = Response<Full<Bytes>>;

/// A request handler: called once per request, never blocks.
pub(crate) type Handler = Arc<dyn Fn(&Request<Incoming>) -> Reply + Send + Sync>;

/// How long a client may take to send a request's headers (Go's server has no limit; a probe
/// that stalls should not hold a connection for ever).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        connections.spawn(serve_connection(stream, handler));
                    }
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

async fn serve_connection(stream: tokio::net::TcpStream, handler: Handler) {
    let service = service_fn(move |req: Request<Incoming>| {
        let response = handler(&req);
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // A client that sends its request and then shuts its write side down (`printf … |
        // socat`, `nc -N`, some load-balancer checkers) still reads the answer: without this,
        // hyper takes that EOF for an aborted request and closes without answering whenever it
        // notices the EOF before it has written the answer. Go's server answers such clients.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
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
