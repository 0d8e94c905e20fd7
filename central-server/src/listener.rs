//! The public listener: hyper's HTTP/1 connection driver with the limits a port on the
//! internet needs, which `axum::serve` does not set.
//!
//! - **Header-read timeout**: a client that does not finish its request head in time
//!   (slowloris) is disconnected.
//! - **Idle timeout**: a connection that moves no byte for `idle_timeout` is closed (after its
//!   request in flight, if any; a peer that stops reading a response is dropped after a
//!   second period).
//! - **Connection limit**, below the process's open-files limit: beyond it a connection gets
//!   one `503` with the contract's error body and `Retry-After`, and is closed, so the
//!   process never runs out of descriptors for its database pool or its own files.
//! - Errors hyper answers itself (a malformed request line, a head over its buffer) get the
//!   contract's `{code, message}` body too: see [`ErrorBodies`].
//!
//! Shutdown: stop accepting, ask every connection to finish its request in flight, and wait
//! (the caller bounds the wait with the grace period).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Largest request head hyper buffers (request line and headers); the router's own checks
/// answer smaller limits with a contract body first.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The connections a process may keep open: `configured` (0 = as many as the open-files
/// limit leaves after `reserved` descriptors for the database pool, logs and files), never
/// more than that limit allows.
pub fn connection_limit(configured: usize, reserved: usize) -> usize {
    let available = open_files_limit()
        .map(|limit| limit.saturating_sub(reserved as u64).max(16) as usize)
        .unwrap_or(1024);
    if configured == 0 {
        available
    } else {
        configured.min(available)
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `router` on `listener` until `stopping` turns true; then drains.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    on_refused: impl Fn() + Send + Sync + 'static,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = wait_true(&mut stopping) => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            on_refused();
            connections.spawn(refuse_busy(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        );
        let closing = closing.clone();
        connections.spawn(async move {
            serve_connection(stream, TowerToHyperService::new(service), limits, closing).await;
            drop(permit);
        });
    }
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection<S>(
    stream: TcpStream,
    service: TowerToHyperService<S>,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) where
    S: tower::Service<
            axum::extract::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(ErrorBodies::new(Watched {
        inner: stream,
        activity: activity.clone(),
    }));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = wait_true(&mut closing), if !asked_to_close => {
                connection.as_mut().graceful_shutdown();
                asked_to_close = true;
            }
            () = activity.idle_for(limits.idle_timeout) => {
                if asked_to_close {
                    // Asked once and still nothing moves: the peer stopped reading.
                    return;
                }
                connection.as_mut().graceful_shutdown();
                asked_to_close = true;
            }
        }
    }
}

/// Resolves when the flag turns (or already is) true, or its sender is gone.
async fn wait_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// The answer to a connection over the limit.
async fn refuse_busy(mut stream: TcpStream) {
    let body = format!(
        "{{\"code\":\"TOO_MANY_REQUESTS\",\"message\":\"{}\"}}",
        stile_shared::ApiCode::TooManyRequests.message(stile_shared::Lang::ZhCn)
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// When a connection last moved a byte.
#[derive(Debug, Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.since.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// A stream that records its activity.
struct Watched {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Gives hyper's own refusals the contract's body.
///
/// hyper answers a request it cannot parse (a malformed request line: 400; a URI or a head
/// too long: 414 / 431) by itself, with an empty body, before the router sees anything. The
/// router never sends an empty 400, 414 or 431 (every error it makes has a body), so a
/// response head with one of those statuses and `content-length: 0` is hyper's, and is
/// rewritten here into the same status with `{code, message}`.
struct ErrorBodies<T> {
    inner: T,
    /// A rewritten answer still being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ErrorBodies<T> {
    fn new(inner: T) -> ErrorBodies<T> {
        ErrorBodies {
            inner,
            pending: None,
        }
    }
}

/// The contract answer for one of hyper's empty refusals, if `head` is one.
fn contract_answer(head: &[u8]) -> Option<Vec<u8>> {
    // Every write passes here (response bodies too): look no further than the first bytes
    // unless they are one of the three status lines, and never validate a whole body.
    let status = head.get(..12)?;
    if !(status.starts_with(b"HTTP/1.") && matches!(&status[9..12], b"400" | b"414" | b"431")) {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, rest) = text.split_once("\r\n")?;
    let (code, message) = match status_line {
        "HTTP/1.1 400 Bad Request" | "HTTP/1.0 400 Bad Request" => {
            ("BAD_REQUEST", "request line or headers are malformed")
        }
        "HTTP/1.1 414 URI Too Long" | "HTTP/1.0 414 URI Too Long" => {
            ("BAD_REQUEST", "the request target is too long")
        }
        "HTTP/1.1 431 Request Header Fields Too Large"
        | "HTTP/1.0 431 Request Header Fields Too Large" => {
            ("BAD_REQUEST", "the request headers are too large")
        }
        _ => return None,
    };
    if !text.ends_with("\r\n\r\n") || !rest.to_ascii_lowercase().contains("content-length: 0\r\n") {
        return None;
    }
    let body = format!(
        "{{\"code\":\"{code}\",\"message\":\"{}: {message}\"}}",
        stile_shared::ApiCode::BadRequest.message(stile_shared::Lang::ZhCn)
    );
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodies<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> ErrorBodies<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            if *written == answer.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            if let Some(answer) = contract_answer(data) {
                self.pending = Some((answer, 0));
                return match self.poll_pending(cx) {
                    // The whole of hyper's head counts as written, whatever replaced it.
                    Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(data.len())),
                    Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                };
            }
        }
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_write(cx, data),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_refusals_are_rewritten() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 00:00:00 GMT\r\n\r\n";
        let answer =
            String::from_utf8(contract_answer(hyper_400).expect("rewritten")).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        let (_, body) = answer.split_once("\r\n\r\n").expect("body");
        let body: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(body["code"], "BAD_REQUEST");
        assert!(answer.contains(&format!("content-length: {}\r\n", body.to_string().len())));
        for status in ["414 URI Too Long", "431 Request Header Fields Too Large"] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            assert!(contract_answer(head.as_bytes()).is_some(), "{status}");
        }
        // The router's own answers have bodies and pass untouched.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 52\r\n\r\n";
        assert!(contract_answer(ours).is_none());
        assert!(contract_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(contract_answer(b"\xff\xfe").is_none());
    }

    #[test]
    fn the_connection_limit_stays_below_the_open_files_limit() {
        let limit = open_files_limit().expect("a Linux process has limits");
        let reserved = 64;
        assert!((connection_limit(0, reserved) as u64) <= limit.saturating_sub(64).max(16));
        assert_eq!(connection_limit(10, reserved), 10);
        assert!(connection_limit(usize::MAX, reserved) as u64 <= limit);
    }
}
