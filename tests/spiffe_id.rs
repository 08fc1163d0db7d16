//! Property tests for `proxyless::identity`: the parser never panics, valid
//! IDs round-trip, and a forbidden character anywhere is rejected.

use proptest::prelude::*;
use proxyless::identity::{SpiffeId, SpiffeIdError, TrustDomain};

fn is_td_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

/// A valid trust domain name.
fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

/// A valid path: zero to five segments, none `.` or `..`.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        "[a-zA-Z0-9._-]{1,12}".prop_filter("dot segment", |s| s != "." && s != ".."),
        0..6,
    )
    .prop_map(|segs| segs.iter().map(|s| format!("/{s}")).collect())
}

/// A character that must never appear in a trust domain (other than `/`,
/// which would just end the trust domain early).
fn forbidden_td_char() -> impl Strategy<Value = char> {
    prop_oneof![
        any::<char>(),
        (0x20u8..0x7f).prop_map(char::from),
        prop::sample::select(vec!['A', 'Z', ':', '@', '%', '?', '#', '[', ']', '~', ' ']),
    ]
    .prop_filter("allowed in a trust domain", |c| {
        !is_td_char(*c) && *c != '/'
    })
}

/// A character that must never appear in a path segment (other than `/`,
/// the separator).
fn forbidden_path_char() -> impl Strategy<Value = char> {
    prop_oneof![
        any::<char>(),
        (0x20u8..0x7f).prop_map(char::from),
        prop::sample::select(vec![':', '@', '%', '?', '#', '~', ' ', '\\', '\u{0}']),
    ]
    .prop_filter("allowed in a path", |c| !is_path_char(*c) && *c != '/')
}

/// Strings that look a lot like SPIFFE IDs, to reach deep into the parser.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        any::<String>().prop_map(|s| format!("spiffe://{s}")),
        "(?s)(spiffe|SPIFFE|http)?:?/{0,3}[a-zA-Z0-9._%?#@:/\\[\\]~ é-]{0,40}",
    ]
}

/// Checks the invariants of a successfully parsed ID.
fn check_parsed(input: &str, id: &SpiffeId) -> Result<(), TestCaseError> {
    prop_assert!(id.as_str().len() <= 2048);
    prop_assert!(id.as_str().eq_ignore_ascii_case(input));
    prop_assert!(id.as_str().starts_with("spiffe://"));
    prop_assert_eq!(
        format!("spiffe://{}{}", id.trust_domain(), id.path()),
        id.as_str()
    );
    prop_assert_eq!(&SpiffeId::parse(id.as_str()).unwrap(), id);
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in id_like()) {
        if let Ok(id) = SpiffeId::parse(&s) {
            check_parsed(&s, &id)?;
        }
        if let Ok(td) = TrustDomain::parse(&s) {
            prop_assert!(!td.as_str().is_empty() && td.as_str().len() <= 255);
        }
        if let Ok(td) = TrustDomain::parse("example.org") {
            let _ = SpiffeId::new(&td, &s);
        }
        // Messages must format without panicking, too.
        if let Err(e) = SpiffeId::parse(&s) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let s = String::from_utf8_lossy(&bytes);
        if let Ok(id) = SpiffeId::parse(&s) {
            check_parsed(&s, &id)?;
        }
        let _ = TrustDomain::parse(&s);
        let mut prefixed = b"spiffe://".to_vec();
        prefixed.extend_from_slice(&bytes);
        let s = String::from_utf8_lossy(&prefixed);
        if let Ok(id) = SpiffeId::parse(&s) {
            check_parsed(&s, &id)?;
        }
        if let Err(e) = SpiffeId::parse(&s) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn valid_ids_round_trip(td in trust_domain(), path in path(), upper_scheme in any::<bool>()) {
        let text = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&text).unwrap();
        prop_assert_eq!(id.as_str(), text.as_str());
        prop_assert_eq!(id.trust_domain().as_str(), td.as_str());
        prop_assert_eq!(id.path(), path.as_str());
        prop_assert_eq!(id.has_path(), !path.is_empty());
        let displayed = id.to_string();
        prop_assert_eq!(&SpiffeId::parse(&displayed).unwrap(), &id);
        prop_assert_eq!(&SpiffeId::try_from(id.to_string()).unwrap(), &id);

        let trust = TrustDomain::parse(&td).unwrap();
        prop_assert_eq!(&TrustDomain::parse(&trust.id_string()).unwrap(), &trust);
        prop_assert_eq!(&SpiffeId::new(&trust, &path).unwrap(), &id);

        if upper_scheme {
            let shouted = format!("SPIFFE://{td}{path}");
            prop_assert_eq!(&SpiffeId::parse(&shouted).unwrap(), &id);
        }
    }

    #[test]
    fn forbidden_char_in_trust_domain_is_rejected(
        td in trust_domain(),
        path in path(),
        c in forbidden_td_char(),
        at in any::<prop::sample::Index>(),
    ) {
        let i = at.index(td.len() + 1);
        let mut bad_td = td.clone();
        bad_td.insert(i, c);
        let text = format!("spiffe://{bad_td}{path}");
        prop_assert!(SpiffeId::parse(&text).is_err(), "accepted {:?}", text);
        prop_assert!(TrustDomain::parse(&bad_td).is_err(), "accepted {:?}", bad_td);
    }

    #[test]
    fn uppercase_in_trust_domain_is_rejected(
        td in trust_domain(),
        path in path(),
        c in proptest::char::range('A', 'Z'),
        at in any::<prop::sample::Index>(),
    ) {
        let mut bad_td = td.clone();
        bad_td.insert(at.index(td.len() + 1), c);
        let text = format!("spiffe://{bad_td}{path}");
        let is_uppercase_error = matches!(
            SpiffeId::parse(&text),
            Err(SpiffeIdError::UppercaseTrustDomain { .. })
        );
        prop_assert!(is_uppercase_error);
    }

    #[test]
    fn forbidden_char_in_path_is_rejected(
        td in trust_domain(),
        path in path().prop_filter("need a segment", |p| !p.is_empty()),
        c in forbidden_path_char(),
        at in any::<prop::sample::Index>(),
    ) {
        // After the leading '/', anywhere up to the end.
        let i = 1 + at.index(path.len());
        let mut bad_path = path.clone();
        bad_path.insert(i, c);
        let text = format!("spiffe://{td}{bad_path}");
        prop_assert!(SpiffeId::parse(&text).is_err(), "accepted {:?}", text);
        let trust = TrustDomain::parse(&td).unwrap();
        prop_assert!(SpiffeId::new(&trust, &bad_path).is_err(), "accepted {:?}", bad_path);
    }
}
