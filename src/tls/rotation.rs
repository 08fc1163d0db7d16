//! Identity rotation: reloading a workload's [`Svid`] and [`TrustBundleSet`] from files or a
//! user-implemented [`IdentitySource`], once ([`reload`]) or on an interval ([`Rotation`]).
//!
//! New handshakes use the new material as soon as it is swapped into the [`Identity`];
//! established connections and their in-flight requests keep the material they were made with
//! (rustls never renegotiates). A reload that fails keeps the last good material.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::error::{TlsError, VerifyError};
use super::{Identity, Svid, TrustBundle, TrustBundleSet, x509};
use crate::identity::TrustDomain;
use crate::rng::Rng;

/// The first retry delay after a failed reload (capped at the interval).
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);

/// The shortest reload interval; a zero interval is raised to it.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Where identity material comes from: files ([`FileIdentity`]) or a source of one's own, such as
/// a SPIFFE Workload API client.
///
/// Each call returns the complete current material: the SVID and every trust bundle (local and
/// federated). The caller decides whether anything changed and whether to use it, so a source
/// may return the same material again and again.
///
/// ```
/// use proxyless::tls::{IdentitySource, Svid, TlsError, TrustBundleSet};
///
/// /// Material handed over by some other part of the program.
/// struct Latest(tokio::sync::watch::Receiver<(Svid, TrustBundleSet)>);
///
/// impl IdentitySource for Latest {
///     async fn load(&mut self) -> Result<(Svid, TrustBundleSet), TlsError> {
///         Ok(self.0.borrow().clone())
///     }
/// }
/// ```
pub trait IdentitySource: Send + 'static {
    /// Loads the current SVID and trust bundles.
    fn load(&mut self) -> impl Future<Output = Result<(Svid, TrustBundleSet), TlsError>> + Send;
}

/// Identity material in PEM or JSON files, as written by the SPIRE agent's `spiffe-helper`, a
/// Kubernetes secret volume or cert-manager's CSI driver: the SVID chain (leaf first), its private
/// key, and the trust bundles.
///
/// The trust bundles are either one PEM file with the roots of one trust domain
/// ([`with_pem_bundle`](FileIdentity::with_pem_bundle)), or a SPIFFE bundle map, a JSON file
/// `{"trust_domains": {"<td>": <SPIFFE bundle>, ...}}`
/// ([`with_bundle_map`](FileIdentity::with_bundle_map)).
///
/// Every load reads all files again, on tokio's blocking pool. Write the files atomically (write a
/// temporary file, then rename it): a load that sees a new certificate with the old key fails
/// with [`TlsError::KeyMismatch`], which keeps the old material and is retried after a backoff.
///
/// I/O errors are reported as [`TlsError::Pem`] (PEM files) or [`TlsError::Json`] (the bundle
/// map) whose reason names the file.
///
/// ```no_run
/// use std::time::Duration;
/// use proxyless::tls::{FileIdentity, Identity, Rotation};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut files = FileIdentity::with_pem_bundle(
///     "/run/spire/svid.pem",
///     "/run/spire/svid_key.pem",
///     "example.org".parse()?,
///     "/run/spire/bundle.pem",
/// );
/// let identity = Identity::from_source(&mut files).await?;
/// let rotation = Rotation::new(identity.clone(), files, Duration::from_secs(60)).spawn()?;
/// // Build clients and acceptors on `identity`; keep `rotation` alive as long as they are used.
/// # drop(rotation);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FileIdentity {
    chain: PathBuf,
    key: PathBuf,
    bundles: BundleFile,
}

#[derive(Clone, Debug)]
enum BundleFile {
    Pem {
        trust_domain: TrustDomain,
        path: PathBuf,
    },
    Map(PathBuf),
}

impl FileIdentity {
    /// Files holding the SVID chain (`CERTIFICATE` sections, leaf first), its private key, and the
    /// roots of one trust domain as PEM.
    pub fn with_pem_bundle(
        svid_chain: impl Into<PathBuf>,
        svid_key: impl Into<PathBuf>,
        trust_domain: TrustDomain,
        bundle_pem: impl Into<PathBuf>,
    ) -> Self {
        Self {
            chain: svid_chain.into(),
            key: svid_key.into(),
            bundles: BundleFile::Pem {
                trust_domain,
                path: bundle_pem.into(),
            },
        }
    }

    /// Files holding the SVID chain (`CERTIFICATE` sections, leaf first), its private key, and a
    /// SPIFFE bundle map (JSON), read with [`TrustBundleSet::from_spiffe_bundle_map`].
    pub fn with_bundle_map(
        svid_chain: impl Into<PathBuf>,
        svid_key: impl Into<PathBuf>,
        bundle_map_json: impl Into<PathBuf>,
    ) -> Self {
        Self {
            chain: svid_chain.into(),
            key: svid_key.into(),
            bundles: BundleFile::Map(bundle_map_json.into()),
        }
    }
}

/// Reads a whole file on tokio's blocking pool (what `tokio::fs::read` does, without needing
/// tokio's `fs` feature), naming the file in the error. Outside a tokio runtime it reads in place.
async fn read(path: &Path, error: impl Fn(String) -> TlsError) -> Result<Vec<u8>, TlsError> {
    let owned = path.to_path_buf();
    let result = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(move || std::fs::read(owned))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(_) => std::fs::read(owned),
    };
    result.map_err(|e| error(format!("cannot read {}: {e}", path.display())))
}

fn pem_error(what: &'static str) -> impl Fn(String) -> TlsError {
    move |reason| TlsError::Pem { what, reason }
}

impl IdentitySource for FileIdentity {
    async fn load(&mut self) -> Result<(Svid, TrustBundleSet), TlsError> {
        let chain = read(&self.chain, pem_error("certificate chain")).await?;
        let key = read(&self.key, pem_error("private key")).await?;
        let svid = Svid::from_pem(&chain, &key)?;
        let bundles = match &self.bundles {
            BundleFile::Pem { trust_domain, path } => {
                let pem = read(path, pem_error("trust bundle")).await?;
                let mut set = TrustBundleSet::new();
                set.insert(TrustBundle::from_pem(trust_domain.clone(), &pem)?);
                set
            }
            BundleFile::Map(path) => {
                let json = read(path, |reason| TlsError::Json { reason }).await?;
                TrustBundleSet::from_spiffe_bundle_map(&json)?
            }
        };
        Ok((svid, bundles))
    }
}

impl Identity {
    /// Material loaded once from `source`, for a start before [`Rotation`] takes over.
    ///
    /// Fails as [`reload`] does: with the source's error, or with [`TlsError::Expired`] for an
    /// SVID that has expired. An SVID that is not valid yet is accepted here (there is nothing
    /// else to present), as [`Svid::from_pem`] accepts it.
    pub async fn from_source(source: &mut impl IdentitySource) -> Result<Identity, TlsError> {
        let (svid, bundles) = source.load().await?;
        check_not_expired(&svid, x509::unix_now())?;
        Ok(Identity::new(svid, bundles))
    }
}

fn unix(t: std::time::SystemTime) -> i64 {
    x509::unix_from_system_time(t)
}

fn check_not_expired(svid: &Svid, now: i64) -> Result<(), TlsError> {
    let not_after = unix(svid.not_after());
    if not_after < now {
        return Err(TlsError::Expired {
            what: format!(
                "the X.509-SVID of {} (serial {})",
                svid.spiffe_id(),
                svid.serial_hex()
            ),
            not_after: x509::format_unix(not_after),
        });
    }
    Ok(())
}

/// Whether two bundle sets trust the same roots for the same trust domains.
fn same_bundles(a: &TrustBundleSet, b: &TrustBundleSet) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.trust_domain() == y.trust_domain() && x.roots() == y.roots())
}

/// Loads material from `source` once and swaps whatever changed into `identity`.
///
/// Returns `Ok(true)` when the SVID or the bundles were replaced, `Ok(false)` when the source
/// returned what `identity` already holds (the same certificate chain, by DER; the same roots for
/// the same trust domains). New handshakes use the new material; established connections are
/// untouched.
///
/// Fails, changing nothing, when the source fails, or when the new SVID is refused: an expired
/// SVID with [`TlsError::Expired`] ("… expired at …"), one that is not valid yet with
/// [`TlsError::NotAnSvid`]`(`[`VerifyError::NotYetValid`]`)`. The whole reload is refused then,
/// bundles included, so the SVID and bundles in use always come from one load. Rotations are
/// logged at info, failures at warn.
pub async fn reload(
    identity: &Identity,
    source: &mut impl IdentitySource,
) -> Result<bool, TlsError> {
    let current = identity.svid();
    match source
        .load()
        .await
        .and_then(|loaded| apply(identity, loaded))
    {
        Ok(changed) => Ok(changed),
        Err(e) => {
            tracing::warn!(
                error = %e,
                id = %current.spiffe_id(),
                serial = %current.serial_hex(),
                "identity reload failed; keeping the current SVID and trust bundles"
            );
            Err(e)
        }
    }
}

/// Checks and applies loaded material.
fn apply(identity: &Identity, (svid, bundles): (Svid, TrustBundleSet)) -> Result<bool, TlsError> {
    let current = identity.svid();
    let svid_changed = svid.chain() != current.chain();
    if svid_changed {
        let now = x509::unix_now();
        check_not_expired(&svid, now)?;
        if unix(svid.not_before()) > now {
            return Err(TlsError::NotAnSvid(VerifyError::NotYetValid));
        }
    }
    let bundles_changed = !same_bundles(&bundles, &identity.bundles());
    // Bundles first: by the time the new SVID is presented, its issuers' peers are trusted.
    if bundles_changed {
        tracing::info!(
            trust_domains = bundles.len(),
            roots = bundles.iter().map(|b| b.roots().len()).sum::<usize>(),
            "identity reload: new trust bundles"
        );
        identity.rotate_bundles(bundles);
    }
    if svid_changed {
        tracing::info!(
            id = %svid.spiffe_id(),
            serial = %svid.serial_hex(),
            not_after = %x509::format_unix(unix(svid.not_after())),
            previous_serial = %current.serial_hex(),
            "identity reload: new SVID"
        );
        identity.rotate_svid(svid);
    }
    if !svid_changed && !bundles_changed {
        tracing::debug!("identity reload: unchanged");
    }
    Ok(svid_changed || bundles_changed)
}

/// Reloads an [`Identity`] from an [`IdentitySource`] on an interval, in a background task.
///
/// Every `interval` (the first time one interval after [`spawn`](Rotation::spawn)) the task
/// calls [`reload`]. After a failed reload it retries with a jittered exponential backoff: 1 s
/// doubling up to the interval (change with [`backoff`](Rotation::backoff)), each delay drawn
/// uniformly from the upper half of its ceiling, as discovery polling backs off. The first
/// success returns to the interval. Failures keep the last good material.
///
/// Pick an interval well below the SVID lifetime: SPIRE renews at half-life, Istio with half the
/// lifetime left, Linkerd at 70 % of the remaining time, so a file written by an agent changes
/// about once per half lifetime, and polling every minute or so picks it up promptly.
///
/// ```no_run
/// use std::time::Duration;
/// use proxyless::tls::{FileIdentity, Identity, Rotation};
///
/// # async fn run(identity: Identity, files: FileIdentity) -> Result<(), Box<dyn std::error::Error>> {
/// let rotation = Rotation::new(identity, files, Duration::from_secs(30)).spawn()?;
/// // ...
/// let stats = rotation.stats();
/// println!("{} rotations, {} failures", stats.rotations, stats.failures);
/// if let Some(e) = rotation.last_error() {
///     println!("last failure: {e}");
/// }
/// # Ok(()) }
/// ```
pub struct Rotation<S> {
    identity: Identity,
    source: S,
    interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    rng: Rng,
}

impl<S: IdentitySource> Rotation<S> {
    /// Reloads `identity` from `source` every `interval` (raised to at least 1 ms), once spawned.
    pub fn new(identity: Identity, source: S, interval: Duration) -> Self {
        let interval = interval.max(MIN_INTERVAL);
        Self {
            identity,
            source,
            interval,
            min_backoff: DEFAULT_MIN_BACKOFF.min(interval),
            max_backoff: interval,
            rng: Rng::from_entropy(),
        }
    }

    /// Sets the retry backoff after failed reloads: from `min` doubling up to `max`.
    ///
    /// `max` below `min` is raised to `min`; a zero `min` is raised to one millisecond.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min.max(MIN_INTERVAL);
        self.max_backoff = max.max(self.min_backoff);
        self
    }

    /// Fixes the jitter's random sequence, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Rng::seeded(seed);
        self
    }

    /// Starts the reload task on the current tokio runtime. It runs until the returned handle is
    /// dropped.
    ///
    /// Fails with [`RotationError::NoRuntime`] outside a tokio runtime.
    pub fn spawn(self) -> Result<RotationHandle, RotationError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RotationError::NoRuntime)?;
        let shared = Arc::new(Shared::default());
        let task = runtime.spawn(self.run(Arc::clone(&shared)));
        Ok(RotationHandle { shared, task })
    }

    fn backoff_delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let ceiling = self
            .min_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        // Uniform in [ceiling / 2, ceiling]: jitter at every step, the cap included.
        ceiling.mul_f64(0.5 + 0.5 * self.rng.unit())
    }

    async fn run(mut self, shared: Arc<Shared>) {
        let mut failures: u32 = 0;
        loop {
            let delay = if failures == 0 {
                self.interval
            } else {
                self.backoff_delay(failures)
            };
            tokio::time::sleep(delay).await;
            shared.loads.fetch_add(1, Ordering::Relaxed);
            match reload(&self.identity, &mut self.source).await {
                Ok(changed) => {
                    failures = 0;
                    if changed {
                        shared.rotations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                    shared.last_error.store(Some(Arc::new(e)));
                    tracing::debug!(failures, "identity reload: retrying after a backoff");
                }
            }
            shared
                .consecutive_failures
                .store(failures, Ordering::Relaxed);
        }
    }
}

impl<S> std::fmt::Debug for Rotation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("identity", &self.identity)
            .field("interval", &self.interval)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}

/// Counters of a [`Rotation`] task, from [`RotationHandle::stats`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RotationStats {
    /// Calls of the source's [`load`](IdentitySource::load).
    pub loads: u64,
    /// Reloads that replaced the SVID, the bundles or both.
    pub rotations: u64,
    /// Failed reloads: the source failed or its SVID was refused.
    pub failures: u64,
    /// Failures since the last successful reload (0 while healthy).
    pub consecutive_failures: u32,
}

#[derive(Debug, Default)]
struct Shared {
    loads: AtomicU64,
    rotations: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    last_error: ArcSwapOption<TlsError>,
}

/// Controls a running [`Rotation`] task: read its counters and last error. Dropping the handle
/// stops the task (the [`Identity`] keeps the material it holds).
#[derive(Debug)]
pub struct RotationHandle {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RotationHandle {
    /// The task's counters so far.
    pub fn stats(&self) -> RotationStats {
        RotationStats {
            loads: self.shared.loads.load(Ordering::Relaxed),
            rotations: self.shared.rotations.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            consecutive_failures: self.shared.consecutive_failures.load(Ordering::Relaxed),
        }
    }

    /// Why the most recent failed reload failed, if any has. Kept after later successes; see
    /// [`RotationStats::consecutive_failures`] for whether reloads are failing now.
    pub fn last_error(&self) -> Option<TlsError> {
        self.shared.last_error.load_full().map(|e| (*e).clone())
    }
}

impl Drop for RotationHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`Rotation`] could not be started.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationError {
    /// [`Rotation::spawn`] was called outside a tokio runtime.
    NoRuntime,
}

impl std::fmt::Display for RotationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RotationError::NoRuntime => f.write_str(
                "no tokio runtime: start identity rotation from within a tokio runtime, since it spawns its reload task",
            ),
        }
    }
}

impl std::error::Error for RotationError {}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use rcgen::string::Ia5String;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair, KeyUsagePurpose as Ku, SanType,
    };
    use time::OffsetDateTime;
    use tokio::time::Instant;

    use super::*;

    const TD: &str = "a.test";
    const WEB: &str = "spiffe://a.test/ns/prod/sa/web";

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).unwrap())
    }

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Self {
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{TD} root"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
            params.subject_alt_names = vec![uri(&format!("spiffe://{TD}"))];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(1);
            Self {
                issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
            }
        }

        fn pem(&self) -> String {
            self.issuer.pem()
        }

        fn bundles(&self) -> TrustBundleSet {
            let mut set = TrustBundleSet::new();
            set.insert(TrustBundle::from_pem(td(), self.pem().as_bytes()).unwrap());
            set
        }

        /// A leaf for `WEB` valid from `not_before` to `not_after` (relative to now), as PEM
        /// chain and key.
        fn leaf(&self, not_before: time::Duration, not_after: time::Duration) -> (String, String) {
            let now = OffsetDateTime::now_utc();
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.subject_alt_names = vec![uri(WEB)];
            params.key_usages = vec![Ku::DigitalSignature];
            params.is_ca = IsCa::ExplicitNoCa;
            params.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
            params.not_before = now + not_before;
            params.not_after = now + not_after;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        fn valid_leaf(&self) -> (String, String) {
            self.leaf(-time::Duration::minutes(5), time::Duration::hours(1))
        }

        fn svid(&self) -> Svid {
            let (chain, key) = self.valid_leaf();
            Svid::from_pem(chain.as_bytes(), key.as_bytes()).unwrap()
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::parse(TD).unwrap()
    }

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "proxyless-rotation-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Writes a file atomically (temporary file, then rename), as agents should.
        fn write(&self, name: &str, contents: &[u8]) {
            let tmp = self.path(&format!(".{name}.tmp"));
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }

        fn write_svid(&self, (chain, key): &(String, String)) {
            self.write("svid.pem", chain.as_bytes());
            self.write("svid_key.pem", key.as_bytes());
        }

        fn files(&self) -> FileIdentity {
            FileIdentity::with_pem_bundle(
                self.path("svid.pem"),
                self.path("svid_key.pem"),
                td(),
                self.path("bundle.pem"),
            )
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Files with a valid SVID and bundle; returns the dir, the CA and a file source.
    fn files_with_valid_svid() -> (TempDir, Ca, FileIdentity) {
        let dir = TempDir::new();
        let ca = Ca::new();
        dir.write("bundle.pem", ca.pem().as_bytes());
        dir.write_svid(&ca.valid_leaf());
        let files = dir.files();
        (dir, ca, files)
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn file_identity_reads_pem_files() {
        let (_dir, ca, mut files) = files_with_valid_svid();
        let identity = Identity::from_source(&mut files).await.unwrap();
        assert_eq!(identity.spiffe_id().to_string(), WEB);
        let bundles = identity.bundles();
        let bundle = bundles.get(&td()).unwrap();
        assert_eq!(bundle.roots(), [ca.issuer.der().clone()]);
    }

    #[tokio::test]
    async fn file_identity_reads_a_bundle_map() {
        let dir = TempDir::new();
        let ca = Ca::new();
        dir.write_svid(&ca.valid_leaf());
        let json = format!(
            r#"{{"trust_domains": {{"{TD}": {{"spiffe_sequence": 3, "keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}]}}}}}}"#,
            base64(ca.issuer.der())
        );
        dir.write("bundle.json", json.as_bytes());
        let mut files = FileIdentity::with_bundle_map(
            dir.path("svid.pem"),
            dir.path("svid_key.pem"),
            dir.path("bundle.json"),
        );
        let (svid, bundles) = files.load().await.unwrap();
        assert_eq!(svid.spiffe_id().to_string(), WEB);
        let bundle = bundles.get(&td()).unwrap();
        assert_eq!(bundle.roots(), [ca.issuer.der().clone()]);
        assert_eq!(bundle.sequence(), Some(3));
    }

    #[tokio::test]
    async fn a_missing_file_is_named_in_the_error() {
        let (dir, _ca, mut files) = files_with_valid_svid();
        std::fs::remove_file(dir.path("svid_key.pem")).unwrap();
        let e = files.load().await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                TlsError::Pem {
                    what: "private key",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            text.contains("cannot read") && text.contains("svid_key.pem"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn rewritten_files_rotate_the_svid() {
        let (dir, ca, mut files) = files_with_valid_svid();
        let identity = Identity::from_source(&mut files).await.unwrap();
        let old_serial = identity.svid().serial_hex();
        let old_bundles = identity.bundles();

        // Nothing changed on disk: nothing rotates.
        assert!(!reload(&identity, &mut files).await.unwrap());
        assert_eq!(identity.svid().serial_hex(), old_serial);
        assert!(Arc::ptr_eq(&identity.bundles(), &old_bundles));

        dir.write_svid(&ca.valid_leaf());
        assert!(reload(&identity, &mut files).await.unwrap());
        let new_serial = identity.svid().serial_hex();
        assert_ne!(new_serial, old_serial);
        // The bundle file is unchanged, so the bundles were not swapped.
        assert!(Arc::ptr_eq(&identity.bundles(), &old_bundles));
        assert!(!reload(&identity, &mut files).await.unwrap());

        // A new CA: both the bundle and the SVID rotate.
        let ca2 = Ca::new();
        dir.write("bundle.pem", ca2.pem().as_bytes());
        dir.write_svid(&ca2.valid_leaf());
        assert!(reload(&identity, &mut files).await.unwrap());
        assert_ne!(identity.svid().serial_hex(), new_serial);
        assert_eq!(
            identity.bundles().get(&td()).unwrap().roots(),
            [ca2.issuer.der().clone()]
        );
    }

    #[tokio::test]
    async fn an_expired_svid_is_refused_and_the_old_one_stays() {
        let (dir, ca, mut files) = files_with_valid_svid();
        let identity = Identity::from_source(&mut files).await.unwrap();
        let serial = identity.svid().serial_hex();

        dir.write_svid(&ca.leaf(-time::Duration::hours(2), -time::Duration::hours(1)));
        let e = reload(&identity, &mut files).await.unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e:?}");
        assert!(e.to_string().contains("expired at"), "{e}");
        assert_eq!(identity.svid().serial_hex(), serial);
        // Nor can an identity start from it.
        let e = Identity::from_source(&mut files).await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    /// A source returning fixed material.
    struct Fixed(Svid, TrustBundleSet);

    impl IdentitySource for Fixed {
        async fn load(&mut self) -> Result<(Svid, TrustBundleSet), TlsError> {
            Ok((self.0.clone(), self.1.clone()))
        }
    }

    #[tokio::test]
    async fn an_svid_not_valid_yet_is_refused_whole_reload_included() {
        let ca = Ca::new();
        let identity = Identity::new(ca.svid(), ca.bundles());
        let serial = identity.svid().serial_hex();
        let old_bundles = identity.bundles();

        let (chain, key) = ca.leaf(time::Duration::hours(1), time::Duration::hours(2));
        let early = Svid::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
        let other_ca = Ca::new();
        let mut source = Fixed(early, other_ca.bundles());
        let e = reload(&identity, &mut source).await.unwrap_err();
        assert_eq!(e, TlsError::NotAnSvid(VerifyError::NotYetValid));
        assert_eq!(identity.svid().serial_hex(), serial);
        assert!(Arc::ptr_eq(&identity.bundles(), &old_bundles));
    }

    #[tokio::test]
    async fn new_bundles_rotate_alone() {
        let ca = Ca::new();
        let svid = ca.svid();
        let identity = Identity::new(svid.clone(), ca.bundles());
        let other = Ca::new();
        let mut source = Fixed(svid, other.bundles());
        assert!(reload(&identity, &mut source).await.unwrap());
        assert_eq!(
            identity.bundles().get(&td()).unwrap().roots(),
            [other.issuer.der().clone()]
        );
        assert!(!reload(&identity, &mut source).await.unwrap());
    }

    /// Waits (in real time, at most 1.5 s) until `done` holds.
    async fn eventually(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_corrupt_file_keeps_the_last_good_material_until_fixed() {
        let (dir, ca, mut files) = files_with_valid_svid();
        let identity = Identity::from_source(&mut files).await.unwrap();
        let serial = identity.svid().serial_hex();
        let rotation = Rotation::new(identity.clone(), files, Duration::from_millis(20))
            .seed(1)
            .spawn()
            .unwrap();

        dir.write("svid.pem", b"-----BEGIN CERTIFICATE-----\nMII\n");
        eventually(|| rotation.stats().failures >= 2).await;
        let e = rotation.last_error().unwrap();
        assert!(
            matches!(
                e,
                TlsError::Pem {
                    what: "certificate chain",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(identity.svid().serial_hex(), serial);
        assert!(rotation.stats().consecutive_failures >= 2);
        assert_eq!(rotation.stats().rotations, 0);

        dir.write_svid(&ca.valid_leaf());
        eventually(|| rotation.stats().rotations == 1).await;
        assert_ne!(identity.svid().serial_hex(), serial);
        let stats = rotation.stats();
        assert_eq!(stats.consecutive_failures, 0);
        assert!(stats.loads > stats.failures);
        // The last error is kept for inspection after recovery.
        assert!(rotation.last_error().is_some());
    }

    type Step = Result<(Svid, TrustBundleSet), TlsError>;

    /// A source playing a script of outcomes, then repeating its last success, and recording
    /// when it was called.
    struct Script {
        steps: VecDeque<Step>,
        last: (Svid, TrustBundleSet),
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl IdentitySource for Script {
        async fn load(&mut self) -> Result<(Svid, TrustBundleSet), TlsError> {
            self.calls.lock().unwrap().push(Instant::now());
            match self.steps.pop_front() {
                Some(Ok(material)) => {
                    self.last = material.clone();
                    Ok(material)
                }
                Some(Err(e)) => Err(e),
                None => Ok(self.last.clone()),
            }
        }
    }

    fn script(identity: &Identity, steps: Vec<Step>) -> (Script, Arc<Mutex<Vec<Instant>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let source = Script {
            steps: steps.into(),
            last: ((*identity.svid()).clone(), (*identity.bundles()).clone()),
            calls: Arc::clone(&calls),
        };
        (source, calls)
    }

    fn failure() -> TlsError {
        TlsError::Json {
            reason: "scripted failure".to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reloads_on_the_interval_and_backs_off_after_failures() {
        let ca = Ca::new();
        let identity = Identity::new(ca.svid(), ca.bundles());
        let next = ca.svid();
        let next_serial = next.serial_hex();
        let same = ((*identity.svid()).clone(), ca.bundles());
        let mut steps = vec![Ok(same)];
        steps.extend((0..6).map(|_| Err(failure())));
        steps.push(Ok((next, ca.bundles())));
        let (source, calls) = script(&identity, steps);

        let start = Instant::now();
        let rotation = Rotation::new(identity.clone(), source, Duration::from_secs(10))
            .seed(7)
            .spawn()
            .unwrap();
        while calls.lock().unwrap().len() < 9 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let calls = calls.lock().unwrap().clone();
        let delays: Vec<Duration> = std::iter::once(start)
            .chain(calls.iter().copied())
            .zip(calls.iter())
            .map(|(a, b)| *b - a)
            .collect();
        let s = Duration::from_secs;
        // The interval, exactly: a load that changed nothing, then the first failure.
        assert_eq!(delays[0..2], [s(10), s(10)]);
        // Backoff ceilings 1, 2, 4, 8, 10, 10 s (capped at the interval), each delay in the
        // upper half of its ceiling; the sixth retry succeeds.
        for (delay, ceiling) in delays[2..8].iter().zip([1u64, 2, 4, 8, 10, 10]) {
            let ceiling = s(ceiling);
            assert!(
                *delay >= ceiling / 2 && *delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}] in {delays:?}",
                ceiling / 2
            );
        }
        // Back to the interval after the success.
        assert_eq!(delays[8], s(10));

        assert_eq!(identity.svid().serial_hex(), next_serial);
        let stats = rotation.stats();
        assert_eq!(
            (stats.loads, stats.rotations, stats.failures),
            (9, 1, 6),
            "{stats:?}"
        );
        assert_eq!(stats.consecutive_failures, 0);
        assert_eq!(rotation.last_error(), Some(failure()));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_reloading() {
        let ca = Ca::new();
        let identity = Identity::new(ca.svid(), ca.bundles());
        let (source, calls) = script(&identity, Vec::new());
        let rotation = Rotation::new(identity, source, Duration::from_secs(1))
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(calls.lock().unwrap().len(), 3);
        assert_eq!(rotation.stats().loads, 3);
        drop(rotation);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(calls.lock().unwrap().len(), 3);
    }

    #[test]
    fn spawning_outside_a_runtime_fails_cleanly() {
        let ca = Ca::new();
        let identity = Identity::new(ca.svid(), ca.bundles());
        let (source, _) = script(&identity, Vec::new());
        let e = Rotation::new(identity, source, Duration::from_secs(1))
            .spawn()
            .unwrap_err();
        assert_eq!(e, RotationError::NoRuntime);
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    #[test]
    fn zero_durations_are_raised() {
        let ca = Ca::new();
        let identity = Identity::new(ca.svid(), ca.bundles());
        let (source, _) = script(&identity, Vec::new());
        let rotation = Rotation::new(identity, source, Duration::ZERO)
            .backoff(Duration::ZERO, Duration::ZERO)
            .seed(3);
        assert_eq!(rotation.interval, MIN_INTERVAL);
        assert!(rotation.backoff_delay(u32::MAX) <= MIN_INTERVAL);
        assert!(rotation.backoff_delay(1) >= MIN_INTERVAL / 2);
    }
}
