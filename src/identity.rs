//! SPIFFE identities: [`SpiffeId`] and [`TrustDomain`].
//!
//! A SPIFFE ID names a workload (or, with an empty path, a whole trust
//! domain). It is a URI of the form `spiffe://<trust-domain><path>`, defined
//! by the SPIFFE ID standard (`standards/SPIFFE-ID.md` in the `spiffe/spiffe`
//! repository: §2 "SPIFFE Identity", §2.1 "Trust Domain", §2.2 "Path",
//! §2.3 "Maximum SPIFFE ID Length", §2.4 parsing). This module parses and
//! validates IDs by every rule of that standard, without any dependency and
//! without panicking on any input.
//!
//! # Rules enforced
//!
//! | part | rule | error |
//! |---|---|---|
//! | whole ID | not empty | [`SpiffeIdError::Empty`] |
//! | whole ID | at most [`MAX_ID_LEN`] (2048) bytes | [`SpiffeIdError::IdTooLong`] |
//! | scheme | `spiffe` followed by `://` | [`SpiffeIdError::WrongScheme`] |
//! | trust domain | present (non-empty authority) | [`SpiffeIdError::MissingTrustDomain`] |
//! | trust domain | no userinfo (`user@`) | [`SpiffeIdError::HasUserInfo`] |
//! | trust domain | no port, not even a bare `:` | [`SpiffeIdError::HasPort`] |
//! | trust domain | lowercase only | [`SpiffeIdError::UppercaseTrustDomain`] |
//! | trust domain | characters `[a-z0-9.-_]` only (so IPv6 literals are out) | [`SpiffeIdError::BadTrustDomainChar`] |
//! | trust domain | at most [`MAX_TRUST_DOMAIN_LEN`] (255) bytes | [`SpiffeIdError::TrustDomainTooLong`] |
//! | anywhere | no percent-encoding | [`SpiffeIdError::PercentEncoded`] |
//! | path | empty, or `/segment/segment/...` | — |
//! | path | no empty segment (`//`) | [`SpiffeIdError::EmptySegment`] |
//! | path | no `.` or `..` segment | [`SpiffeIdError::DotSegment`] |
//! | path | characters `[a-zA-Z0-9.-_]` in segments | [`SpiffeIdError::BadPathChar`] |
//! | path | no trailing `/` | [`SpiffeIdError::TrailingSlash`] |
//! | URI | no query (`?`) | [`SpiffeIdError::HasQuery`] |
//! | URI | no fragment (`#`) | [`SpiffeIdError::HasFragment`] |
//!
//! Trust domains are never special-cased: an IPv4 dotted quad such as
//! `10.0.0.1` is just a name made of allowed characters, and a DNS-looking
//! name gets no DNS semantics (no IDNA, no trailing-dot folding).
//!
//! Segments such as `a..b` or `.hidden` are valid: only segments that are
//! exactly `.` or `..` are rejected.
//!
//! # Case handling
//!
//! The standard's parsing section treats the scheme and the trust domain as
//! case-insensitive (as RFC 3986 does), while its trust-domain section says
//! the trust domain MUST be lowercase. This module resolves the conflict as
//! follows:
//!
//! * the **scheme** is matched case-insensitively (`SPIFFE://`, `Spiffe://`
//!   are accepted) and always stored and printed as lowercase `spiffe://`;
//! * an **uppercase trust domain is rejected** with
//!   [`SpiffeIdError::UppercaseTrustDomain`] instead of being silently
//!   lowercased, so that the identity we compare is exactly the identity
//!   that was written (this matches go-spiffe's behaviour);
//! * the **path** is case-sensitive and kept as written.
//!
//! Consequently, [`SpiffeId::as_str`] is always canonical and two IDs are
//! equal exactly when their canonical strings are equal.
//!
//! # Length
//!
//! The standard says implementations MUST accept IDs of up to 2048 bytes and
//! SHOULD NOT generate longer ones. This module rejects anything longer than
//! 2048 bytes ([`SpiffeIdError::IdTooLong`]), which bounds the work done on
//! untrusted input; some other libraries accept longer IDs.
//!
//! # Trust-domain IDs
//!
//! `spiffe://example.org` (empty path) is a valid SPIFFE ID that names the
//! trust domain itself (a signing authority's ID, for example). A workload's
//! X.509-SVID must carry an ID with a non-empty path; use
//! [`SpiffeId::has_path`] / [`SpiffeId::is_trust_domain_id`] to enforce that.
//!
//! # Example
//!
//! ```
//! use proxyless::identity::{SpiffeId, SpiffeIdError, TrustDomain};
//!
//! let id: SpiffeId = "spiffe://example.org/ns/prod/sa/web".parse()?;
//! assert_eq!(id.trust_domain().as_str(), "example.org");
//! assert_eq!(id.path(), "/ns/prod/sa/web");
//! assert!(id.has_path());
//! assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "prod", "sa", "web"]);
//!
//! // The scheme is case-insensitive and canonicalised to lowercase.
//! let same = SpiffeId::parse("SPIFFE://example.org/ns/prod/sa/web")?;
//! assert_eq!(same, id);
//! assert_eq!(same.to_string(), "spiffe://example.org/ns/prod/sa/web");
//!
//! // An uppercase trust domain is rejected rather than folded.
//! assert!(matches!(
//!     SpiffeId::parse("spiffe://Example.org/x"),
//!     Err(SpiffeIdError::UppercaseTrustDomain { .. })
//! ));
//!
//! // Build an ID from a trust domain and a path.
//! let td = TrustDomain::parse("example.org")?;
//! assert_eq!(SpiffeId::new(&td, "/ns/prod/sa/web")?, id);
//! assert!(td.to_spiffe_id().is_trust_domain_id());
//! # Ok::<(), SpiffeIdError>(())
//! ```

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Maximum length in bytes of a whole SPIFFE ID, scheme included
/// (SPIFFE ID standard §2.3).
pub const MAX_ID_LEN: usize = 2048;

/// Maximum length in bytes of a trust domain name (SPIFFE ID standard §2.3,
/// from RFC 3986's limit on the `host` component).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The canonical scheme prefix.
const SCHEME: &str = "spiffe://";

/// How many bytes of the input an error keeps for its message.
const EXCERPT_LEN: usize = 64;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a string is not a valid [`SpiffeId`] or [`TrustDomain`].
///
/// Every variant carries `input`: the rejected input, cut to its first 64
/// bytes (on a character boundary) with `...` appended when it was longer.
/// Positions (`position`) are byte offsets into the full, original input (for
/// [`SpiffeId::new`], into the candidate ID `spiffe://<td><path>`).
///
/// The [`Display`](fmt::Display) output quotes the input and names the rule
/// that failed, e.g.
/// `"spiffe://example.org/" violates the SPIFFE ID standard: the path must not end with "/"`.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpiffeIdError {
    /// The input is the empty string.
    Empty {
        /// The (empty) input.
        input: String,
    },
    /// The input does not start with the `spiffe://` scheme and separator
    /// (matched case-insensitively), e.g. `https://...` or `spiffe:/...`.
    WrongScheme {
        /// The input, possibly truncated.
        input: String,
    },
    /// The authority (trust domain) after `spiffe://` is empty, e.g.
    /// `spiffe:///x`.
    MissingTrustDomain {
        /// The input, possibly truncated.
        input: String,
    },
    /// The authority has a userinfo part (`user@example.org`).
    HasUserInfo {
        /// The input, possibly truncated.
        input: String,
    },
    /// The authority has a port or a `:` delimiter (`example.org:8443`).
    HasPort {
        /// The input, possibly truncated.
        input: String,
        /// Byte offset of the `:`.
        position: usize,
    },
    /// The trust domain contains an uppercase ASCII letter; trust domains
    /// MUST be lowercase and are not folded by this module.
    UppercaseTrustDomain {
        /// The input, possibly truncated.
        input: String,
        /// The offending letter.
        ch: char,
        /// Byte offset of the letter.
        position: usize,
    },
    /// The trust domain contains a character outside `[a-z0-9.-_]`.
    BadTrustDomainChar {
        /// The input, possibly truncated.
        input: String,
        /// The offending character.
        ch: char,
        /// Byte offset of the character.
        position: usize,
    },
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    TrustDomainTooLong {
        /// The input, possibly truncated.
        input: String,
        /// Length of the trust domain in bytes.
        len: usize,
    },
    /// The ID is longer than [`MAX_ID_LEN`] bytes.
    IdTooLong {
        /// The input, possibly truncated.
        input: String,
        /// Length of the ID in bytes.
        len: usize,
    },
    /// The input contains a `%` (percent-encoding is not allowed anywhere in
    /// a SPIFFE ID).
    PercentEncoded {
        /// The input, possibly truncated.
        input: String,
        /// Byte offset of the `%`.
        position: usize,
    },
    /// The URI has a query component (`?...`).
    HasQuery {
        /// The input, possibly truncated.
        input: String,
        /// Byte offset of the `?`.
        position: usize,
    },
    /// The URI has a fragment component (`#...`).
    HasFragment {
        /// The input, possibly truncated.
        input: String,
        /// Byte offset of the `#`.
        position: usize,
    },
    /// The path has an empty segment (`//`).
    EmptySegment {
        /// The input, possibly truncated.
        input: String,
        /// Byte offset of the `/` that closes the empty segment.
        position: usize,
    },
    /// The path has a segment that is exactly `.` or `..`.
    DotSegment {
        /// The input, possibly truncated.
        input: String,
        /// The segment: `"."` or `".."`.
        segment: &'static str,
        /// Byte offset of the segment's first character.
        position: usize,
    },
    /// A path segment contains a character outside `[a-zA-Z0-9.-_]`.
    BadPathChar {
        /// The input, possibly truncated.
        input: String,
        /// The offending character.
        ch: char,
        /// Byte offset of the character.
        position: usize,
    },
    /// The path ends with `/` (this includes the path `/` alone).
    TrailingSlash {
        /// The input, possibly truncated.
        input: String,
    },
    /// [`SpiffeId::new`] was given a path that is neither empty nor starts
    /// with `/`.
    RelativePath {
        /// The path given, possibly truncated.
        input: String,
    },
    /// [`TrustDomain::parse`] was given a SPIFFE ID with a non-empty path;
    /// a trust domain's ID has no path.
    UnexpectedPath {
        /// The input, possibly truncated.
        input: String,
    },
}

impl SpiffeIdError {
    /// The rejected input, cut to its first 64 bytes with `...` appended
    /// when it was longer.
    pub fn input(&self) -> &str {
        match self {
            Self::Empty { input }
            | Self::WrongScheme { input }
            | Self::MissingTrustDomain { input }
            | Self::HasUserInfo { input }
            | Self::HasPort { input, .. }
            | Self::UppercaseTrustDomain { input, .. }
            | Self::BadTrustDomainChar { input, .. }
            | Self::TrustDomainTooLong { input, .. }
            | Self::IdTooLong { input, .. }
            | Self::PercentEncoded { input, .. }
            | Self::HasQuery { input, .. }
            | Self::HasFragment { input, .. }
            | Self::EmptySegment { input, .. }
            | Self::DotSegment { input, .. }
            | Self::BadPathChar { input, .. }
            | Self::TrailingSlash { input }
            | Self::RelativePath { input }
            | Self::UnexpectedPath { input } => input,
        }
    }
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RelativePath { input } => {
                return write!(
                    f,
                    "SPIFFE ID path {input:?} is invalid: it must be empty or start with \"/\""
                );
            }
            Self::UnexpectedPath { input } => {
                return write!(
                    f,
                    "{input:?} is not a valid trust domain: it is a SPIFFE ID with a path"
                );
            }
            _ => {}
        }
        write!(f, "{:?} violates the SPIFFE ID standard: ", self.input())?;
        match self {
            Self::Empty { .. } => f.write_str("it is empty"),
            Self::WrongScheme { .. } => f.write_str("the scheme must be \"spiffe://\""),
            Self::MissingTrustDomain { .. } => f.write_str("the trust domain is missing"),
            Self::HasUserInfo { .. } => {
                f.write_str("the trust domain must not have a userinfo part (\"...@\")")
            }
            Self::HasPort { position, .. } => write!(
                f,
                "the trust domain must not have a port or \":\" (at byte {position})"
            ),
            Self::UppercaseTrustDomain { ch, position, .. } => write!(
                f,
                "the trust domain must be lowercase (found {ch:?} at byte {position})"
            ),
            Self::BadTrustDomainChar { ch, position, .. } => write!(
                f,
                "the trust domain may only contain [a-z0-9.-_] (found {ch:?} at byte {position})"
            ),
            Self::TrustDomainTooLong { len, .. } => write!(
                f,
                "the trust domain is {len} bytes long, more than the {MAX_TRUST_DOMAIN_LEN}-byte limit"
            ),
            Self::IdTooLong { len, .. } => write!(
                f,
                "it is {len} bytes long, more than the {MAX_ID_LEN}-byte limit"
            ),
            Self::PercentEncoded { position, .. } => write!(
                f,
                "percent-encoding is not allowed (\"%\" at byte {position})"
            ),
            Self::HasQuery { position, .. } => write!(
                f,
                "a query component is not allowed (\"?\" at byte {position})"
            ),
            Self::HasFragment { position, .. } => write!(
                f,
                "a fragment component is not allowed (\"#\" at byte {position})"
            ),
            Self::EmptySegment { position, .. } => write!(
                f,
                "the path must not contain an empty segment (\"//\" at byte {position})"
            ),
            Self::DotSegment {
                segment, position, ..
            } => write!(
                f,
                "the path must not contain a {segment:?} segment (at byte {position})"
            ),
            Self::BadPathChar { ch, position, .. } => write!(
                f,
                "path segments may only contain [a-zA-Z0-9.-_] (found {ch:?} at byte {position})"
            ),
            Self::TrailingSlash { .. } => f.write_str("the path must not end with \"/\""),
            // Handled above.
            Self::RelativePath { .. } | Self::UnexpectedPath { .. } => Ok(()),
        }
    }
}

impl std::error::Error for SpiffeIdError {}

/// The first `EXCERPT_LEN` bytes of `s` (cut on a char boundary), with `...`
/// appended when `s` was longer.
fn excerpt(s: &str) -> String {
    if s.len() <= EXCERPT_LEN {
        return s.to_owned();
    }
    let mut end = EXCERPT_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 3);
    out.push_str(s.get(..end).unwrap_or_default());
    out.push_str("...");
    out
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Whether `c` may appear in a trust domain.
fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

/// Whether `c` may appear in a path segment.
fn is_path_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

/// Validates the trust domain `td`, which starts at byte `offset` of `input`.
fn check_trust_domain(input: &str, td: &str, offset: usize) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain {
            input: excerpt(input),
        });
    }
    if td.contains('@') {
        return Err(SpiffeIdError::HasUserInfo {
            input: excerpt(input),
        });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong {
            input: excerpt(input),
            len: td.len(),
        });
    }
    for (i, ch) in td.char_indices() {
        if is_trust_domain_char(ch) {
            continue;
        }
        let position = offset + i;
        let input = excerpt(input);
        return Err(match ch {
            'A'..='Z' => SpiffeIdError::UppercaseTrustDomain {
                input,
                ch,
                position,
            },
            ':' => SpiffeIdError::HasPort { input, position },
            '%' => SpiffeIdError::PercentEncoded { input, position },
            _ => SpiffeIdError::BadTrustDomainChar {
                input,
                ch,
                position,
            },
        });
    }
    Ok(())
}

/// Checks one complete path segment `input[start..end]`.
fn check_segment(input: &str, start: usize, end: usize) -> Result<(), SpiffeIdError> {
    let dots = match input.get(start..end) {
        Some(".") => ".",
        Some("..") => "..",
        _ => return Ok(()),
    };
    Err(SpiffeIdError::DotSegment {
        input: excerpt(input),
        segment: dots,
        position: start,
    })
}

/// Validates the path, query and fragment: everything of `input` from byte
/// `start` on. `start` must be a char boundary.
fn check_path(input: &str, start: usize) -> Result<(), SpiffeIdError> {
    let path = input.get(start..).unwrap_or_default();
    if path.is_empty() {
        return Ok(());
    }
    // Start of the current segment, as an offset into `input`.
    let mut seg_start = start;
    for (i, ch) in path.char_indices() {
        let position = start + i;
        match ch {
            '/' => {
                if i > 0 {
                    if seg_start == position {
                        return Err(SpiffeIdError::EmptySegment {
                            input: excerpt(input),
                            position,
                        });
                    }
                    check_segment(input, seg_start, position)?;
                }
                seg_start = position + 1;
            }
            '?' => {
                return Err(SpiffeIdError::HasQuery {
                    input: excerpt(input),
                    position,
                });
            }
            '#' => {
                return Err(SpiffeIdError::HasFragment {
                    input: excerpt(input),
                    position,
                });
            }
            '%' => {
                return Err(SpiffeIdError::PercentEncoded {
                    input: excerpt(input),
                    position,
                });
            }
            c if is_path_char(c) => {}
            _ => {
                return Err(SpiffeIdError::BadPathChar {
                    input: excerpt(input),
                    ch,
                    position,
                });
            }
        }
    }
    // `path` is non-empty and, having passed the loop, starts with '/'.
    if seg_start == input.len() {
        return Err(SpiffeIdError::TrailingSlash {
            input: excerpt(input),
        });
    }
    check_segment(input, seg_start, input.len())
}

/// Validates a whole SPIFFE ID and returns the byte offset where its trust
/// domain ends (and its path starts).
fn validate_id(input: &str) -> Result<usize, SpiffeIdError> {
    if input.is_empty() {
        return Err(SpiffeIdError::Empty {
            input: String::new(),
        });
    }
    if input.len() > MAX_ID_LEN {
        return Err(SpiffeIdError::IdTooLong {
            input: excerpt(input),
            len: input.len(),
        });
    }
    let scheme_ok = input
        .as_bytes()
        .get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME.as_bytes()));
    if !scheme_ok {
        return Err(SpiffeIdError::WrongScheme {
            input: excerpt(input),
        });
    }
    // The scheme is ASCII, so this is a char boundary.
    let rest = input.get(SCHEME.len()..).unwrap_or_default();
    let td_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let td = rest.get(..td_len).unwrap_or_default();
    check_trust_domain(input, td, SCHEME.len())?;
    let td_end = SCHEME.len() + td_len;
    check_path(input, td_end)?;
    Ok(td_end)
}

// ---------------------------------------------------------------------------
// TrustDomain
// ---------------------------------------------------------------------------

/// A validated SPIFFE trust domain name, such as `example.org`.
///
/// Non-empty, at most [`MAX_TRUST_DOMAIN_LEN`] bytes, lowercase ASCII letters,
/// digits, `.`, `-` and `_` only. See the [module docs](self) for the rules.
///
/// ```
/// use proxyless::identity::TrustDomain;
///
/// let td: TrustDomain = "example.org".parse()?;
/// assert_eq!(td, TrustDomain::parse("spiffe://example.org")?);
/// assert_eq!(td.as_str(), "example.org");
/// assert_eq!(td.id_string(), "spiffe://example.org");
/// assert!(TrustDomain::parse("Example.org").is_err());
/// # Ok::<(), proxyless::identity::SpiffeIdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a trust domain given either as a bare name (`example.org`) or
    /// as a trust-domain SPIFFE ID (`spiffe://example.org`).
    ///
    /// Input containing `://` is parsed as a SPIFFE ID (so `https://x` fails
    /// with [`SpiffeIdError::WrongScheme`]) and must have an empty path
    /// ([`SpiffeIdError::UnexpectedPath`] otherwise). Anything else is
    /// validated as a bare name.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.contains("://") {
            let id = SpiffeId::parse(input)?;
            if id.has_path() {
                return Err(SpiffeIdError::UnexpectedPath {
                    input: excerpt(input),
                });
            }
            return Ok(id.td);
        }
        if input.is_empty() {
            return Err(SpiffeIdError::Empty {
                input: String::new(),
            });
        }
        check_trust_domain(input, input, 0)?;
        Ok(Self {
            name: input.to_owned(),
        })
    }

    /// The trust domain name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The trust domain's SPIFFE ID as a string: `spiffe://<trust-domain>`.
    pub fn id_string(&self) -> String {
        let mut s = String::with_capacity(SCHEME.len() + self.name.len());
        s.push_str(SCHEME);
        s.push_str(&self.name);
        s
    }

    /// The trust domain's SPIFFE ID (`spiffe://<trust-domain>`, empty path).
    pub fn to_spiffe_id(&self) -> SpiffeId {
        SpiffeId {
            id: self.id_string(),
            td: self.clone(),
        }
    }

    /// Consumes the trust domain and returns its name.
    pub fn into_string(self) -> String {
        self.name
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustDomain").field(&self.name).finish()
    }
}

/// Writes the bare name, e.g. `example.org`.
impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Same as [`TrustDomain::parse`].
impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Same as [`TrustDomain::parse`].
impl TryFrom<&str> for TrustDomain {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

/// Same as [`TrustDomain::parse`].
impl TryFrom<String> for TrustDomain {
    type Error = SpiffeIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

// ---------------------------------------------------------------------------
// SpiffeId
// ---------------------------------------------------------------------------

/// A validated SPIFFE ID, stored in canonical form
/// (`spiffe://<trust-domain><path>` with a lowercase scheme).
///
/// Equality, hashing and ordering are those of the canonical string
/// ([`SpiffeId::as_str`]); `SpiffeId` implements [`Borrow<str>`] so sets and
/// maps keyed by IDs can be queried with a `&str`.
///
/// ```
/// use proxyless::identity::SpiffeId;
///
/// let id = SpiffeId::parse("spiffe://example.org/payments/web-fe")?;
/// assert_eq!(id.as_str(), "spiffe://example.org/payments/web-fe");
/// assert_eq!(id.trust_domain().as_str(), "example.org");
/// assert_eq!(id.path(), "/payments/web-fe");
///
/// let root = SpiffeId::parse("spiffe://example.org")?;
/// assert!(root.is_trust_domain_id());
/// assert_eq!(root.path(), "");
/// # Ok::<(), proxyless::identity::SpiffeIdError>(())
/// ```
#[derive(Clone)]
pub struct SpiffeId {
    /// The canonical string.
    id: String,
    /// The trust domain (a copy of `id[9..9 + td.len()]`).
    td: TrustDomain,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    ///
    /// The scheme is matched case-insensitively and canonicalised to
    /// `spiffe://`; an uppercase trust domain is rejected. See the
    /// [module docs](self) for every rule.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let td_end = validate_id(input)?;
        Ok(Self::from_validated(input, td_end))
    }

    /// Builds the ID `spiffe://<trust_domain><path>`.
    ///
    /// `path` must be empty (giving the trust domain's own ID) or start with
    /// `/` ([`SpiffeIdError::RelativePath`] otherwise), and must obey the
    /// path rules; the whole ID must fit in [`MAX_ID_LEN`] bytes.
    pub fn new(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        if !(path.is_empty() || path.starts_with('/')) {
            return Err(SpiffeIdError::RelativePath {
                input: excerpt(path),
            });
        }
        let mut id = String::with_capacity(SCHEME.len() + trust_domain.name.len() + path.len());
        id.push_str(SCHEME);
        id.push_str(&trust_domain.name);
        id.push_str(path);
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::IdTooLong {
                input: excerpt(&id),
                len: id.len(),
            });
        }
        check_path(&id, SCHEME.len() + trust_domain.name.len())?;
        Ok(Self {
            id,
            td: trust_domain.clone(),
        })
    }

    /// Builds the value from an input that `validate_id` accepted.
    fn from_validated(input: &str, td_end: usize) -> Self {
        let mut id = String::with_capacity(input.len());
        id.push_str(SCHEME);
        id.push_str(input.get(SCHEME.len()..).unwrap_or_default());
        let name = input
            .get(SCHEME.len()..td_end)
            .unwrap_or_default()
            .to_owned();
        Self {
            id,
            td: TrustDomain { name },
        }
    }

    /// The canonical string form, e.g. `spiffe://example.org/ns/prod/sa/web`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The path: empty, or `/`-prefixed segments such as `/ns/prod/sa/web`.
    pub fn path(&self) -> &str {
        self.id
            .get(SCHEME.len() + self.td.name.len()..)
            .unwrap_or_default()
    }

    /// The path's segments, e.g. `["ns", "prod", "sa", "web"]`; none for a
    /// trust-domain ID.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.path().split('/').skip(1)
    }

    /// Whether the path is non-empty. X.509-SVIDs of workloads (leaf
    /// certificates) must carry an ID with a path.
    pub fn has_path(&self) -> bool {
        !self.path().is_empty()
    }

    /// Whether this is a trust domain's own ID (`spiffe://<td>`, empty
    /// path), as used by signing authorities. The opposite of
    /// [`SpiffeId::has_path`].
    pub fn is_trust_domain_id(&self) -> bool {
        !self.has_path()
    }

    /// Whether this ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.td == *trust_domain
    }

    /// Consumes the ID and returns its canonical string.
    pub fn into_string(self) -> String {
        self.id
    }
}

impl PartialEq for SpiffeId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for SpiffeId {}

impl Hash for SpiffeId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must match `str`'s hash for the `Borrow<str>` impl.
        self.id.as_str().hash(state);
    }
}

impl PartialOrd for SpiffeId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpiffeId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.id.cmp(&other.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.id).finish()
    }
}

/// Writes the canonical string.
impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Same as [`SpiffeId::parse`].
impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Same as [`SpiffeId::parse`].
impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

/// Same as [`SpiffeId::parse`]; reuses the string's buffer when it is
/// already canonical.
impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let td_end = validate_id(&s)?;
        if !s.starts_with(SCHEME) {
            return Ok(Self::from_validated(&s, td_end));
        }
        let name = s.get(SCHEME.len()..td_end).unwrap_or_default().to_owned();
        Ok(Self {
            id: s,
            td: TrustDomain { name },
        })
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Borrow<str> for SpiffeId {
    fn borrow(&self) -> &str {
        &self.id
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn err(s: &str) -> SpiffeIdError {
        match SpiffeId::parse(s) {
            Ok(id) => panic!("{s:?} should be rejected, parsed as {id:?}"),
            Err(e) => e,
        }
    }

    fn ok(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s:?} should be valid: {e}"))
    }

    #[test]
    fn valid_vectors() {
        for (input, td, path) in [
            (
                "spiffe://example.org/ns/prod/sa/web",
                "example.org",
                "/ns/prod/sa/web",
            ),
            ("spiffe://10.0.0.1/svc", "10.0.0.1", "/svc"),
            ("spiffe://my_td.x/a.b-c_d/E9", "my_td.x", "/a.b-c_d/E9"),
            ("spiffe://example.org/a..b", "example.org", "/a..b"),
            ("spiffe://example.org", "example.org", ""),
            (
                "spiffe://staging.example.com/payments/mysql",
                "staging.example.com",
                "/payments/mysql",
            ),
            (
                "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
                "example.com",
                "/9eebccd2-12bf-40a6-b262-65fe0487d453",
            ),
            ("spiffe://a/.hidden/...", "a", "/.hidden/..."),
            ("spiffe://-._/-", "-._", "/-"),
        ] {
            let id = ok(input);
            assert_eq!(id.as_str(), input);
            assert_eq!(id.to_string(), input);
            assert_eq!(id.trust_domain().as_str(), td);
            assert_eq!(id.path(), path);
            assert_eq!(id.has_path(), !path.is_empty());
            assert_eq!(id.is_trust_domain_id(), path.is_empty());
            assert_eq!(SpiffeId::try_from(input.to_owned()).unwrap(), id);
            assert_eq!(SpiffeId::try_from(input).unwrap(), id);
            assert_eq!(input.parse::<SpiffeId>().unwrap(), id);
            let td = TrustDomain::parse(td).unwrap();
            assert_eq!(SpiffeId::new(&td, path).unwrap(), id);
            assert!(id.is_member_of(&td));
        }
    }

    #[test]
    fn trust_domain_id_is_valid_but_has_no_path() {
        let id = ok("spiffe://example.org");
        assert!(id.is_trust_domain_id());
        assert!(!id.has_path());
        assert_eq!(id.segments().count(), 0);
        assert_eq!(
            id,
            TrustDomain::parse("example.org").unwrap().to_spiffe_id()
        );
    }

    #[test]
    fn segments() {
        let id = ok("spiffe://example.org/ns/prod/sa/web");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "prod", "sa", "web"]
        );
    }

    #[test]
    fn scheme_is_case_insensitive_and_canonicalised() {
        for input in [
            "SPIFFE://example.org/x",
            "Spiffe://example.org/x",
            "sPiFfE://example.org/x",
        ] {
            let id = ok(input);
            assert_eq!(id.as_str(), "spiffe://example.org/x");
            assert_eq!(id, ok("spiffe://example.org/x"));
            assert_eq!(SpiffeId::try_from(input.to_owned()).unwrap(), id);
        }
    }

    #[test]
    fn uppercase_trust_domain_is_rejected() {
        assert_eq!(
            err("spiffe://Example.org/x"),
            SpiffeIdError::UppercaseTrustDomain {
                input: "spiffe://Example.org/x".into(),
                ch: 'E',
                position: 9,
            }
        );
        assert!(matches!(
            err("SPIFFE://EXAMPLE.ORG/x"),
            SpiffeIdError::UppercaseTrustDomain {
                ch: 'E',
                position: 9,
                ..
            }
        ));
        assert!(matches!(
            TrustDomain::parse("example.Org"),
            Err(SpiffeIdError::UppercaseTrustDomain {
                ch: 'O',
                position: 8,
                ..
            })
        ));
    }

    #[test]
    fn path_is_case_sensitive() {
        assert_ne!(ok("spiffe://example.org/A"), ok("spiffe://example.org/a"));
    }

    #[test]
    fn wrong_scheme() {
        for input in [
            "https://example.org/x",
            "spiffe:/example.org/x",
            "spiffe:example.org/x",
            "spiffe//example.org/x",
            "spiffe",
            "spiffe:/",
            "example.org/x",
            " spiffe://example.org/x",
            "spiffé://example.org/x",
        ] {
            assert!(
                matches!(err(input), SpiffeIdError::WrongScheme { .. }),
                "{input:?}: {:?}",
                err(input)
            );
        }
    }

    #[test]
    fn empty_input() {
        assert_eq!(
            err(""),
            SpiffeIdError::Empty {
                input: String::new()
            }
        );
        assert_eq!(
            TrustDomain::parse(""),
            Err(SpiffeIdError::Empty {
                input: String::new()
            })
        );
    }

    #[test]
    fn missing_trust_domain() {
        for input in [
            "spiffe:///x",
            "spiffe://",
            "spiffe://?x",
            "spiffe://#x",
            "spiffe:///",
        ] {
            assert!(
                matches!(err(input), SpiffeIdError::MissingTrustDomain { .. }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn path_structure_errors() {
        assert_eq!(
            err("spiffe://example.org/"),
            SpiffeIdError::TrailingSlash {
                input: "spiffe://example.org/".into()
            }
        );
        assert!(matches!(
            err("spiffe://example.org/a/"),
            SpiffeIdError::TrailingSlash { .. }
        ));
        assert_eq!(
            err("spiffe://example.org//x"),
            SpiffeIdError::EmptySegment {
                input: "spiffe://example.org//x".into(),
                position: 21
            }
        );
        assert!(matches!(
            err("spiffe://example.org/a//b"),
            SpiffeIdError::EmptySegment { .. }
        ));
        assert!(matches!(
            err("spiffe://example.org//"),
            SpiffeIdError::EmptySegment { .. }
        ));
        assert_eq!(
            err("spiffe://example.org/a/./b"),
            SpiffeIdError::DotSegment {
                input: "spiffe://example.org/a/./b".into(),
                segment: ".",
                position: 23,
            }
        );
        for input in [
            "spiffe://example.org/.",
            "spiffe://example.org/..",
            "spiffe://example.org/a/..",
            "spiffe://example.org/../a",
        ] {
            assert!(
                matches!(err(input), SpiffeIdError::DotSegment { .. }),
                "{input:?}"
            );
        }
        assert!(matches!(
            err("spiffe://example.org/a/../b"),
            SpiffeIdError::DotSegment {
                segment: "..",
                position: 23,
                ..
            }
        ));
    }

    #[test]
    fn authority_errors() {
        assert_eq!(
            err("spiffe://example.org:8443/x"),
            SpiffeIdError::HasPort {
                input: "spiffe://example.org:8443/x".into(),
                position: 20
            }
        );
        assert!(matches!(
            err("spiffe://example.org:/x"),
            SpiffeIdError::HasPort { .. }
        ));
        assert!(matches!(
            err("spiffe://example.org:"),
            SpiffeIdError::HasPort { .. }
        ));
        assert_eq!(
            err("spiffe://u@example.org/x"),
            SpiffeIdError::HasUserInfo {
                input: "spiffe://u@example.org/x".into()
            }
        );
        assert!(matches!(
            err("spiffe://u:pw@example.org/x"),
            SpiffeIdError::HasUserInfo { .. }
        ));
        assert!(matches!(
            err("spiffe://@example.org"),
            SpiffeIdError::HasUserInfo { .. }
        ));
        assert_eq!(
            err("spiffe://[::1]/x"),
            SpiffeIdError::BadTrustDomainChar {
                input: "spiffe://[::1]/x".into(),
                ch: '[',
                position: 9,
            }
        );
        assert!(matches!(
            err("spiffe://ex%41mple.org/x"),
            SpiffeIdError::PercentEncoded { position: 11, .. }
        ));
        for (input, ch) in [
            ("spiffe://exa mple.org/x", ' '),
            ("spiffe://exämple.org/x", 'ä'),
            ("spiffe://example.org\\x", '\\'),
            ("spiffe://ex+ample.org", '+'),
            ("spiffe://ex~ample.org", '~'),
            ("spiffe://example.org\u{0}", '\u{0}'),
        ] {
            assert!(
                matches!(err(input), SpiffeIdError::BadTrustDomainChar { ch: c, .. } if c == ch),
                "{input:?}: {:?}",
                err(input)
            );
        }
    }

    #[test]
    fn query_fragment_and_bad_path_chars() {
        assert_eq!(
            err("spiffe://example.org/x?y=1"),
            SpiffeIdError::HasQuery {
                input: "spiffe://example.org/x?y=1".into(),
                position: 22
            }
        );
        assert!(matches!(
            err("spiffe://example.org?y=1"),
            SpiffeIdError::HasQuery { .. }
        ));
        assert!(matches!(
            err("spiffe://example.org/x?"),
            SpiffeIdError::HasQuery { .. }
        ));
        assert_eq!(
            err("spiffe://example.org/x#f"),
            SpiffeIdError::HasFragment {
                input: "spiffe://example.org/x#f".into(),
                position: 22
            }
        );
        assert!(matches!(
            err("spiffe://example.org#f"),
            SpiffeIdError::HasFragment { .. }
        ));
        assert_eq!(
            err("spiffe://example.org/x%20y"),
            SpiffeIdError::PercentEncoded {
                input: "spiffe://example.org/x%20y".into(),
                position: 22
            }
        );
        assert_eq!(
            err("spiffe://example.org/a~b"),
            SpiffeIdError::BadPathChar {
                input: "spiffe://example.org/a~b".into(),
                ch: '~',
                position: 22
            }
        );
        assert_eq!(
            err("spiffe://example.org/ü"),
            SpiffeIdError::BadPathChar {
                input: "spiffe://example.org/ü".into(),
                ch: 'ü',
                position: 21
            }
        );
        for (input, ch) in [
            ("spiffe://example.org/a b", ' '),
            ("spiffe://example.org/a:b", ':'),
            ("spiffe://example.org/a@b", '@'),
            ("spiffe://example.org/a+b", '+'),
            ("spiffe://example.org/a\\b", '\\'),
            ("spiffe://example.org/\u{1F600}", '\u{1F600}'),
        ] {
            assert!(
                matches!(err(input), SpiffeIdError::BadPathChar { ch: c, .. } if c == ch),
                "{input:?}"
            );
        }
    }

    #[test]
    fn trust_domain_length_boundary() {
        let td255 = "a".repeat(255);
        let td256 = "a".repeat(256);
        let id = ok(&format!("spiffe://{td255}/x"));
        assert_eq!(id.trust_domain().as_str(), td255);
        assert_eq!(TrustDomain::parse(&td255).unwrap().as_str(), td255);
        assert!(matches!(
            err(&format!("spiffe://{td256}/x")),
            SpiffeIdError::TrustDomainTooLong { len: 256, .. }
        ));
        assert!(matches!(
            TrustDomain::parse(&td256),
            Err(SpiffeIdError::TrustDomainTooLong { len: 256, .. })
        ));
    }

    /// An ID of exactly `len` bytes with a short trust domain.
    fn id_of_len(len: usize) -> String {
        let mut s = String::from("spiffe://example.org");
        while s.len() < len {
            let room = len - s.len();
            s.push('/');
            // A segment of at most 100 chars, never empty.
            let seg = (room - 1).clamp(1, 100);
            s.push_str(&"s".repeat(seg));
        }
        assert_eq!(s.len(), len);
        s
    }

    #[test]
    fn id_length_boundary() {
        let id2048 = id_of_len(2048);
        assert_eq!(ok(&id2048).as_str().len(), 2048);
        let id2049 = id_of_len(2049);
        assert_eq!(
            err(&id2049),
            SpiffeIdError::IdTooLong {
                input: excerpt(&id2049),
                len: 2049
            }
        );
        // The reference's 2121-byte ID.
        assert!(matches!(
            err(&id_of_len(2121)),
            SpiffeIdError::IdTooLong { len: 2121, .. }
        ));

        // Same through `new`.
        let td = TrustDomain::parse("example.org").unwrap();
        let path = id2048.strip_prefix("spiffe://example.org").unwrap();
        assert_eq!(SpiffeId::new(&td, path).unwrap().as_str(), id2048);
        let path = id2049.strip_prefix("spiffe://example.org").unwrap();
        assert!(matches!(
            SpiffeId::new(&td, path),
            Err(SpiffeIdError::IdTooLong { len: 2049, .. })
        ));

        // Longest trust domain plus a path still fits.
        let long = format!(
            "spiffe://{}/{}",
            "t".repeat(255),
            "p".repeat(2048 - 9 - 255 - 1)
        );
        assert_eq!(ok(&long).as_str().len(), 2048);
    }

    #[test]
    fn trust_domain_parse_forms() {
        let td = TrustDomain::parse("example.org").unwrap();
        assert_eq!(td.as_str(), "example.org");
        assert_eq!(td.to_string(), "example.org");
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(TrustDomain::parse("spiffe://example.org").unwrap(), td);
        assert_eq!(TrustDomain::parse("SPIFFE://example.org").unwrap(), td);
        assert_eq!("example.org".parse::<TrustDomain>().unwrap(), td);
        assert_eq!(TrustDomain::try_from("example.org").unwrap(), td);
        assert_eq!(
            TrustDomain::try_from(String::from("example.org")).unwrap(),
            td
        );
        assert_eq!(format!("{td:?}"), "TrustDomain(\"example.org\")");
        assert_eq!(TrustDomain::parse("10.0.0.1").unwrap().as_str(), "10.0.0.1");

        assert!(matches!(
            TrustDomain::parse("spiffe://example.org/x"),
            Err(SpiffeIdError::UnexpectedPath { .. })
        ));
        assert!(matches!(
            TrustDomain::parse("spiffe://example.org/"),
            Err(SpiffeIdError::TrailingSlash { .. })
        ));
        assert!(matches!(
            TrustDomain::parse("https://example.org"),
            Err(SpiffeIdError::WrongScheme { .. })
        ));
        assert!(matches!(
            TrustDomain::parse("spiffe://"),
            Err(SpiffeIdError::MissingTrustDomain { .. })
        ));
        assert!(matches!(
            TrustDomain::parse("example.org:443"),
            Err(SpiffeIdError::HasPort { position: 11, .. })
        ));
        assert!(matches!(
            TrustDomain::parse("u@example.org"),
            Err(SpiffeIdError::HasUserInfo { .. })
        ));
        assert!(matches!(
            TrustDomain::parse("example.org/x"),
            Err(SpiffeIdError::BadTrustDomainChar {
                ch: '/',
                position: 11,
                ..
            })
        ));
        assert!(matches!(
            TrustDomain::parse("ex%41mple"),
            Err(SpiffeIdError::PercentEncoded { position: 2, .. })
        ));
        assert!(matches!(
            TrustDomain::parse("::1"),
            Err(SpiffeIdError::HasPort { position: 0, .. })
        ));
    }

    #[test]
    fn new_validates_path() {
        let td = TrustDomain::parse("example.org").unwrap();
        assert_eq!(
            SpiffeId::new(&td, "").unwrap().as_str(),
            "spiffe://example.org"
        );
        assert_eq!(
            SpiffeId::new(&td, "x"),
            Err(SpiffeIdError::RelativePath { input: "x".into() })
        );
        assert!(matches!(
            SpiffeId::new(&td, "?x"),
            Err(SpiffeIdError::RelativePath { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/"),
            Err(SpiffeIdError::TrailingSlash { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "//a"),
            Err(SpiffeIdError::EmptySegment { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/a/.."),
            Err(SpiffeIdError::DotSegment { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/a?b"),
            Err(SpiffeIdError::HasQuery { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/a#b"),
            Err(SpiffeIdError::HasFragment { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/a%20"),
            Err(SpiffeIdError::PercentEncoded { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/a@b"),
            Err(SpiffeIdError::BadPathChar { ch: '@', .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "/a:b"),
            Err(SpiffeIdError::BadPathChar { ch: ':', .. })
        ));
    }

    #[test]
    fn error_messages_quote_input_and_name_rule() {
        let msg = err("spiffe://example.org/").to_string();
        assert_eq!(
            msg,
            "\"spiffe://example.org/\" violates the SPIFFE ID standard: the path must not end with \"/\""
        );
        let msg = err("spiffe://Example.org/x").to_string();
        assert!(msg.contains("\"spiffe://Example.org/x\""), "{msg}");
        assert!(msg.contains("lowercase"), "{msg}");
        assert!(err("spiffe://example.org:1/x").to_string().contains("port"));
        assert!(
            err("spiffe://u@example.org/x")
                .to_string()
                .contains("userinfo")
        );
        assert!(
            err("spiffe://example.org/x?q")
                .to_string()
                .contains("query")
        );
        assert!(
            err("spiffe://example.org/x#f")
                .to_string()
                .contains("fragment")
        );
        assert!(
            err("spiffe://example.org/x%20")
                .to_string()
                .contains("percent")
        );
        assert!(err("https://x/y").to_string().contains("scheme"));
        let td = TrustDomain::parse("example.org").unwrap();
        let msg = SpiffeId::new(&td, "x").unwrap_err().to_string();
        assert!(msg.contains("\"x\"") && msg.contains("start with"), "{msg}");
        let msg = TrustDomain::parse("spiffe://example.org/x")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("trust domain"), "{msg}");

        // Every variant's message is non-empty and quotes the input.
        for e in [
            err(""),
            err("https://x"),
            err("spiffe:///x"),
            err("spiffe://a@b"),
            err("spiffe://a:1"),
            err("spiffe://A"),
            err("spiffe://a!"),
            err(&format!("spiffe://{}", "a".repeat(256))),
            err(&id_of_len(2049)),
            err("spiffe://a/%"),
            err("spiffe://a/?"),
            err("spiffe://a/#"),
            err("spiffe://a//b"),
            err("spiffe://a/."),
            err("spiffe://a/!"),
            err("spiffe://a/"),
        ] {
            let msg = e.to_string();
            assert!(msg.contains(&format!("{:?}", e.input())), "{msg}");
        }
    }

    #[test]
    fn long_input_is_truncated_in_error() {
        let long = format!("https://{}", "é".repeat(1000));
        let e = err(&long);
        assert!(e.input().len() <= EXCERPT_LEN + 3);
        assert!(e.input().ends_with("..."));
        assert!(long.starts_with(e.input().trim_end_matches("...")));
        assert!(e.to_string().len() < 200);

        // Multi-byte char straddling the cut point.
        let s = format!("{}{}", "a".repeat(EXCERPT_LEN - 1), "ü".repeat(10));
        let ex = excerpt(&s);
        assert_eq!(ex, format!("{}...", "a".repeat(EXCERPT_LEN - 1)));
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn equality_hash_ordering_borrow() {
        let a = ok("spiffe://example.org/a");
        let b = ok("spiffe://example.org/b");
        assert!(a < b);
        assert_eq!(a.clone(), a);
        let set: HashSet<SpiffeId> = [a.clone(), b.clone(), ok("SPIFFE://example.org/a")].into();
        assert_eq!(set.len(), 2);
        assert!(set.contains("spiffe://example.org/a"));
        assert_eq!(format!("{a:?}"), "SpiffeId(\"spiffe://example.org/a\")");
        assert_eq!(String::from(a.clone()), "spiffe://example.org/a");
        assert_eq!(a.clone().into_string(), "spiffe://example.org/a");
        assert_eq!(a.as_ref(), "spiffe://example.org/a");
    }

    #[test]
    fn errors_are_std_errors() {
        fn assert_error<E: std::error::Error + Clone + Eq + Send + Sync + 'static>() {}
        assert_error::<SpiffeIdError>();
    }
}
