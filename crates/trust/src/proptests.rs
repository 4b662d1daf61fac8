//! Property tests of the parsers of client input: signed payloads, bundles, statements, keys
//! and signature annotations never panic, and a payload accepted for one digest is refused
//! for every other.

#![allow(clippy::unwrap_used)]

use pierone_protocol::{Digest, RepoName};
use proptest::prelude::*;

use crate::tests::{Signer, payload, statement};
use crate::*;

fn repo() -> RepoName {
    "red/app".parse().unwrap()
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let img = Digest::sha256_of(b"x");
        let _ = check_simple_signing_payload(&bytes, &img, &repo());
        let _ = check_statement(&bytes, &img);
        let _ = check_bundle(&bytes, &img, &[]);
        let text = String::from_utf8_lossy(&bytes);
        let _ = TrustedKey::from_pem("k", &text);
        let _ = TrustedKey::from_spki_der("k", bytes.clone());
        let _ = decode_signature_annotation(&text);
    }

    #[test]
    fn a_payload_names_exactly_one_digest(a in any::<[u8; 8]>(), b in any::<[u8; 8]>()) {
        let (da, db) = (Digest::sha256_of(&a), Digest::sha256_of(&b));
        let p = payload(da.as_str(), "host:1/red/app:tag");
        prop_assert!(check_simple_signing_payload(&p, &da, &repo()).is_ok());
        prop_assert_eq!(
            check_simple_signing_payload(&p, &db, &repo()).is_ok(),
            da == db
        );
        prop_assert_eq!(check_statement(&statement(&da), &db).is_ok(), da == db);
    }

    #[test]
    fn references_name_this_repository_only(
        host in proptest::option::of("[a-z]{1,8}\\.[a-z]{2,3}(:[0-9]{1,5})?"),
        path in prop_oneof![Just("red/app".to_owned()), "[a-z]{1,6}(/[a-z]{1,6}){1,2}"],
        suffix in proptest::option::of(":[a-z0-9]{1,8}"),
    ) {
        let reference = format!(
            "{}{path}{}",
            host.map(|h| format!("{h}/")).unwrap_or_default(),
            suffix.unwrap_or_default()
        );
        let img = Digest::sha256_of(b"x");
        let p = payload(img.as_str(), &reference);
        let ok = check_simple_signing_payload(&p, &img, &repo()).is_ok();
        prop_assert_eq!(ok, path == "red/app", "{}", reference);
    }
}

#[test]
fn flipping_any_byte_of_a_signature_or_payload_breaks_it() {
    let s = Signer::ed25519("k");
    let img = Digest::sha256_of(b"x");
    let p = payload(img.as_str(), "red/app");
    let sig = s.sign(&p);
    let keys = [TrustedKey::from_pem("k", &s.pem()).unwrap()];
    assert!(keys[0].verify(&p, &sig).is_some());
    for i in 0..p.len() {
        let mut q = p.clone();
        q[i] ^= 0x20;
        assert!(keys[0].verify(&q, &sig).is_none(), "payload byte {i}");
    }
    for i in 0..sig.len() {
        let mut t = sig.clone();
        t[i] ^= 1;
        assert!(keys[0].verify(&p, &t).is_none(), "signature byte {i}");
    }
}
