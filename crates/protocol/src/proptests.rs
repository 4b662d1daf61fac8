//! Property tests of every parser of client input in this crate: arbitrary input never
//! panics, and whatever parses is what it claims to be.

use proptest::prelude::*;

use crate::{Digest, Reference, RepoName, Tag, UploadId, parse_manifest};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn digests_parse_or_refuse(s in ".{0,80}") {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.as_str(), s.as_str());
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d.clone());
            prop_assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn sha256_digests_always_parse(hex in "[0-9a-f]{64}") {
        let d = format!("sha256:{hex}").parse::<Digest>().unwrap();
        prop_assert_eq!(d.hex(), hex.as_str());
    }

    #[test]
    fn digests_of_content_verify(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let d = Digest::sha256_of(&data);
        prop_assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn repository_names_parse_or_refuse(s in "[a-zA-Z0-9._/:-]{0,80}") {
        if let Ok(r) = s.parse::<RepoName>() {
            prop_assert_eq!(r.as_str(), s.as_str());
            prop_assert!(!r.team().is_empty());
            prop_assert!(!r.artifact().is_empty());
            prop_assert!(!r.as_str().contains("..") && !r.as_str().starts_with('/'));
        }
    }

    #[test]
    fn well_formed_names_parse(team in "[a-z][a-z0-9]{0,9}", art in "[a-z0-9]{1,10}(/[a-z0-9]{1,8}){0,3}") {
        let name = format!("{team}/{art}");
        let r = name.parse::<RepoName>().unwrap();
        prop_assert_eq!(r.team(), team.as_str());
    }

    #[test]
    fn references_parse_or_refuse(s in ".{0,140}") {
        match s.parse::<Reference>() {
            Ok(Reference::Tag(t)) => {
                prop_assert_eq!(t.as_str(), s.as_str());
                prop_assert!(t.as_str().len() <= 128);
            }
            Ok(Reference::Digest(d)) => prop_assert_eq!(d.as_str(), s.as_str()),
            Err(_) => {}
        }
    }

    #[test]
    fn well_formed_tags_parse(t in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}") {
        let tag = t.parse::<Tag>().unwrap();
        prop_assert_eq!(tag.as_str(), t.as_str());
    }

    #[test]
    fn upload_ids_name_nothing_but_themselves(s in ".{0,80}") {
        if let Ok(id) = s.parse::<UploadId>() {
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
    }

    #[test]
    fn manifests_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_manifest(None, &body);
        let _ = parse_manifest(Some("application/vnd.oci.image.manifest.v1+json"), &body);
    }

    #[test]
    fn json_shaped_manifests_never_panic(
        schema in 0i64..4,
        media in "[a-z./+-]{0,40}",
        digest in "(sha256:[0-9a-f]{64}|[a-z0-9:]{0,20})",
        size in any::<i64>(),
    ) {
        let body = format!(
            r#"{{"schemaVersion":{schema},"mediaType":"{media}","config":{{"mediaType":"{media}","digest":"{digest}","size":{size}}},"layers":[{{"mediaType":"{media}","digest":"{digest}","size":{size}}}],"manifests":[{{"digest":"{digest}","size":{size}}}]}}"#
        );
        let _ = parse_manifest(None, body.as_bytes());
        let _ = parse_manifest(Some(&media), body.as_bytes());
    }
}
