//! The conformance suite: the rules of [`TagStore`], checked the same way for every
//! implementation through [`conformance_tests!`](crate::conformance_tests).

// This module is a test suite shipped as library code: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use pierone_protocol::{Digest, Hasher, RepoName, Tag, UploadId, UploadPart};

use crate::{
    AuditKind, BlobUser, Error, Mutability, NewManifest, Quarantine, QuarantineRecord, ScmSource,
    TagOutcome, TagStore, TagWrite, UploadSession,
};

/// A unique repository per call, so suites can share one database.
pub fn repo(prefix: &str) -> RepoName {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("team{prefix}/app-{nanos}-{n}")
        .parse()
        .expect("valid name")
}

/// A distinct manifest whose body mentions `seed`.
pub fn manifest(seed: &str) -> NewManifest {
    let body = format!(r#"{{"schemaVersion":2,"seed":"{seed}"}}"#);
    NewManifest {
        digest: Digest::sha256_of(body.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        body: Bytes::from(body),
        subject: None,
        artifact_type: None,
        config_digest: None,
        annotations: None,
        references: vec![(Digest::sha256_of(seed.as_bytes()), 1000)],
        checked_at: crate::now_millis(),
    }
}

fn tag(s: &str) -> Tag {
    s.parse().expect("valid tag")
}

fn write(t: &str, mutability: Mutability) -> Option<TagWrite> {
    Some(TagWrite {
        tag: tag(t),
        mutability,
        principal: "alice".into(),
        realm: "/employees".into(),
        scm_source: None,
        notify: Vec::new(),
    })
}

fn session(id: &UploadId, r: &RepoName, at: i64) -> UploadSession {
    UploadSession {
        id: id.clone(),
        repo: r.clone(),
        owner: "alice".into(),
        received: 0,
        parts: Vec::new(),
        hash_state: Hasher::new(pierone_protocol::Algorithm::Sha256).save(),
        created_at: at,
        updated_at: at,
    }
}

fn part(key: &str, len: u64) -> UploadPart {
    UploadPart {
        key: key.into(),
        len,
    }
}

/// Check the whole audit log with the verifier clients use; returns its entries.
async fn verified_log(store: &dyn TagStore) -> Vec<crate::AuditEntry> {
    let entries = store.audit_entries(0, usize::MAX, None).await.unwrap();
    let mut v = pierone_protocol::audit::ChainVerifier::new();
    for e in &entries {
        v.push(e).unwrap();
    }
    let (size, head) = store.audit_head().await.unwrap();
    assert_eq!(v.head(), (size, head.as_str()));
    entries
}

fn w_targets() -> Vec<String> {
    vec![
        "http://a.example/hook".into(),
        "http://b.example/hook".into(),
    ]
}

/// Declares the conformance checks and generates [`conformance_tests!`](crate::conformance_tests)
/// from the same list. Its input is `$` (so that the macro it emits can have metavariables of
/// its own) followed by the checks, each a `pub async fn NAME(store: &dyn TagStore)`.
macro_rules! checks {
    (
        $d:tt
        $(
            $(#[$meta:meta])*
            pub async fn $name:ident($store:ident: &dyn TagStore) $body:block
        )*
    ) => {
        $(
            $(#[$meta])*
            pub async fn $name($store: &dyn TagStore) $body
        )*

        /// Generates one `#[tokio::test]` per conformance check, in a module `conformance`.
        /// `$make` is an async block yielding `(store, guard)`: a fresh store for each test, and
        /// whatever must live as long as it (a temporary directory, a server).
        ///
        /// The list of checks is the one they are declared in, so every check runs against
        /// every implementation that invokes this.
        #[macro_export]
        macro_rules! conformance_tests {
            ($d make:expr) => {
                mod conformance {
                    #[allow(unused_imports)]
                    use super::*;
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                        async fn $name() {
                            #[allow(clippy::unwrap_used)]
                            let (store, _guard) = $d make.await;
                            $d crate::conformance::$name(&store).await;
                        }
                    )*
                }
            };
        }
    };
}

// The checks, declared inside `checks!`, which emits each function and `conformance_tests!`
// running all of them: a check cannot be left out of the list, because there is no list.
// (rustfmt does not format inside the braces: keep the code as it would.)
checks! {
$

/// A manifest is found only in the repositories it was pushed to; pushing it again, or to
/// another repository, is not an error.
pub async fn manifests_are_scoped_to_their_repository(store: &dyn TagStore) {
    let (a, b) = (repo("a"), repo("b"));
    let m = manifest("scoped");
    let out = store.put_manifest(&a, m.clone(), None).await.unwrap();
    assert_eq!(out, TagOutcome::Untagged);
    let got = store.get_manifest(&a, &m.digest).await.unwrap().unwrap();
    assert_eq!(got.body, m.body);
    assert_eq!(got.media_type, m.media_type);
    assert_eq!(store.get_manifest(&b, &m.digest).await.unwrap(), None);
    // The same manifest pushed again, and to a second repository, is fine.
    store.put_manifest(&a, m.clone(), None).await.unwrap();
    store.put_manifest(&b, m.clone(), None).await.unwrap();
    assert!(store.get_manifest(&b, &m.digest).await.unwrap().is_some());
}

/// An immutable tag keeps its digest: the same digest again is `Unchanged`, another one is
/// refused naming both, and the refused write changes nothing.
pub async fn tags_are_immutable(store: &dyn TagStore) {
    let r = repo("imm");
    let (m1, m2) = (manifest("one"), manifest("two"));
    let w = write("1.0", Mutability::Immutable);
    assert_eq!(
        store.put_manifest(&r, m1.clone(), w.clone()).await.unwrap(),
        TagOutcome::Created
    );
    assert_eq!(
        store.put_manifest(&r, m1.clone(), w.clone()).await.unwrap(),
        TagOutcome::Unchanged
    );
    let refused = store.put_manifest(&r, m2.clone(), w.clone()).await;
    let Err(Error::TagImmutable {
        existing,
        pushed,
        tag: refused_tag,
        ..
    }) = &refused
    else {
        panic!("expected TagImmutable, got {refused:?}");
    };
    assert_eq!(existing, &m1.digest);
    assert_eq!(pushed, &m2.digest);
    assert_eq!(refused_tag.as_str(), "1.0");
    // Both digests, so the pusher sees what the tag keeps and what was refused.
    assert_eq!(
        refused.unwrap_err().to_string(),
        format!(
            "tag {r}:1.0 already names {}; it is immutable, so it cannot name {} (push a new tag)",
            m1.digest, m2.digest
        )
    );
    // The refused write changed nothing: the tag still resolves to m1 and m2 is not stored.
    assert_eq!(
        store.resolve_tag(&r, &tag("1.0")).await.unwrap(),
        Some(m1.digest.clone())
    );
    assert_eq!(store.get_manifest(&r, &m2.digest).await.unwrap(), None);
    let recs = store.tag_records(&r).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].created_by, "alice");
}

/// A mutable tag moves to a new digest and says where it was.
pub async fn mutable_tags_move(store: &dyn TagStore) {
    let r = repo("mut");
    let (m1, m2) = (manifest("snap1"), manifest("snap2"));
    let w = write("1.0-SNAPSHOT", Mutability::Mutable);
    assert_eq!(
        store.put_manifest(&r, m1.clone(), w.clone()).await.unwrap(),
        TagOutcome::Created
    );
    assert_eq!(
        store.put_manifest(&r, m2.clone(), w.clone()).await.unwrap(),
        TagOutcome::Moved {
            previous: m1.digest.clone()
        }
    );
    assert_eq!(
        store.resolve_tag(&r, &tag("1.0-SNAPSHOT")).await.unwrap(),
        Some(m2.digest.clone())
    );
    // The old manifest stays reachable by digest: nothing is deleted.
    assert!(store.get_manifest(&r, &m1.digest).await.unwrap().is_some());
}

/// `latest_tag` is the most recently created tag of a repository.
pub async fn latest_is_the_newest_tag(store: &dyn TagStore) {
    let r = repo("latest");
    assert_eq!(store.latest_tag(&r).await.unwrap(), None);
    for (i, t) in ["b", "a", "c"].iter().enumerate() {
        let m = manifest(&format!("latest{i}"));
        store
            .put_manifest(&r, m, write(t, Mutability::Immutable))
            .await
            .unwrap();
    }
    let latest = store.latest_tag(&r).await.unwrap().unwrap();
    assert_eq!(latest.name, "c");
    let names: Vec<_> = store
        .tag_records(&r)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["b", "a", "c"], "oldest first");
}

/// Tags and repositories are listed sorted, in pages after `last`; a repository that does not
/// exist has no tag list.
pub async fn listing_paginates(store: &dyn TagStore) {
    let r = repo("list");
    assert_eq!(store.list_tags(&r, None, 10).await.unwrap(), None);
    for t in ["v3", "v1", "v2", "v4"] {
        store
            .put_manifest(
                &r,
                manifest(&format!("list{t}")),
                write(t, Mutability::Immutable),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store.list_tags(&r, None, 10).await.unwrap().unwrap(),
        ["v1", "v2", "v3", "v4"]
    );
    assert_eq!(
        store.list_tags(&r, None, 2).await.unwrap().unwrap(),
        ["v1", "v2"]
    );
    assert_eq!(
        store.list_tags(&r, Some("v2"), 10).await.unwrap().unwrap(),
        ["v3", "v4"]
    );
    assert_eq!(
        store.list_tags(&r, Some("v4"), 10).await.unwrap().unwrap(),
        Vec::<String>::new()
    );
    let untagged = repo("untagged");
    store
        .put_manifest(&untagged, manifest("untagged"), None)
        .await
        .unwrap();
    assert_eq!(
        store.list_tags(&untagged, None, 10).await.unwrap(),
        Some(vec![])
    );

    let all = store.list_repositories(None, 100_000).await.unwrap();
    assert!(all.contains(&r.to_string()) && all.contains(&untagged.to_string()));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    let first = store.list_repositories(None, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let rest = store
        .list_repositories(Some(&first[0]), 100_000)
        .await
        .unwrap();
    assert_eq!(rest.len(), all.len() - 1);
}

/// The referrers of a manifest are the manifests of that repository whose subject it is.
pub async fn referrers_follow_subject(store: &dyn TagStore) {
    let r = repo("refs");
    let subject = manifest("subject");
    store.put_manifest(&r, subject.clone(), None).await.unwrap();
    let mut sig = manifest("signature");
    sig.subject = Some(subject.digest.clone());
    sig.artifact_type = Some("application/x.sig".into());
    sig.annotations = Some(r#"{"k":"v"}"#.into());
    store.put_manifest(&r, sig.clone(), None).await.unwrap();
    store
        .put_manifest(&r, manifest("unrelated"), None)
        .await
        .unwrap();
    let refs = store.referrers(&r, &subject.digest).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, sig.digest);
    assert_eq!(refs[0].size, sig.body.len() as u64);
    assert_eq!(refs[0].artifact_type.as_deref(), Some("application/x.sig"));
    assert_eq!(refs[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert!(
        store
            .referrers(&repo("other"), &subject.digest)
            .await
            .unwrap()
            .is_empty()
    );
}

/// An upload advances only from the offset its caller read, recording the part and the hash
/// state together.
pub async fn uploads_advance_by_compare_and_set(store: &dyn TagStore) {
    let r = repo("up");
    let id: UploadId = format!("u{}", r.artifact().replace('/', "-"))
        .parse()
        .unwrap();
    store.create_upload(session(&id, &r, 1)).await.unwrap();
    store
        .advance_upload(&id, 0, Some(part("p1", 10)), vec![1, 2, 3])
        .await
        .unwrap();
    let s = store.get_upload(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            s.received,
            s.hash_state.as_slice(),
            &s.repo,
            s.owner.as_str()
        ),
        (10, &[1u8, 2, 3][..], &r, "alice")
    );
    assert_eq!(s.parts, vec![part("p1", 10)]);
    // A request that read the session before the first one advanced it is refused, and its
    // part is not recorded.
    assert!(matches!(
        store
            .advance_upload(&id, 0, Some(part("loser", 20)), vec![])
            .await,
        Err(Error::UploadOffsetConflict {
            expected: 0,
            actual: 10,
            ..
        })
    ));
    // An empty request records no part.
    store.advance_upload(&id, 10, None, vec![4]).await.unwrap();
    store
        .advance_upload(&id, 10, Some(part("p2", 5)), vec![5])
        .await
        .unwrap();
    let s = store.get_upload(&id).await.unwrap().unwrap();
    assert_eq!(s.received, 15);
    assert_eq!(s.hash_state, vec![5]);
    assert_eq!(s.parts, vec![part("p1", 10), part("p2", 5)]);
    assert!(store.delete_upload(&id).await.unwrap());
    assert!(!store.delete_upload(&id).await.unwrap());
    assert_eq!(store.get_upload(&id).await.unwrap(), None);
    assert!(matches!(
        store
            .advance_upload(&id, 15, Some(part("p3", 1)), vec![])
            .await,
        Err(Error::UploadUnknown(_))
    ));
    // A new session under the same id starts without the old parts.
    store.create_upload(session(&id, &r, 2)).await.unwrap();
    assert_eq!(store.get_upload(&id).await.unwrap().unwrap().parts, vec![]);
    store.delete_upload(&id).await.unwrap();
}

/// 16 requests that read the same session race to record their parts: exactly one does, and
/// the session names its part alone.
pub async fn upload_part_race_has_one_winner(store: &dyn TagStore) {
    let r = repo("uprace");
    let id: UploadId = format!("r{}", r.artifact().replace('/', "-"))
        .parse()
        .unwrap();
    store.create_upload(session(&id, &r, 1)).await.unwrap();
    let futs = (0..16u64).map(|i| {
        let id = id.clone();
        async move {
            store
                .advance_upload(&id, 0, Some(part(&format!("k{i}"), 100 + i)), vec![i as u8])
                .await
                .map(|()| i)
        }
    });
    let results = futures_util::future::join_all(futs).await;
    let winners: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        assert!(
            matches!(r, Ok(_) | Err(Error::UploadOffsetConflict { .. })),
            "{r:?}"
        );
    }
    let w = winners[0];
    let s = store.get_upload(&id).await.unwrap().unwrap();
    assert_eq!(s.parts, vec![part(&format!("k{w}"), 100 + w)]);
    assert_eq!((s.received, s.hash_state), (100 + w, vec![w as u8]));
    store.delete_upload(&id).await.unwrap();
}

/// 32 writers race to put different manifests on one immutable tag: exactly one wins.
pub async fn concurrent_tag_race_has_one_winner(store: &dyn TagStore) {
    let r = repo("race");
    let futs = (0..32).map(|i| {
        let r = r.clone();
        async move {
            store
                .put_manifest(
                    &r,
                    manifest(&format!("race{i}")),
                    write("1.0", Mutability::Immutable),
                )
                .await
        }
    });
    let results = futures_util::future::join_all(futs).await;
    let created = results
        .iter()
        .filter(|r| matches!(r, Ok(TagOutcome::Created)))
        .count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(Error::TagImmutable { .. })))
        .count();
    assert_eq!((created, refused), (1, 31), "{results:?}");
    let winner = results.iter().position(|r| r.is_ok()).unwrap();
    assert_eq!(
        store.resolve_tag(&r, &tag("1.0")).await.unwrap(),
        Some(manifest(&format!("race{winner}")).digest)
    );
}

/// What the Pier One API shows: teams, artifacts, tag details, image search, statistics.
pub async fn pier_one_views(store: &dyn TagStore) {
    let a = repo("views");
    let team = a.team().to_owned();
    let b: RepoName = format!("{team}/second/nested").parse().unwrap();
    let mut m1 = manifest("view1");
    m1.config_digest = Some(Digest::sha256_of(b"config of view1"));
    let m2 = manifest("view2");
    store
        .put_manifest(&a, m1.clone(), write("1.0", Mutability::Immutable))
        .await
        .unwrap();
    store
        .put_manifest(&a, m2.clone(), write("2.0", Mutability::Immutable))
        .await
        .unwrap();
    store
        .put_manifest(&b, m2.clone(), write("x", Mutability::Immutable))
        .await
        .unwrap();
    let untagged = repo("views-untagged");
    store
        .put_manifest(&untagged, manifest("loose"), None)
        .await
        .unwrap();

    let teams = store.teams().await.unwrap();
    assert!(teams.contains(&team));
    assert!(
        !teams.contains(&untagged.team().to_owned()),
        "teams without tags are not listed"
    );
    let mut sorted = teams.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(teams, sorted);
    assert_eq!(
        store.artifacts(&team).await.unwrap(),
        [a.artifact().to_owned(), "second/nested".to_owned()]
    );

    let recs = store.tag_records(&a).await.unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].name, "1.0");
    assert_eq!(recs[0].image, m1.config_digest);
    assert_eq!(recs[0].media_type, m1.media_type);
    assert_eq!(recs[0].size, m1.body.len() as u64 + 1000);

    // By config digest (with and without algorithm), and by manifest digest.
    let image = m1.config_digest.clone().unwrap();
    for prefix in [&image.hex()[..12], &image.as_str()[..20]] {
        let found = store.find_images(prefix).await.unwrap();
        assert_eq!(found.len(), 1, "{prefix}");
        assert_eq!(
            (found[0].repository.as_str(), found[0].tag.as_str()),
            (a.as_str(), "1.0")
        );
    }
    let found = store.find_images(&m2.digest.hex()[..16]).await.unwrap();
    let mut names: Vec<String> = found
        .iter()
        .map(|f| format!("{}:{}", f.repository, f.tag))
        .collect();
    names.sort();
    assert_eq!(names, [format!("{a}:2.0"), format!("{b}:x")]);
    assert!(
        store
            .find_images("ffffffffffffffffffff")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.find_images("").await.unwrap().is_empty());

    let stats = store.team_stats().await.unwrap();
    let mine = stats.iter().find(|s| s.team == team).unwrap();
    assert_eq!((mine.artifacts, mine.tags), (2, 3));
    assert!(store.storage_bytes().await.unwrap() >= (m1.body.len() + m2.body.len() + 2000) as u64);
}

/// `scm-source`: set with the push, kept on identical re-push, filled in later only if absent.
pub async fn scm_sources_are_recorded(store: &dyn TagStore) {
    let r = repo("scm");
    let src = |rev: &str| ScmSource {
        url: "https://git.example/app".into(),
        revision: rev.into(),
        author: "alice".into(),
        status: String::new(),
    };
    let mut w = write("1.0", Mutability::Immutable);
    if let Some(w) = w.as_mut() {
        w.scm_source = Some(src("abc"));
    }
    store
        .put_manifest(&r, manifest("scm"), w.clone())
        .await
        .unwrap();
    let t = tag("1.0");
    assert_eq!(
        store.scm_source(&r, &t).await.unwrap().unwrap().0,
        src("abc")
    );
    if let Some(w) = w.as_mut() {
        w.scm_source = Some(src("other"));
    }
    store.put_manifest(&r, manifest("scm"), w).await.unwrap();
    assert_eq!(
        store.scm_source(&r, &t).await.unwrap().unwrap().0.revision,
        "abc"
    );
    store
        .record_scm_source(&r, &t, src("from-layers"))
        .await
        .unwrap();
    assert_eq!(
        store.scm_source(&r, &t).await.unwrap().unwrap().0.revision,
        "abc"
    );

    let t2 = tag("2.0");
    store
        .put_manifest(&r, manifest("scm2"), write("2.0", Mutability::Immutable))
        .await
        .unwrap();
    assert_eq!(store.scm_source(&r, &t2).await.unwrap(), None);
    store
        .record_scm_source(&r, &t2, src("from-layers"))
        .await
        .unwrap();
    assert_eq!(
        store.scm_source(&r, &t2).await.unwrap().unwrap().0.revision,
        "from-layers"
    );
}

/// Every tag creation and move appends one entry to one chain that verifies; a re-push that
/// changes nothing appends nothing.
pub async fn audit_log_chains_every_tag_write(store: &dyn TagStore) {
    let r = repo("audit");
    let (m1, m2) = (manifest("audit-1"), manifest("audit-2"));
    assert!(verified_log(store).await.is_empty());
    store
        .put_manifest(&r, m1.clone(), write("1.0", Mutability::Immutable))
        .await
        .unwrap();
    // Neither an identical re-push, a refused move nor an untagged push is an assignment.
    store
        .put_manifest(&r, m1.clone(), write("1.0", Mutability::Immutable))
        .await
        .unwrap();
    assert!(
        store
            .put_manifest(&r, m2.clone(), write("1.0", Mutability::Immutable))
            .await
            .is_err()
    );
    store.put_manifest(&r, m2.clone(), None).await.unwrap();
    store
        .put_manifest(&r, m1.clone(), write("dev-SNAPSHOT", Mutability::Mutable))
        .await
        .unwrap();
    store
        .put_manifest(&r, m2.clone(), write("dev-SNAPSHOT", Mutability::Mutable))
        .await
        .unwrap();
    let log = verified_log(store).await;
    assert_eq!(log.len(), 3);
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        (
            log[0].tag.as_str(),
            log[0].digest.as_str(),
            log[0].previous_digest.as_deref()
        ),
        ("1.0", m1.digest.as_str(), None)
    );
    assert_eq!(
        (log[2].tag.as_str(), log[2].previous_digest.as_deref()),
        ("dev-SNAPSHOT", Some(m1.digest.as_str()))
    );
    assert_eq!(
        (log[2].principal.as_str(), log[2].realm.as_str()),
        ("alice", "/employees")
    );
    assert_eq!(log[0].repository, r.as_str());
    let snapshot = tag("dev-SNAPSHOT");
    let history = store
        .audit_entries(0, 10, Some((&r, &snapshot)))
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(store.audit_entries(1, 1, None).await.unwrap()[0].seq, 2);

    // Checkpoints: the largest size wins, a repeated size keeps the first.
    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    let cp = |size: u64, sig: &str| crate::Checkpoint {
        size,
        head: log[size as usize - 1].hash.clone(),
        root: format!("root-{size}"),
        at: 1,
        public_key: "k".into(),
        signature: sig.into(),
        frontier: (0..size.count_ones()).map(|i| format!("f{i}")).collect(),
    };
    store.put_checkpoint(cp(2, "a")).await.unwrap();
    store.put_checkpoint(cp(3, "b")).await.unwrap();
    store.put_checkpoint(cp(3, "c")).await.unwrap();
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(cp(3, "b")));
}

/// Concurrent tag writes append to one chain, numbered without gaps, that verifies.
pub async fn audit_appends_race_into_one_chain(store: &dyn TagStore) {
    let r = repo("auditrace");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (r, m) = (r.clone(), manifest(&format!("auditrace-{i}")));
            async move {
                store
                    .put_manifest(&r, m, write(&format!("1.{i}"), Mutability::Immutable))
                    .await
            }
        })
        .collect();
    for out in futures_util::future::join_all(tasks).await {
        assert_eq!(out.unwrap(), TagOutcome::Created);
    }
    let log = verified_log(store).await;
    assert_eq!(log.len(), 16);
}

/// A tag write queues one event per webhook, and the outbox leases each to one deliverer at
/// a time until it is delivered.
pub async fn outbox_hands_each_event_to_one_deliverer(store: &dyn TagStore) {
    let r = repo("outbox");
    let mut w = write("1.0", Mutability::Immutable).unwrap();
    w.notify = w_targets();
    store
        .put_manifest(&r, manifest("outbox"), Some(w.clone()))
        .await
        .unwrap();
    // An identical re-push queues nothing more.
    store
        .put_manifest(&r, manifest("outbox"), Some(w))
        .await
        .unwrap();
    assert_eq!(store.outbox_pending().await.unwrap(), 2);
    let now = crate::now_millis();
    let targets = w_targets();
    // A target no longer configured is left alone.
    let only_b = store.claim_outbox(now, 10, 1, &targets[1..]).await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].target, "http://b.example/hook");
    let now = now + 2;
    let first = store.claim_outbox(now, 10, 60_000, &targets).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].entry.tag, "1.0");
    assert_eq!(first[0].entry.seq, 1);
    assert_eq!(first[0].attempts, 0);
    let mut names: Vec<_> = first.iter().map(|i| i.target.as_str()).collect();
    names.sort();
    assert_eq!(names, ["http://a.example/hook", "http://b.example/hook"]);
    // Leased: a second deliverer gets nothing until the lease ends.
    assert!(
        store
            .claim_outbox(now, 10, 60_000, &targets)
            .await
            .unwrap()
            .is_empty()
    );
    let after_lease = store
        .claim_outbox(now + 60_001, 10, 1000, &targets)
        .await
        .unwrap();
    assert_eq!(after_lease.len(), 2);

    store.outbox_delivered(first[0].id, now).await.unwrap();
    store
        .outbox_retry(first[1].id, now + 5000, "HTTP 500")
        .await
        .unwrap();
    assert_eq!(store.outbox_pending().await.unwrap(), 1);
    assert!(
        store
            .claim_outbox(now + 4000, 10, 1000, &targets)
            .await
            .unwrap()
            .is_empty()
    );
    let retried = store
        .claim_outbox(now + 5000, 10, 1000, &targets)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].id, first[1].id);
    assert_eq!(retried[0].attempts, 1);
    store
        .outbox_delivered(retried[0].id, now + 5000)
        .await
        .unwrap();
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    // Delivered rows are pruned by age of delivery.
    assert_eq!(store.outbox_prune(now).await.unwrap(), 0);
    assert_eq!(store.outbox_prune(now + 1).await.unwrap(), 1);
    assert_eq!(store.outbox_prune(now + 5001).await.unwrap(), 1);
    assert_eq!(store.outbox_prune(i64::MAX).await.unwrap(), 0);
    assert!(
        store
            .claim_outbox(now + 99_999_999, 10, 1000, &targets)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Garbage collection marks and claims only unreferenced blobs; a manifest write takes a
/// marked blob back and is refused for a claimed or deleted one.
pub async fn gc_never_takes_what_a_manifest_references(store: &dyn TagStore) {
    let r = repo("gc");
    let m = manifest("gc-kept");
    let kept = m.references[0].0.clone();
    store.put_manifest(&r, m.clone(), None).await.unwrap();
    let nobody = Digest::sha256_of(b"gc-nobody");
    let mut found = store
        .referenced(&[nobody.clone(), m.digest.clone(), kept.clone(), kept.clone()])
        .await
        .unwrap();
    found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut expected = vec![m.digest.clone(), kept.clone()];
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(found, expected);
    assert!(store.referenced(&[]).await.unwrap().is_empty());
    assert_eq!(store.gc_mark(&kept, 100).await.unwrap(), None);
    assert_eq!(store.gc_mark(&m.digest, 100).await.unwrap(), None);
    assert!(!store.gc_claim(&kept, 1000, 1000).await.unwrap());

    // An unreferenced blob: marked once (the first time counts), claimable only after.
    let orphan = Digest::sha256_of(b"gc-orphan");
    assert_eq!(store.gc_mark(&orphan, 100).await.unwrap(), Some(100));
    assert_eq!(store.gc_mark(&orphan, 200).await.unwrap(), Some(100));
    assert!(!store.gc_claim(&orphan, 99, 1000).await.unwrap());
    assert!(store.gc_claim(&orphan, 100, 1000).await.unwrap());
    assert!(
        !store.gc_claim(&orphan, 100, 1000).await.unwrap(),
        "claimed twice"
    );
    // An unfinished claim is reported once it is old enough.
    assert!(store.gc_stale_claims(1000).await.unwrap().is_empty());
    assert_eq!(
        store.gc_stale_claims(1001).await.unwrap(),
        vec![orphan.clone()]
    );
    // A manifest arriving now must not reference it.
    let mut late = manifest("gc-late");
    late.references = vec![(orphan.clone(), 9)];
    match store.put_manifest(&r, late.clone(), None).await {
        Err(Error::BlobCollected(d)) => assert_eq!(d, orphan),
        other => panic!("expected BlobCollected, got {other:?}"),
    }
    assert_eq!(store.get_manifest(&r, &late.digest).await.unwrap(), None);
    // Deleted: a tombstone, no longer a claim to finish, and still no manifest may
    // reference it (a write that checked the blob before the claim comes too late).
    store.gc_deleted(&orphan, 1000).await.unwrap();
    assert!(store.gc_stale_claims(i64::MAX).await.unwrap().is_empty());
    match store.put_manifest(&r, late.clone(), None).await {
        Err(Error::BlobCollected(d)) => assert_eq!(d, orphan),
        other => panic!("expected BlobCollected after deletion, got {other:?}"),
    }
    // Tombstones go by age ...
    assert_eq!(store.gc_prune(1000).await.unwrap(), 0);
    assert!(matches!(
        store.put_manifest(&r, late.clone(), None).await,
        Err(Error::BlobCollected(_))
    ));
    assert_eq!(store.gc_prune(1001).await.unwrap(), 1);
    store.put_manifest(&r, late.clone(), None).await.unwrap();
    // ... or when the blob is stored again.
    let again = Digest::sha256_of(b"gc-again");
    assert_eq!(store.gc_mark(&again, 100).await.unwrap(), Some(100));
    assert!(store.gc_claim(&again, 100, 1000).await.unwrap());
    store.gc_deleted(&again, 1000).await.unwrap();
    // A push that merely found the blob (a mount, a commit of bytes already stored) may have
    // found it just before the deletion: the tombstone stays.
    store.gc_unmark(&again, false).await.unwrap();
    let mut early = manifest("gc-early");
    early.references = vec![(again.clone(), 9)];
    assert!(matches!(
        store.put_manifest(&r, early, None).await,
        Err(Error::BlobCollected(_))
    ));
    store.gc_unmark(&again, true).await.unwrap();
    let mut back = manifest("gc-back");
    back.references = vec![(again.clone(), 9)];
    store.put_manifest(&r, back, None).await.unwrap();
    // A write whose caller checked its blobs longer ago than tombstones are guaranteed to
    // last is refused, whatever the blobs' state.
    let mut stale = manifest("gc-stale");
    stale.checked_at = crate::now_millis() - crate::MAX_CHECK_AGE_MS - 1000;
    assert!(matches!(
        store.put_manifest(&r, stale.clone(), None).await,
        Err(Error::StaleCheck { .. })
    ));
    assert_eq!(store.get_manifest(&r, &stale.digest).await.unwrap(), None);

    // A marked blob that a manifest then references is rescued.
    let rescued = Digest::sha256_of(b"gc-rescued");
    assert!(store.gc_mark(&rescued, 100).await.unwrap().is_some());
    let mut wants = manifest("gc-wants");
    wants.references = vec![(rescued.clone(), 9)];
    store.put_manifest(&r, wants, None).await.unwrap();
    assert!(!store.gc_claim(&rescued, i64::MAX, 1000).await.unwrap());
    assert_eq!(store.gc_mark(&rescued, 300).await.unwrap(), None);

    // A fresh upload of a marked blob unmarks it; a later mark starts the clock again.
    let uploaded = Digest::sha256_of(b"gc-uploaded");
    assert_eq!(store.gc_mark(&uploaded, 100).await.unwrap(), Some(100));
    store.gc_unmark(&uploaded, false).await.unwrap();
    assert!(!store.gc_claim(&uploaded, 150, 1000).await.unwrap());
    assert_eq!(store.gc_mark(&uploaded, 200).await.unwrap(), Some(200));
}

/// A manifest write and a collector's claim racing for one marked blob: exactly one wins,
/// never both (a committed manifest whose blob is then deleted) and never neither.
pub async fn gc_claim_and_manifest_write_race_has_one_winner(store: &dyn TagStore) {
    let r = repo("gcrace");
    let (mut kept, mut taken) = (0, 0);
    for i in 0..40 {
        let blob = Digest::sha256_of(format!("gc-race-{i}").as_bytes());
        assert_eq!(store.gc_mark(&blob, 0).await.unwrap(), Some(0));
        let mut m = manifest(&format!("gc-race-{i}"));
        m.references = vec![(blob.clone(), 1)];
        let (put, claim) = tokio::join!(
            store.put_manifest(&r, m.clone(), None),
            store.gc_claim(&blob, 0, 1)
        );
        match (put, claim.unwrap()) {
            (Ok(_), false) => kept += 1,
            (Err(Error::BlobCollected(d)), true) => {
                assert_eq!(d, blob);
                assert_eq!(store.get_manifest(&r, &m.digest).await.unwrap(), None);
                taken += 1;
            }
            (put, claimed) => panic!("round {i}: manifest {put:?}, claimed {claimed}"),
        }
    }
    assert_eq!(kept + taken, 40);
}

/// The scrub names what needs a blob: every manifest referencing it, in every repository it
/// was pushed to, with the tags there.
pub async fn blob_users_name_manifests_repositories_and_tags(store: &dyn TagStore) {
    let (a, b) = (repo("usersa"), repo("usersb"));
    let m = manifest("users");
    let blob = m.references[0].0.clone();
    for t in ["2.0", "1.0"] {
        store
            .put_manifest(&a, m.clone(), write(t, Mutability::Immutable))
            .await
            .unwrap();
    }
    store.put_manifest(&b, m.clone(), None).await.unwrap();
    store
        .put_manifest(
            &a,
            manifest("users-other"),
            write("3.0", Mutability::Immutable),
        )
        .await
        .unwrap();
    assert_eq!(
        store.blob_users(&blob).await.unwrap(),
        vec![
            BlobUser {
                manifest: m.digest.clone(),
                repository: a.as_str().to_owned(),
                tags: vec!["1.0".into(), "2.0".into()],
            },
            BlobUser {
                manifest: m.digest.clone(),
                repository: b.as_str().to_owned(),
                tags: vec![],
            },
        ]
    );
    let nobody = Digest::sha256_of(b"needed by nobody");
    assert!(store.blob_users(&nobody).await.unwrap().is_empty());
}

/// A quarantine is recorded with one audit entry per affected tag, on the chain of tag
/// writes, which still verifies; a re-push releases it and keeps the entries.
pub async fn quarantine_is_recorded_and_audited(store: &dyn TagStore) {
    let r = repo("quarantine");
    let m = manifest("quarantine");
    store
        .put_manifest(&r, m.clone(), write("1.0", Mutability::Immutable))
        .await
        .unwrap();
    let blob = m.references[0].0.clone();
    assert_eq!(store.quarantine_record(&blob).await.unwrap(), None);
    let record = QuarantineRecord {
        digest: blob.clone(),
        at: 1_700_000_000_000,
        principal: "scrub".into(),
        actual: Digest::sha256_of(b"what the bytes hash to"),
    };
    let appended = store
        .record_quarantine(Quarantine {
            record: record.clone(),
            realm: "/operator".into(),
            affected: vec![
                (r.as_str().to_owned(), "1.0".to_owned()),
                (r.as_str().to_owned(), "2.0".to_owned()),
            ],
        })
        .await
        .unwrap();
    assert_eq!(appended.len(), 2);
    let log = verified_log(store).await;
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].kind, AuditKind::Tag);
    assert_eq!(&log[1..], &appended[..]);
    for e in &appended {
        assert_eq!(e.kind, AuditKind::Quarantine);
        assert_eq!(e.digest, blob.as_str());
        assert_eq!(
            (e.principal.as_str(), e.realm.as_str()),
            ("scrub", "/operator")
        );
        assert_eq!(e.at, record.at);
    }
    let history = store
        .audit_entries(0, 10, Some((&r, &tag("1.0"))))
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![AuditKind::Tag, AuditKind::Quarantine]
    );
    assert_eq!(store.quarantine_record(&blob).await.unwrap(), Some(record));

    // A blob nothing needs still leaves one entry.
    let orphan = Digest::sha256_of(b"orphan");
    let later = QuarantineRecord {
        digest: orphan.clone(),
        at: 1_700_000_000_001,
        principal: "scrub".into(),
        actual: Digest::sha256_of(b"orphan bytes"),
    };
    let one = store
        .record_quarantine(Quarantine {
            record: later.clone(),
            realm: "/operator".into(),
            affected: vec![],
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].repository.as_str(), one[0].tag.as_str()), ("", ""));
    assert_eq!(verified_log(store).await.len(), 4);
    // Quarantined again: the newer record replaces the older.
    let again = QuarantineRecord {
        at: later.at + 5,
        ..later
    };
    store
        .record_quarantine(Quarantine {
            record: again.clone(),
            realm: "/operator".into(),
            affected: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.quarantine_record(&orphan).await.unwrap(), Some(again));

    assert!(store.release_quarantine(&blob).await.unwrap());
    assert!(!store.release_quarantine(&blob).await.unwrap());
    assert_eq!(store.quarantine_record(&blob).await.unwrap(), None);
    assert_eq!(verified_log(store).await.len(), 5, "the entries stay");
}

/// Idle upload sessions are listed oldest first, at most `limit` of them.
pub async fn expired_uploads_are_listed_oldest_first(store: &dyn TagStore) {
    let r = repo("expire");
    let now = crate::now_millis();
    for (i, age) in [(0, 10_000), (1, 5_000), (2, 0)] {
        let id: UploadId = format!("expire-{i}-{now}").parse().unwrap();
        store
            .create_upload(session(&id, &r, now - age))
            .await
            .unwrap();
    }
    let old = store.expired_uploads(now - 1000, 10).await.unwrap();
    let ids: Vec<_> = old.iter().map(|u| u.id.as_str().to_owned()).collect();
    assert_eq!(ids, [format!("expire-0-{now}"), format!("expire-1-{now}")]);
    assert_eq!(store.expired_uploads(now - 1000, 1).await.unwrap().len(), 1);
    store.ping().await.unwrap();
}
}
