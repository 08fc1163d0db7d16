//! Certificate reading shared by the bundle, SVID and verifier code: parsing with x509-parser,
//! the SPIFFE ID of a leaf, the SVID leaf rules, and time conversions. Nothing here checks a
//! signature: that is rustls-webpki's job in `verify.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME, Oid,
};

use super::error::VerifyError;
use crate::identity::SpiffeId;

/// Parses one DER certificate; trailing bytes are an error.
pub(super) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((&[], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!(
            "{} bytes of trailing data after the certificate",
            rest.len()
        )),
        Err(e) => Err(format!("not a DER X.509 certificate ({e})")),
    }
}

/// The SPIFFE ID of a leaf certificate, with the URI exactly as written in the certificate.
///
/// Rules: exactly one URI subjectAltName ([`VerifyError::NoUriSan`],
/// [`VerifyError::MultipleUriSans`]), holding a valid SPIFFE ID ([`VerifyError::InvalidId`]).
/// Other name types are allowed. An undecodable subjectAltName is
/// [`VerifyError::Malformed`]. The path rule (non-empty) is checked by [`check_leaf`].
pub(super) fn spiffe_id<'a>(
    cert: &X509Certificate<'a>,
) -> Result<(SpiffeId, &'a str), VerifyError> {
    let Some(ext) = extension(cert, &OID_X509_EXT_SUBJECT_ALT_NAME)? else {
        return Err(VerifyError::NoUriSan);
    };
    let san = match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => san,
        other => return Err(unparsed("subjectAltName", other)),
    };
    let mut uris = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            GeneralName::Invalid(..) => {
                return Err(VerifyError::Malformed {
                    reason: "the subjectAltName extension holds an undecodable name".to_owned(),
                });
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [] => Err(VerifyError::NoUriSan),
        [uri] => SpiffeId::parse(uri)
            .map(|id| (id, *uri))
            .map_err(VerifyError::InvalidId),
        more => Err(VerifyError::MultipleUriSans { count: more.len() }),
    }
}

/// The X.509-SVID rules for a leaf certificate that rustls-webpki does not check (X509-SVID
/// standard §4.1–4.3, §5.2), in this order: basicConstraints present with `cA=false`; keyUsage
/// present, without `keyCertSign` and `cRLSign`, with `digitalSignature`; the SPIFFE ID has a
/// non-empty path. extendedKeyUsage is left to rustls-webpki, which knows the role.
pub(super) fn check_leaf(cert: &X509Certificate<'_>, id: &SpiffeId) -> Result<(), VerifyError> {
    let bc = extension(cert, &OID_X509_EXT_BASIC_CONSTRAINTS)?
        .ok_or(VerifyError::MissingBasicConstraints)?;
    match bc.parsed_extension() {
        ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(VerifyError::LeafIsCa),
        ParsedExtension::BasicConstraints(_) => {}
        other => return Err(unparsed("basicConstraints", other)),
    }

    let ku = extension(cert, &OID_X509_EXT_KEY_USAGE)?.ok_or(VerifyError::MissingKeyUsage)?;
    match ku.parsed_extension() {
        ParsedExtension::KeyUsage(ku) => {
            if ku.key_cert_sign() {
                return Err(VerifyError::ForbiddenKeyUsage {
                    usage: "keyCertSign",
                });
            }
            if ku.crl_sign() {
                return Err(VerifyError::ForbiddenKeyUsage { usage: "cRLSign" });
            }
            if !ku.digital_signature() {
                return Err(VerifyError::MissingDigitalSignature);
            }
        }
        other => return Err(unparsed("keyUsage", other)),
    }

    if id.is_trust_domain_id() {
        return Err(VerifyError::IdIsTrustDomainOnly { id: id.clone() });
    }
    Ok(())
}

/// Whether the certificate is a CA: basicConstraints present with `cA=true`, and keyUsage, if
/// present, with `keyCertSign`. Returns the reason when it is not.
pub(super) fn check_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let bc = extension(cert, &OID_X509_EXT_BASIC_CONSTRAINTS)
        .map_err(|e| e.to_string())?
        .ok_or("it has no basicConstraints extension, so it is not a CA")?;
    match bc.parsed_extension() {
        ParsedExtension::BasicConstraints(bc) if bc.ca => {}
        ParsedExtension::BasicConstraints(_) => {
            return Err("its basicConstraints say cA=false, so it is not a CA".to_owned());
        }
        other => return Err(unparsed("basicConstraints", other).to_string()),
    }
    if let Some(ku) = extension(cert, &OID_X509_EXT_KEY_USAGE).map_err(|e| e.to_string())? {
        match ku.parsed_extension() {
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {}
            ParsedExtension::KeyUsage(_) => {
                return Err(
                    "its keyUsage lacks keyCertSign, so it cannot sign certificates".to_owned(),
                );
            }
            other => return Err(unparsed("keyUsage", other).to_string()),
        }
    }
    Ok(())
}

/// The one extension with this OID, if any; duplicates are [`VerifyError::Malformed`].
fn extension<'c, 'a>(
    cert: &'c X509Certificate<'a>,
    oid: &Oid<'_>,
) -> Result<Option<&'c X509Extension<'a>>, VerifyError> {
    cert.get_extension_unique(oid)
        .map_err(|e| VerifyError::Malformed {
            reason: format!("extension {oid}: {e}"),
        })
}

/// The error for an extension x509-parser could not decode as the expected type.
fn unparsed(name: &str, parsed: &ParsedExtension<'_>) -> VerifyError {
    let reason = match parsed.error() {
        Some(e) => format!("the {name} extension cannot be decoded ({e})"),
        None => format!("the {name} extension cannot be decoded"),
    };
    VerifyError::Malformed { reason }
}

/// A certificate's `notAfter` in seconds since the Unix epoch.
pub(super) fn not_after(cert: &X509Certificate<'_>) -> i64 {
    cert.validity().not_after.timestamp()
}

/// A certificate's `notBefore` in seconds since the Unix epoch.
pub(super) fn not_before(cert: &X509Certificate<'_>) -> i64 {
    cert.validity().not_before.timestamp()
}

/// A certificate's subject, for messages.
pub(super) fn subject(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "(empty subject)".to_owned()
    } else {
        subject
    }
}

/// The serial number as lowercase hex, without leading zero bytes (`"0"` for zero).
pub(super) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = raw.get(start..).unwrap_or_default();
    if digits.is_empty() {
        return "0".to_owned();
    }
    let mut out = String::with_capacity(digits.len() * 2);
    for b in digits {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Seconds since the Unix epoch, now (negative before 1970).
pub(super) fn unix_now() -> i64 {
    unix_from_system_time(SystemTime::now())
}

/// Seconds since the Unix epoch of a `SystemTime`, saturating.
pub(super) fn unix_from_system_time(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs())
            .map(|s| -s)
            .unwrap_or(i64::MIN),
    }
}

/// The `SystemTime` of a Unix timestamp; out-of-range values saturate at the epoch.
pub(super) fn system_time_from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Formats a Unix timestamp as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub(super) fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Year, month and day of a count of days since 1970-01-01 (H. Hinnant's `civil_from_days`).
/// No overflow for any `i64` day count derived from seconds.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_as_rfc3339_utc() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_577_836_800), "2020-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(format_unix(-1), "1969-12-31T23:59:59Z");
        // Extremes do not panic.
        let _ = format_unix(i64::MAX);
        let _ = format_unix(i64::MIN);
    }

    #[test]
    fn converts_system_time_both_ways() {
        for secs in [0, 1, 1_700_000_000, -86_400] {
            assert_eq!(unix_from_system_time(system_time_from_unix(secs)), secs);
        }
        let _ = system_time_from_unix(i64::MAX);
        let _ = system_time_from_unix(i64::MIN);
    }
}
