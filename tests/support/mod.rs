//! Shared helpers for the integration tests: real hyper backends on loopback, a port that
//! refuses connections, and a bounded "wait until".

#![allow(dead_code)] // each test binary uses a different subset

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The HTTP version the request arrived with.
    pub version: Version,
    /// The request URI as the server parsed it (origin-form for HTTP/1, absolute for HTTP/2).
    pub uri: Uri,
    /// Every `Host` header value, in order.
    pub hosts: Vec<String>,
    /// The server-side address of the TCP connection (the address the client dialed).
    pub local: SocketAddr,
}

#[derive(Debug, Default)]
struct State {
    connections: AtomicUsize,
    requests: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// Notified whenever a request arrives (before any delay).
    arrived: Notify,
}

/// A real hyper server on 127.0.0.1 (HTTP/1.1 and h2c on one port, via hyper-util's `auto`
/// builder). It answers every request with `200` and its name as the body; a path starting with
/// `/slow` is answered after [`SLOW`]. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

/// How long a `/slow` request takes.
pub const SLOW: Duration = Duration::from_millis(200);

impl Backend {
    /// Binds the listener before returning, so clients can connect at once.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let name = name.to_owned();
        let accept = tokio::spawn(accept_loop(listener, name.clone(), Arc::clone(&state)));
        Backend {
            addr,
            name,
            state,
            accept,
        }
    }

    /// Starts `n` backends named `b0`, `b1`, ...
    pub async fn start_n(n: usize) -> Vec<Backend> {
        let mut backends = Vec::with_capacity(n);
        for i in 0..n {
            backends.push(Backend::start(&format!("b{i}")).await);
        }
        backends
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Waits (up to 1 s) until the backend has received at least `n` requests.
    pub async fn wait_for_requests(&self, n: usize) {
        let waited = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let arrived = self.state.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.requests() >= n {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "backend {} got {} requests, expected {n}",
            self.name,
            self.requests()
        );
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, name: String, state: Arc<State>) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            return;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let local = tcp.local_addr().expect("local addr");
        let name = name.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                handle(req, name.clone(), local, Arc::clone(&state))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    name: String,
    local: SocketAddr,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let hosts = req
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-utf8>").to_owned())
        .collect();
    state.seen.lock().unwrap().push(Seen {
        version: req.version(),
        uri: req.uri().clone(),
        hosts,
        local,
    });
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.arrived.notify_waiters();
    if req.uri().path().starts_with("/slow") {
        tokio::time::sleep(SLOW).await;
    }
    Ok(Response::new(Full::new(Bytes::from(name))))
}

/// A loopback port that refuses connections: bound, never listening. Keep the socket alive for
/// the whole test, so no other test can take the port.
pub fn refusing_port() -> (TcpSocket, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind without listen");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}

/// Polls `condition` until it holds, yielding to other tasks between checks; panics after 1 s.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(1), async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// Awaits `future` for at most 2 s, so a hang fails the test instead of stalling it.
pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(2), future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} took longer than 2 s"),
    }
}
