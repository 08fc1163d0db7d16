//! The backends, in a child process of their own, so that their CPU time is measured apart from
//! the client's and they do not share the client's tokio runtime.
//!
//! The harness starts its own executable again with [`ROLE_VAR`] set; that process serves
//! HTTP/1.1 and HTTP/2 (prior knowledge) on 127.0.0.1 and takes commands on stdin, one per line,
//! answering each with one line on stdout:
//!
//! | command | answer |
//! |---|---|
//! | `start <behaviour> ...` | `addrs <addr> ...`: new backends, numbered after the earlier ones |
//! | `counts` | `counts <n> ...`: requests each backend has received so far (for `hang`, connections accepted) |
//! | `stop <index>` | `stopped`: the backend closes its listener and its connections |
//!
//! Behaviours: `ok:<µs>` answers `200 ok` after that delay, `status:<code>` answers that status
//! at once, `refuse` is a port bound by nobody listening (connections are refused), `hang` accepts
//! connections and never reads from them. The process ends when its stdin closes, so it never outlives the harness.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::{JoinHandle, JoinSet};

/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Set in the environment of the harness's own executable when it runs as the backends.
pub const ROLE_VAR: &str = "PROXYLESS_LOAD_BACKENDS";

/// How a backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 ok` after this delay.
    Ok(Duration),
    /// This status at once.
    Status(u16),
    /// Nothing listens: connections are refused.
    Refuse,
    /// Connections are accepted and never read from.
    Hang,
}

impl Behaviour {
    fn spec(self) -> String {
        match self {
            Self::Ok(delay) => format!("ok:{}", delay.as_micros()),
            Self::Status(code) => format!("status:{code}"),
            Self::Refuse => "refuse".to_owned(),
            Self::Hang => "hang".to_owned(),
        }
    }

    fn parse(spec: &str) -> Option<Self> {
        match spec.split_once(':') {
            Some(("ok", micros)) => micros.parse().ok().map(Duration::from_micros).map(Self::Ok),
            Some(("status", code)) => code.parse().ok().map(Self::Status),
            None if spec == "refuse" => Some(Self::Refuse),
            None if spec == "hang" => Some(Self::Hang),
            _ => None,
        }
    }
}

/// The harness's handle on the backends' process.
pub struct Backends {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Every backend started so far, by index.
    pub addrs: Vec<SocketAddr>,
}

impl Backends {
    /// Starts the backends' process (no backends yet).
    pub fn spawn() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|error| format!("own executable: {error}"))?;
        let mut child = Command::new(exe)
            .env(ROLE_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("starting the backends' process: {error}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the backends' process has no pipes".to_owned());
        };
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            addrs: Vec::new(),
        })
    }

    async fn command(&mut self, line: &str, answer: &str) -> Result<Vec<String>, String> {
        let exchange = async {
            self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
            self.stdin.flush().await?;
            self.stdout.next_line().await
        };
        let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| format!("backends: no answer to `{line}` in 10 s"))?
            .map_err(|error| format!("backends: `{line}`: {error}"))?
            .ok_or_else(|| format!("backends: the process ended on `{line}`"))?;
        let mut words = reply.split_whitespace().map(str::to_owned);
        match words.next() {
            Some(word) if word == answer => Ok(words.collect()),
            _ => Err(format!("backends: `{line}` answered `{reply}`")),
        }
    }

    /// Starts one backend per behaviour; returns their addresses.
    pub async fn start(&mut self, behaviours: &[Behaviour]) -> Result<Vec<SocketAddr>, String> {
        let specs: Vec<String> = behaviours.iter().map(|b| b.spec()).collect();
        let words = self
            .command(&format!("start {}", specs.join(" ")), "addrs")
            .await?;
        let addrs = words
            .iter()
            .map(|word| word.parse().map_err(|_| format!("bad address `{word}`")))
            .collect::<Result<Vec<SocketAddr>, String>>()?;
        self.addrs.extend(&addrs);
        Ok(addrs)
    }

    /// Requests each backend has received so far, by index.
    pub async fn counts(&mut self) -> Result<Vec<u64>, String> {
        let words = self.command("counts", "counts").await?;
        words
            .iter()
            .map(|word| word.parse().map_err(|_| format!("bad count `{word}`")))
            .collect()
    }

    /// Stops backend `index`: its listener and connections close.
    pub async fn stop(&mut self, index: usize) -> Result<(), String> {
        self.command(&format!("stop {index}"), "stopped")
            .await
            .map(drop)
    }

    /// User + system CPU time of the backends' process so far.
    pub fn cpu(&self) -> Option<Duration> {
        crate::sidecar::process_cpu(self.child.id()?)
    }
}

/// The backends' process: serves until stdin closes.
pub fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("backends: tokio runtime: {error}");
            return;
        }
    };
    runtime.block_on(async {
        if let Err(error) = serve_commands().await {
            eprintln!("backends: {error}");
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
}

/// One running backend, as the backends' process keeps it.
struct Running {
    received: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
    /// A refusing backend's port, bound and not listening.
    _reserved: Option<TcpSocket>,
}

async fn serve_commands() -> std::io::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut running: Vec<Running> = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("start") => {
                let mut addrs = Vec::new();
                for spec in words {
                    let Some(behaviour) = Behaviour::parse(spec) else {
                        addrs.push(format!("bad-behaviour:{spec}"));
                        continue;
                    };
                    let (addr, backend) = start(behaviour).await?;
                    addrs.push(addr.to_string());
                    running.push(backend);
                }
                format!("addrs {}", addrs.join(" "))
            }
            Some("counts") => {
                let counts: Vec<String> = running
                    .iter()
                    .map(|backend| backend.received.load(Ordering::Relaxed).to_string())
                    .collect();
                format!("counts {}", counts.join(" "))
            }
            Some("stop") => {
                let backend = words
                    .next()
                    .and_then(|index| index.parse::<usize>().ok())
                    .and_then(|index| running.get_mut(index));
                match backend {
                    Some(backend) => {
                        if let Some(task) = backend.task.take() {
                            task.abort();
                        }
                        "stopped".to_owned()
                    }
                    None => format!("error: no backend `{line}`"),
                }
            }
            _ => format!("error: unknown command `{line}`"),
        };
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

async fn start(behaviour: Behaviour) -> std::io::Result<(SocketAddr, Running)> {
    let received = Arc::new(AtomicU64::new(0));
    if behaviour == Behaviour::Refuse {
        // Bound but not listening: connections are refused, and the port stays reserved so
        // that nothing else started later (a sidecar, another backend) can take it.
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        let running = Running {
            received,
            task: None,
            _reserved: Some(socket),
        };
        return Ok((addr, running));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = match behaviour {
        Behaviour::Refuse => None,
        Behaviour::Hang => Some(tokio::spawn(hang(listener, Arc::clone(&received)))),
        Behaviour::Ok(delay) => Some(tokio::spawn(serve(
            listener,
            Arc::clone(&received),
            Answer::Ok(delay),
        ))),
        Behaviour::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(tokio::spawn(serve(
                listener,
                Arc::clone(&received),
                Answer::Status(status),
            )))
        }
    };
    let running = Running {
        received,
        task,
        _reserved: None,
    };
    Ok((addr, running))
}

#[derive(Clone, Copy)]
enum Answer {
    Ok(Duration),
    Status(StatusCode),
}

/// Accepts connections until aborted; aborting drops the `JoinSet`, which ends the connections.
async fn serve(listener: TcpListener, received: Arc<AtomicU64>, answer: Answer) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin on a shared core.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let received = Arc::clone(&received);
        let service = service_fn(move |_request: Request<Incoming>| {
            received.fetch_add(1, Ordering::Relaxed);
            async move {
                let response = match answer {
                    Answer::Ok(delay) => {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Response::new(Full::new(Bytes::from_static(b"ok")))
                    }
                    Answer::Status(status) => {
                        let mut response = Response::new(Full::new(Bytes::from_static(b"failing")));
                        *response.status_mut() = status;
                        response
                    }
                };
                Ok::<_, Infallible>(response)
            }
        });
        connections.spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Accepts connections and holds them open without reading, until aborted. Counts connections:
/// an HTTP/1.1 request sent to it never frees its connection, so each request reaching it comes
/// on a new one.
async fn hang(listener: TcpListener, received: Arc<AtomicU64>) {
    let mut held = Vec::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                received.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}
