//! Sidecar proxies for the load test: haproxy or nginx on 127.0.0.1, between the load client and
//! the backends, to measure what an extra loopback hop through a proxy costs compared with
//! balancing inside the client.
//!
//! This module uses the standard library only, so its tests run without cargo:
//!
//! ```text
//! rustc --edition 2024 --test benches/load/sidecar.rs -o /tmp/sidecar-test && /tmp/sidecar-test
//! ```
//!
//! # Installing the proxies
//!
//! `benches/sidecars.sh` installs haproxy and nginx with apt (Debian and Ubuntu) when they are
//! missing, stops the system services the packages may start, prints the versions and runs
//! `cargo bench --bench load`. By hand: `apt-get install -y --no-install-recommends haproxy nginx`.
//! The binaries are looked up in `PATH`, then in `/usr/sbin`, `/usr/local/sbin` and `/sbin`.
//! Without them [`Sidecar::start`] returns an error and [`installed`] returns `false`.
//!
//! # What each sidecar runs with
//!
//! Both proxies get one worker (haproxy `nbthread 1`, nginx `worker_processes 1`): a sidecar is
//! usually given a budget of about one CPU next to the application it serves, and one worker
//! keeps the CPU figures of the two proxies comparable. Each uses its own best balancing
//! algorithm, keeps connections to the backends alive, logs nothing (nginx writes only errors,
//! into its temporary directory) and listens on `127.0.0.1:<free port>`. Upstream connections are
//! always HTTP/1.1; [`Options::http2`] only changes what the listener speaks.
//!
//! **haproxy** (`haproxy -db -f <dir>/haproxy.cfg`, one process):
//!
//! - `balance random(2)`: power of two choices on the servers' in-flight requests;
//! - `http-reuse always` and `option http-keep-alive`: idle backend connections are shared;
//! - passive failure handling `observe layer7 error-limit 3 on-error mark-down` on every server,
//!   which requires active checks: `option httpchk GET /` with `check inter 1s fall 3 rise 2`
//!   (each backend therefore also sees one `GET /` per second);
//! - `timeout connect 1s`, `timeout server` = the per-try timeout (30 s without one);
//! - retries on: `retries 2`, `option redispatch 1` and
//!   `retry-on conn-failure empty-response response-timeout 502 503 504`, with L7 retries
//!   disabled for methods that are not idempotent; retries off: `retries 0`;
//! - HTTP/2: `bind ... proto h2` (HTTP/2 with prior knowledge, cleartext).
//!
//! **nginx** (`nginx -p <dir>/ -c <dir>/nginx.conf -e <dir>/error.log`, a master and one
//! worker; `-e` needs nginx 1.19.5 or later):
//!
//! - `random two least_conn`: power of two choices on the servers' open connections;
//! - `keepalive 64` in the upstream with `proxy_http_version 1.1` and
//!   `proxy_set_header Connection ""`; `keepalive_requests 1000000` on both sides so that no
//!   connection is closed after nginx's default of 1000 requests;
//! - passive failure handling `max_fails=3 fail_timeout=5s` on every server (no active checks:
//!   they are not in open-source nginx);
//! - `proxy_connect_timeout 1s`, `proxy_read_timeout` = the per-try timeout (30 s without one);
//! - `proxy_next_upstream error timeout http_502 http_503 http_504` (which also defines what
//!   counts towards `max_fails`), with `proxy_next_upstream_tries 3` when retries are on and `1`
//!   when they are off; nginx never retries a non-idempotent request it has already sent;
//! - HTTP/2: `listen ... http2` without TLS, which is HTTP/2 with prior knowledge only;
//! - `daemon off`, and the pid file, error log and every `*_temp_path` in the temporary
//!   directory, so nothing is written to `/var/log`, `/var/lib/nginx` or `/run`, also as root.
//!
//! [`process_cpu`] reads one process's CPU time the same way, for the client and the backends.
//!
//! [`Sidecar::cpu`] reads `utime + stime` of the proxy and of all its descendants (the nginx
//! worker) from `/proc/<pid>/stat`, in ticks of 1/100 s, so it is a Linux-only figure.

use std::fmt;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upstream response timeout when [`Options::per_try_timeout`] is `None`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Sidecar::start`] waits for the listener to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Start attempts, each on a new port (another process may take the free port first).
const START_ATTEMPTS: usize = 3;
/// How long dropping a [`Sidecar`] waits for a graceful exit before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Clock ticks per second of the `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;
/// Bytes of each log shown in an error message.
const LOG_TAIL: usize = 2000;

/// Which proxy runs as the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HAProxy.
    Haproxy,
    /// nginx.
    Nginx,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary())
    }
}

/// How the sidecar is configured; the default is HTTP/1.1, a 30 s timeout and no retries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The listener speaks HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1. The
    /// connections to the backends stay HTTP/1.1 with keep-alive.
    pub http2: bool,
    /// Upstream response timeout for one try (haproxy `timeout server`, nginx
    /// `proxy_read_timeout`); `None` means 30 s.
    pub per_try_timeout: Option<Duration>,
    /// Retry idempotent requests on another backend after a connection failure, a timeout or a
    /// 502/503/504, up to 3 tries in all.
    pub retries: bool,
}

/// A running haproxy or nginx, stopped (with its workers) and cleaned up on drop.
#[derive(Debug)]
pub struct Sidecar {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    version: String,
}

impl Sidecar {
    /// Finds the binary (in `PATH`, then `/usr/sbin`, `/usr/local/sbin`, `/sbin`), writes its
    /// configuration into a fresh temporary directory, starts it on `127.0.0.1:<free port>` in
    /// front of `backends` and waits (at most 5 s) until it accepts TCP connections.
    ///
    /// Fails when the binary is not installed, when `backends` is empty, or when the proxy
    /// exits or does not listen in time; the error then ends with its output and error log.
    pub fn start(
        kind: Kind,
        backends: &[SocketAddr],
        options: &Options,
    ) -> Result<Sidecar, String> {
        if backends.is_empty() {
            return Err(format!("{kind}: no backends to proxy to"));
        }
        let binary = find_binary(kind.binary()).ok_or_else(|| {
            format!(
                "{kind} not found in PATH or /usr/sbin; install it with benches/sidecars.sh \
                 (apt-get install -y --no-install-recommends {kind})"
            )
        })?;
        let version = probe_version(kind, &binary);
        let mut error = String::new();
        for _ in 0..START_ATTEMPTS {
            match start_once(kind, &binary, backends, options, &version) {
                Ok(sidecar) => return Ok(sidecar),
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    /// The address the sidecar listens on (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id of haproxy, or of the nginx master process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time used so far by the sidecar and all its descendants (the nginx
    /// worker), read from `/proc`. `None` when `/proc` cannot be read (not Linux, or the process
    /// is gone). The resolution is 10 ms.
    pub fn cpu(&self) -> Option<Duration> {
        let pid = self.child.id();
        let root = process_stat(pid)?;
        let processes = processes();
        let ticks = descendants(pid, &processes)
            .iter()
            .fold(root.ticks, |sum, process| sum.saturating_add(process.ticks));
        Some(ticks_to_duration(ticks))
    }

    /// The proxy's name and version, e.g. `HAProxy 2.6.12` or `nginx/1.22.1`.
    pub fn version(&self) -> String {
        self.version.clone()
    }

    /// Waits until the listener accepts a connection, or fails with the proxy's logs.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "{} exited at start ({status}){}",
                        self.kind,
                        self.logs()
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("{}: cannot wait for the process: {e}", self.kind)),
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not accept connections on {} within {START_TIMEOUT:?}{}",
                    self.kind,
                    self.addr,
                    self.logs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of every non-empty log file in the temporary directory, for error messages.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["stderr.log", "stdout.log", "error.log"] {
            let Ok(bytes) = fs::read(self.dir.join(name)) else {
                continue;
            };
            let tail = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(LOG_TAIL)..]);
            let tail = tail.trim();
            if !tail.is_empty() {
                text.push_str(&format!("\n--- {name} ---\n{tail}"));
            }
        }
        text
    }
}

impl Drop for Sidecar {
    /// Stops the proxy with SIGTERM (nginx's master then stops its worker), kills it after 2 s,
    /// kills any descendant left behind and removes the temporary directory.
    fn drop(&mut self) {
        let pid = self.child.id();
        let mut family: Vec<u32> = descendants(pid, &processes())
            .iter()
            .map(|process| process.pid)
            .collect();
        if matches!(self.child.try_wait(), Ok(None)) {
            signal("TERM", &[pid]);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if !matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        family.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !family.is_empty() {
            signal("KILL", &family);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether the binary for `kind` can be found (see [`Sidecar::start`]).
pub fn installed(kind: Kind) -> bool {
    find_binary(kind.binary()).is_some()
}

/// One start attempt on a fresh port and in a fresh directory.
fn start_once(
    kind: Kind,
    binary: &Path,
    backends: &[SocketAddr],
    options: &Options,
    version: &str,
) -> Result<Sidecar, String> {
    let dir = temp_dir(kind)?;
    match spawn(kind, binary, &dir, backends, options) {
        Ok((child, addr)) => {
            let mut sidecar = Sidecar {
                kind,
                child,
                addr,
                dir,
                version: version.to_owned(),
            };
            // On failure, dropping `sidecar` stops the process and removes the directory.
            sidecar.wait_ready()?;
            Ok(sidecar)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Writes the configuration into `dir` and starts the proxy, with its output in `dir`.
fn spawn(
    kind: Kind,
    binary: &Path,
    dir: &Path,
    backends: &[SocketAddr],
    options: &Options,
) -> Result<(Child, SocketAddr), String> {
    let addr = free_port()?;
    let mut command = Command::new(binary);
    let (config_path, config) = match kind {
        Kind::Haproxy => {
            let path = dir.join("haproxy.cfg");
            command.arg("-db").arg("-f").arg(&path);
            (path, haproxy_config(addr, backends, options))
        }
        Kind::Nginx => {
            let path = dir.join("nginx.conf");
            let mut prefix = dir.as_os_str().to_owned();
            prefix.push("/");
            command
                .arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(&path)
                .arg("-e")
                .arg(dir.join("error.log"));
            (path, nginx_config(dir, addr, backends, options))
        }
    };
    fs::write(&config_path, config)
        .map_err(|e| format!("{kind}: writing {}: {e}", config_path.display()))?;
    let log = |name: &str| {
        let path = dir.join(name);
        File::create(&path).map_err(|e| format!("{kind}: creating {}: {e}", path.display()))
    };
    let child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log("stdout.log")?)
        .stderr(log("stderr.log")?)
        .spawn()
        .map_err(|e| format!("{kind}: starting {}: {e}", binary.display()))?;
    Ok((child, addr))
}

/// The haproxy configuration (see the module documentation).
fn haproxy_config(listen: SocketAddr, backends: &[SocketAddr], options: &Options) -> String {
    let timeout = timeout_ms(options);
    let retries = if options.retries {
        "    retries 2\n    option redispatch 1\n    \
         retry-on conn-failure empty-response response-timeout 502 503 504\n"
    } else {
        "    retries 0\n"
    };
    let idempotent_only = if options.retries {
        "    http-request disable-l7-retry unless { method GET HEAD PUT DELETE OPTIONS TRACE }\n"
    } else {
        ""
    };
    let proto = if options.http2 { " proto h2" } else { "" };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, backend)| format!("    server b{i} {backend}\n"))
        .collect();
    format!(
        "# proxyless load test sidecar. No `log` line: logging is off.
global
    nbthread 1

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout server {timeout}ms
    timeout check 1s
{retries}
frontend sidecar
    bind {listen}{proto}
    default_backend backends

backend backends
    balance random(2)
    option httpchk GET /
{idempotent_only}    default-server check inter 1s fall 3 rise 2 observe layer7 error-limit 3 on-error mark-down
{servers}"
    )
}

/// The nginx configuration (see the module documentation); every file it writes is in `dir`.
fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    backends: &[SocketAddr],
    options: &Options,
) -> String {
    let timeout = timeout_ms(options);
    let tries = if options.retries { 3 } else { 1 };
    let http2 = if options.http2 { " http2" } else { "" };
    let path = |name: &str| quote(&dir.join(name));
    let (pid, error_log) = (path("nginx.pid"), path("error.log"));
    let (client_body, proxy) = (path("client_body_temp"), path("proxy_temp"));
    let (fastcgi, uwsgi, scgi) = (path("fastcgi_temp"), path("uwsgi_temp"), path("scgi_temp"));
    let servers: String = backends
        .iter()
        .map(|backend| format!("        server {backend} max_fails=3 fail_timeout=5s;\n"))
        .collect();
    format!(
        "# proxyless load test sidecar.
worker_processes 1;
daemon off;
pid {pid};
error_log {error_log} error;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    keepalive_timeout 60s;
    keepalive_requests 1000000;

    upstream backends {{
        random two least_conn;
{servers}        keepalive 64;
        keepalive_timeout 60s;
        keepalive_requests 1000000;
    }}

    server {{
        listen {listen}{http2};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_connect_timeout 1s;
            proxy_read_timeout {timeout}ms;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries {tries};
        }}
    }}
}}
"
    )
}

/// The per-try timeout in whole milliseconds, at least 1.
fn timeout_ms(options: &Options) -> u128 {
    options
        .per_try_timeout
        .unwrap_or(DEFAULT_TIMEOUT)
        .as_millis()
        .max(1)
}

/// A path as a double-quoted nginx string.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))
}

/// Creates a new, empty directory under the system temporary directory.
fn temp_dir(kind: Kind) -> Result<PathBuf, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut error = String::new();
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "proxyless-sidecar-{kind}-{}-{n}-{nanos}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => {
                // nginx workers run as `nobody` when started by root, and need to reach the
                // temporary paths inside.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
                }
                return Ok(dir);
            }
            Err(e) => error = format!("creating {}: {e}", dir.display()),
        }
    }
    Err(error)
}

/// The first executable file called `name` in `PATH`, `/usr/sbin`, `/usr/local/sbin`, `/sbin`.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Runs `<binary> -v` and extracts the version, or returns the bare name.
fn probe_version(kind: Kind, binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|output| {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            parse_version(kind, &text)
        })
        .unwrap_or_else(|| format!("{kind} (unknown version)"))
}

/// `HAProxy <version>` from `haproxy -v`, or the `nginx/<version>` word of `nginx -v`.
fn parse_version(kind: Kind, text: &str) -> Option<String> {
    match kind {
        Kind::Haproxy => text.lines().find_map(|line| {
            let rest = line.split_once("HAProxy version ")?.1;
            let version = rest.split_whitespace().next()?;
            Some(format!("HAProxy {version}"))
        }),
        Kind::Nginx => text
            .split_whitespace()
            .find(|word| word.starts_with("nginx/"))
            .map(str::to_owned),
    }
}

/// What the load test needs from `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    ppid: u32,
    /// `utime + stime`, in ticks of 1/[`USER_HZ`] s.
    ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`: the parent pid is field
/// 4, utime and stime are fields 14 and 15.
fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (the state).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        ticks: utime.saturating_add(stime),
    })
}

/// User + system CPU time used so far by process `pid` alone (not its children), from
/// `/proc/<pid>/stat`; `None` where that cannot be read. The resolution is 10 ms.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    process_stat(pid).map(|stat| ticks_to_duration(stat.ticks))
}

fn process_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks.saturating_mul(1000 / USER_HZ))
}

/// Every process in `/proc` whose stat could be read (empty when there is no `/proc`).
fn processes() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            process_stat(pid)
        })
        .collect()
}

/// The children of `root`, their children, and so on (not `root` itself).
fn descendants(root: u32, processes: &[ProcStat]) -> Vec<ProcStat> {
    let mut found: Vec<ProcStat> = Vec::new();
    let mut parents = vec![root];
    // Each round descends one level; a tree cannot be deeper than the process count.
    for _ in 0..=processes.len() {
        let children: Vec<ProcStat> = processes
            .iter()
            .filter(|process| parents.contains(&process.ppid))
            .filter(|process| process.pid != root && !found.contains(process))
            .copied()
            .collect();
        if children.is_empty() {
            break;
        }
        parents = children.iter().map(|process| process.pid).collect();
        found.extend(children);
    }
    found
}

/// Sends `SIG<name>` to `pids` with the shell's `kill` (no `kill(2)` binding in std).
fn signal(name: &str, pids: &[u32]) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg("kill -s \"$@\"")
        .arg("sh")
        .arg(name)
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn addrs() -> (SocketAddr, Vec<SocketAddr>) {
        let listen = SocketAddr::from(([127, 0, 0, 1], 8000));
        let backends = vec![
            SocketAddr::from(([127, 0, 0, 1], 9001)),
            SocketAddr::from(([127, 0, 0, 1], 9002)),
        ];
        (listen, backends)
    }

    #[test]
    fn haproxy_config_text() {
        let (listen, backends) = addrs();
        let text = haproxy_config(listen, &backends, &Options::default());
        for expected in [
            "nbthread 1",
            "balance random(2)",
            "http-reuse always",
            "bind 127.0.0.1:8000\n",
            "server b0 127.0.0.1:9001\n",
            "server b1 127.0.0.1:9002\n",
            "observe layer7",
            "check inter 1s",
            "timeout server 30000ms",
            "retries 0",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("retry-on"), "{text}");
        assert!(!text.contains("\nlog") && !text.contains(" log "), "{text}");

        let options = Options {
            http2: true,
            per_try_timeout: Some(Duration::from_millis(250)),
            retries: true,
        };
        let text = haproxy_config(listen, &backends, &options);
        for expected in [
            "bind 127.0.0.1:8000 proto h2\n",
            "timeout server 250ms",
            "retries 2",
            "option redispatch 1",
            "retry-on conn-failure empty-response response-timeout 502 503 504",
            "disable-l7-retry unless { method GET HEAD PUT DELETE OPTIONS TRACE }",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn nginx_config_text() {
        let (listen, backends) = addrs();
        let dir = Path::new("/tmp/side car");
        let text = nginx_config(dir, listen, &backends, &Options::default());
        for expected in [
            "worker_processes 1;",
            "daemon off;",
            "pid \"/tmp/side car/nginx.pid\";",
            "error_log \"/tmp/side car/error.log\" error;",
            "access_log off;",
            "client_body_temp_path \"/tmp/side car/client_body_temp\";",
            "proxy_temp_path \"/tmp/side car/proxy_temp\";",
            "fastcgi_temp_path \"/tmp/side car/fastcgi_temp\";",
            "uwsgi_temp_path \"/tmp/side car/uwsgi_temp\";",
            "scgi_temp_path \"/tmp/side car/scgi_temp\";",
            "random two least_conn;",
            "server 127.0.0.1:9001 max_fails=3 fail_timeout=5s;",
            "server 127.0.0.1:9002 max_fails=3 fail_timeout=5s;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "listen 127.0.0.1:8000;",
            "proxy_read_timeout 30000ms;",
            "proxy_next_upstream_tries 1;",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());

        let options = Options {
            http2: true,
            per_try_timeout: Some(Duration::from_micros(10)),
            retries: true,
        };
        let text = nginx_config(dir, listen, &backends, &options);
        for expected in [
            "listen 127.0.0.1:8000 http2;",
            "proxy_read_timeout 1ms;",
            "proxy_next_upstream error timeout http_502 http_503 http_504;",
            "proxy_next_upstream_tries 3;",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn stat_parsing() {
        let text = "4242 (tricky) (name) x) S 17 4242 4242 0 -1 4194560 1 2 3 4 250 75 9 9 20 \
                    0 1 0 5 6 7\n";
        assert_eq!(
            parse_stat(4242, text),
            Some(ProcStat {
                pid: 4242,
                ppid: 17,
                ticks: 325
            })
        );
        assert_eq!(parse_stat(1, "1 (init) S 0 1 1"), None);
        assert_eq!(parse_stat(1, "garbage"), None);
        assert_eq!(parse_stat(1, ""), None);

        let own = fs::read_to_string(format!("/proc/{}/stat", std::process::id()));
        if let Ok(own) = own {
            assert!(parse_stat(std::process::id(), &own).is_some(), "{own}");
        }
    }

    #[test]
    fn process_tree() {
        let process = |pid, ppid| ProcStat {
            pid,
            ppid,
            ticks: u64::from(pid),
        };
        let all = [
            process(1, 0),
            process(10, 1),
            process(11, 10),
            process(12, 10),
            process(13, 12),
            process(20, 1),
        ];
        let mut pids: Vec<u32> = descendants(10, &all).iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, [11, 12, 13]);
        assert!(descendants(13, &all).is_empty());
        // A cycle (pid reuse) must not loop forever.
        let cycle = [process(2, 3), process(3, 2)];
        assert_eq!(descendants(2, &cycle).len(), 1);
    }

    #[test]
    fn version_parsing() {
        let haproxy = "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\n\
                       Status: long-term supported branch\n";
        assert_eq!(
            parse_version(Kind::Haproxy, haproxy).as_deref(),
            Some("HAProxy 2.6.12-1+deb12u4")
        );
        assert_eq!(
            parse_version(Kind::Nginx, "nginx version: nginx/1.22.1\n").as_deref(),
            Some("nginx/1.22.1")
        );
        assert_eq!(parse_version(Kind::Nginx, "what"), None);
        assert_eq!(Kind::Haproxy.to_string(), "haproxy");
        assert_eq!(Kind::Nginx.to_string(), "nginx");
    }

    /// A tiny HTTP/1.1 keep-alive backend answering `200 ok` and counting requests to `/hit`.
    struct Backend {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    }

    impl Backend {
        fn start() -> Backend {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend");
            listener.set_nonblocking(true).expect("nonblocking");
            let addr = listener.local_addr().expect("backend address");
            let hits = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (counter, stopped) = (hits.clone(), stop.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let counter = counter.clone();
                            thread::spawn(move || serve(stream, &counter));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            Backend { addr, hits, stop }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::Relaxed)
        }
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn serve(stream: TcpStream, hits: &AtomicUsize) {
        let timeout = Some(Duration::from_secs(5));
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(timeout).is_err()
            || stream.set_write_timeout(timeout).is_err()
        {
            return;
        }
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let mut writer = stream;
        for _ in 0..100_000 {
            let Some(head) = read_head(&mut reader) else {
                return;
            };
            let mut body = vec![0; content_length(&head)];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let request_line = head.lines().next().unwrap_or_default();
            if request_line.split_whitespace().nth(1) == Some("/hit") {
                hits.fetch_add(1, Ordering::Relaxed);
            }
            let close = request_line.ends_with("HTTP/1.0")
                || head.to_ascii_lowercase().contains("connection: close");
            let connection = if close { "connection: close\r\n" } else { "" };
            let response = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{connection}\r\nok");
            if writer.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
    }

    /// Reads an HTTP/1.x head up to the empty line; `None` on EOF, error or timeout.
    fn read_head(reader: &mut impl BufRead) -> Option<String> {
        let mut head = String::new();
        for _ in 0..200 {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.trim_end().is_empty() {
                return Some(head);
            }
            head.push_str(&line);
        }
        None
    }

    fn content_length(head: &str) -> usize {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        let timeout = Some(Duration::from_secs(5));
        stream.set_read_timeout(timeout).expect("read timeout");
        stream.set_write_timeout(timeout).expect("write timeout");
        stream
    }

    /// Sends `requests` GETs to `/hit` on one HTTP/1.1 keep-alive connection; the statuses.
    fn get_http1(addr: SocketAddr, requests: usize) -> Vec<u16> {
        let stream = connect(addr);
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut statuses = Vec::new();
        for _ in 0..requests {
            writer
                .write_all(b"GET /hit HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .expect("send a request");
            let head = read_head(&mut reader).expect("a response head");
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            statuses.push(status.expect("a status code"));
            let mut body = vec![0; content_length(&head)];
            reader.read_exact(&mut body).expect("the response body");
        }
        statuses
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("frame length");
        let mut frame = length.to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }

    /// Sends `requests` GETs to `/hit` on one HTTP/2 prior-knowledge connection, one stream
    /// after the other; returns the first HPACK byte of each response (0x88 is `:status 200`).
    fn get_http2(addr: SocketAddr, requests: u32) -> Vec<u8> {
        let mut stream = connect(addr);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(4, 0, 0, &[]));
        stream.write_all(&hello).expect("send the preface");
        let mut statuses = Vec::new();
        for i in 0..requests {
            let id = 1 + 2 * i;
            // :method GET, :scheme http, :path /hit, :authority localhost (no Huffman coding).
            let mut block = vec![0x82, 0x86, 0x04, 4];
            block.extend(b"/hit");
            block.extend([0x01, 9]);
            block.extend(b"localhost");
            let headers = frame(1, 0x4 | 0x1, id, &block);
            stream.write_all(&headers).expect("send HEADERS");
            let mut status = None;
            for _ in 0..100 {
                let mut head = [0; 9];
                stream.read_exact(&mut head).expect("a frame header");
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]);
                let (kind, flags) = (head[3], head[4]);
                let sid = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0; usize::try_from(length).expect("length")];
                stream.read_exact(&mut payload).expect("a frame payload");
                match kind {
                    4 if flags & 1 == 0 => stream.write_all(&frame(4, 1, 0, &[])).expect("ack"),
                    6 if flags & 1 == 0 => {
                        stream.write_all(&frame(6, 1, 0, &payload)).expect("pong")
                    }
                    7 => panic!("GOAWAY: {payload:?}"),
                    3 if sid == id => panic!("RST_STREAM: {payload:?}"),
                    1 if sid == id => {
                        let mut block = payload.as_slice();
                        if flags & 0x8 != 0 {
                            let pad = usize::from(block[0]);
                            block = &block[1..block.len() - pad];
                        }
                        if flags & 0x20 != 0 {
                            block = &block[5..];
                        }
                        // Skip dynamic table size updates (001xxxxx).
                        status = block.iter().copied().find(|byte| byte & 0xe0 != 0x20);
                    }
                    _ => {}
                }
                if sid == id && (kind == 0 || kind == 1) && flags & 1 != 0 {
                    break;
                }
            }
            statuses.push(status.expect("a response HEADERS frame"));
        }
        statuses
    }

    fn skip(kind: Kind) -> bool {
        let missing = !installed(kind);
        if missing {
            eprintln!("{kind} is not installed, skipping (benches/sidecars.sh installs it)");
        }
        missing
    }

    fn through(kind: Kind, options: &Options) {
        if skip(kind) {
            return;
        }
        let backends = [Backend::start(), Backend::start()];
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let sidecar = Sidecar::start(kind, &addrs, options).expect("start the sidecar");
        assert_eq!(
            sidecar.addr().ip(),
            SocketAddr::from(([127, 0, 0, 1], 0)).ip()
        );
        assert!(sidecar.pid() > 0);
        let version = sidecar.version();
        let cpu_before = sidecar.cpu().expect("the sidecar's CPU time");
        let requests = 40;
        if options.http2 {
            let statuses = get_http2(sidecar.addr(), requests);
            assert!(statuses.iter().all(|&s| s == 0x88), "{kind}: {statuses:x?}");
        } else {
            let first = get_http1(sidecar.addr(), 20);
            let second = get_http1(sidecar.addr(), 20);
            assert!(
                first.iter().chain(&second).all(|&s| s == 200),
                "{kind}: {first:?} {second:?}"
            );
        }
        let hits: Vec<usize> = backends.iter().map(Backend::hits).collect();
        assert_eq!(hits.iter().sum::<usize>(), 40, "{kind}: {hits:?}");
        assert!(
            hits.iter().all(|&h| h > 0),
            "{kind}: one backend unused {hits:?}"
        );
        let cpu = sidecar.cpu().expect("the sidecar's CPU time");
        assert!(cpu >= cpu_before);
        let workers = descendants(sidecar.pid(), &processes()).len();
        if kind == Kind::Nginx {
            assert_eq!(workers, 1, "nginx: expected one worker process");
        }
        eprintln!(
            "{version} (pid {}, {workers} children, http2 {}): {requests} requests, hits {hits:?}, CPU {cpu:?}",
            sidecar.pid(),
            options.http2
        );
        let (pid, dir) = (sidecar.pid(), sidecar.dir.clone());
        drop(sidecar);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{kind} still running"
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn haproxy_http1() {
        through(Kind::Haproxy, &Options::default());
    }

    #[test]
    fn nginx_http1() {
        through(Kind::Nginx, &Options::default());
    }

    #[test]
    fn haproxy_http2() {
        let options = Options {
            http2: true,
            ..Options::default()
        };
        through(Kind::Haproxy, &options);
    }

    #[test]
    fn nginx_http2() {
        let options = Options {
            http2: true,
            ..Options::default()
        };
        through(Kind::Nginx, &options);
    }

    /// With one backend refusing connections, retries hide the failures and no retries show
    /// them.
    fn dead_backend(kind: Kind) {
        if skip(kind) {
            return;
        }
        let live = Backend::start();
        let dead = free_port().expect("a closed port");
        for retries in [true, false] {
            let options = Options {
                retries,
                per_try_timeout: Some(Duration::from_secs(2)),
                ..Options::default()
            };
            let sidecar = Sidecar::start(kind, &[live.addr, dead], &options).expect("start");
            let statuses = get_http1(sidecar.addr(), 20);
            let ok = statuses.iter().filter(|&&s| s == 200).count();
            if retries {
                assert_eq!(ok, 20, "{kind} with retries: {statuses:?}");
            } else {
                assert!(ok < 20, "{kind} without retries never hit the dead backend");
                assert!(
                    statuses.iter().all(|&s| s == 200 || s >= 500),
                    "{statuses:?}"
                );
            }
        }
    }

    #[test]
    fn haproxy_dead_backend() {
        dead_backend(Kind::Haproxy);
    }

    #[test]
    fn nginx_dead_backend() {
        dead_backend(Kind::Nginx);
    }

    #[test]
    fn bad_input() {
        let error = Sidecar::start(Kind::Nginx, &[], &Options::default()).expect_err("no backends");
        assert!(error.contains("no backends"), "{error}");
    }
}
