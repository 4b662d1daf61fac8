//! Which tags may move, and the one decision of whether a tag write may proceed: the
//! configured mutable patterns, the `latest` rule, and [`decide`], which every tag store calls
//! inside its transaction.

use pierone_protocol::{Digest, RepoName, Tag};
use wildmatch::WildMatch;

use crate::{Error, TagOutcome};

/// Whether a tag may be moved once set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    /// Once set, the tag names its digest forever.
    Immutable,
    /// The tag may be moved to another digest (`*-SNAPSHOT`, an allowed `latest`).
    Mutable,
}

/// What may become of a tag write, given what the tag names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The tag does not exist yet: create it. (Of two writers that both see it missing, the
    /// store's unique constraint lets one in; the other decides again and sees its row.)
    Create,
    /// The tag already names the pushed digest: nothing to write, not an error, so that a
    /// re-run of the same push succeeds.
    Keep,
    /// A mutable tag moves from `previous` to the pushed digest.
    Move {
        /// What the tag named before.
        previous: Digest,
    },
    /// An immutable tag names another digest: the write is refused and changes nothing.
    Refuse {
        /// What the tag names, and keeps naming.
        existing: Digest,
    },
}

impl Decision {
    /// The outcome a store reports for this decision, or the refusal naming both digests.
    pub fn into_outcome(
        self,
        repo: &RepoName,
        tag: &Tag,
        pushed: &Digest,
    ) -> Result<TagOutcome, Error> {
        match self {
            Decision::Create => Ok(TagOutcome::Created),
            Decision::Keep => Ok(TagOutcome::Unchanged),
            Decision::Move { previous } => Ok(TagOutcome::Moved { previous }),
            Decision::Refuse { existing } => Err(Error::TagImmutable {
                repo: repo.clone(),
                tag: tag.clone(),
                existing,
                pushed: pushed.clone(),
            }),
        }
    }
}

/// The immutable-tag rule, the one place it is written: a tag write may proceed if the tag is
/// new, or already names `pushed` (idempotent), or is mutable; otherwise it is refused.
///
/// A pure function of what the store read, so each store calls it inside the transaction (or
/// under the lock) that also writes the tag: the store, not the process, decides a race.
/// `mutability` comes from [`TagPolicy::classify`], which also applies the `latest` rule.
///
/// ```
/// use pierone_protocol::Digest;
/// use pierone_tagstore::{Decision, Mutability, decide};
///
/// let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
/// assert_eq!(decide(Mutability::Immutable, None, &a), Decision::Create);
/// assert_eq!(decide(Mutability::Immutable, Some(&a), &a), Decision::Keep);
/// assert_eq!(
///     decide(Mutability::Immutable, Some(&a), &b),
///     Decision::Refuse { existing: a.clone() }
/// );
/// assert_eq!(
///     decide(Mutability::Mutable, Some(&a), &b),
///     Decision::Move { previous: a }
/// );
/// ```
pub fn decide(mutability: Mutability, current: Option<&Digest>, pushed: &Digest) -> Decision {
    match current {
        None => Decision::Create,
        Some(current) if current == pushed => Decision::Keep,
        Some(current) => match mutability {
            Mutability::Mutable => Decision::Move {
                previous: current.clone(),
            },
            Mutability::Immutable => Decision::Refuse {
                existing: current.clone(),
            },
        },
    }
}

/// The rules for tag writes: which tags are mutable, and whether `latest` may be pushed.
#[derive(Debug, Clone)]
pub struct TagPolicy {
    patterns: Vec<WildMatch>,
    allow_latest_push: bool,
}

impl Default for TagPolicy {
    /// Pier One's defaults: `*-SNAPSHOT` is mutable (case-sensitive), `latest` is refused.
    fn default() -> Self {
        TagPolicy::new(["*-SNAPSHOT"], false)
    }
}

impl TagPolicy {
    /// `patterns` are globs where `*` matches any run and `?` one character.
    pub fn new<S: AsRef<str>>(
        patterns: impl IntoIterator<Item = S>,
        allow_latest_push: bool,
    ) -> Self {
        TagPolicy {
            patterns: patterns
                .into_iter()
                .map(|p| WildMatch::new(p.as_ref()))
                .collect(),
            allow_latest_push,
        }
    }

    /// Decide how a push of `tag` may proceed.
    pub fn classify(&self, tag: &Tag) -> Result<Mutability, Error> {
        if tag.as_str() == "latest" {
            // When allowed at all, `latest` must be able to move, or it would freeze at the
            // first push and contradict its name.
            return if self.allow_latest_push {
                Ok(Mutability::Mutable)
            } else {
                Err(Error::LatestNotAllowed)
            };
        }
        if self.patterns.iter().any(|p| p.matches(tag.as_str())) {
            Ok(Mutability::Mutable)
        } else {
            Ok(Mutability::Immutable)
        }
    }

    /// [`classify`](TagPolicy::classify) `tag`, then [`decide`] a write of `pushed` over
    /// `current`: the whole rule for a tag write, for a caller that holds the policy.
    pub fn decide(
        &self,
        tag: &Tag,
        current: Option<&Digest>,
        pushed: &Digest,
    ) -> Result<Decision, Error> {
        Ok(decide(self.classify(tag)?, current, pushed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn t(s: &str) -> Tag {
        s.parse().unwrap()
    }

    #[test]
    fn defaults() {
        let p = TagPolicy::default();
        assert_eq!(p.classify(&t("1.0")).unwrap(), Mutability::Immutable);
        assert_eq!(p.classify(&t("1.0-SNAPSHOT")).unwrap(), Mutability::Mutable);
        assert_eq!(
            p.classify(&t("1.0-snapshot")).unwrap(),
            Mutability::Immutable
        );
        assert!(matches!(
            p.classify(&t("latest")),
            Err(Error::LatestNotAllowed)
        ));
    }

    #[test]
    fn configured() {
        let p = TagPolicy::new(["dev-*", "pr-?"], true);
        assert_eq!(p.classify(&t("dev-x")).unwrap(), Mutability::Mutable);
        assert_eq!(p.classify(&t("pr-1")).unwrap(), Mutability::Mutable);
        assert_eq!(p.classify(&t("pr-12")).unwrap(), Mutability::Immutable);
        assert_eq!(
            p.classify(&t("1.0-SNAPSHOT")).unwrap(),
            Mutability::Immutable
        );
        assert_eq!(p.classify(&t("latest")).unwrap(), Mutability::Mutable);
    }

    /// Every combination of mutability, what the tag names (nothing, the pushed digest,
    /// another) and the pushed digest, against the rule as the design states it.
    #[test]
    fn every_case_of_the_rule() {
        let (a, b) = (d("a"), d("b"));
        for m in [Mutability::Immutable, Mutability::Mutable] {
            for pushed in [&a, &b] {
                let other = if pushed == &a { &b } else { &a };
                assert_eq!(decide(m, None, pushed), Decision::Create);
                assert_eq!(decide(m, Some(pushed), pushed), Decision::Keep);
                let over_other = decide(m, Some(other), pushed);
                match m {
                    Mutability::Immutable => assert_eq!(
                        over_other,
                        Decision::Refuse {
                            existing: other.clone()
                        }
                    ),
                    Mutability::Mutable => assert_eq!(
                        over_other,
                        Decision::Move {
                            previous: other.clone()
                        }
                    ),
                }
            }
        }
    }

    #[test]
    fn a_refusal_names_both_digests() {
        let (repo, tag): (RepoName, Tag) = ("team/app".parse().unwrap(), t("1.0"));
        let (a, b) = (d("a"), d("b"));
        let e = decide(Mutability::Immutable, Some(&a), &b)
            .into_outcome(&repo, &tag, &b)
            .unwrap_err();
        assert!(matches!(
            &e,
            Error::TagImmutable { repo: r, tag: t, existing, pushed }
                if r == &repo && t == &tag && existing == &a && pushed == &b
        ));
        let msg = e.to_string();
        assert!(
            msg.contains(a.as_str()) && msg.contains(b.as_str()),
            "{msg}"
        );
    }

    #[test]
    fn outcomes_follow_decisions() {
        let (repo, tag) = ("team/app".parse().unwrap(), t("1.0"));
        let (a, b) = (d("a"), d("b"));
        let outcome = |x: Decision| x.into_outcome(&repo, &tag, &b).unwrap();
        assert_eq!(outcome(Decision::Create), TagOutcome::Created);
        assert_eq!(outcome(Decision::Keep), TagOutcome::Unchanged);
        assert_eq!(
            outcome(Decision::Move {
                previous: a.clone()
            }),
            TagOutcome::Moved { previous: a }
        );
    }

    #[test]
    fn latest_is_refused_before_anything_is_read() {
        let p = TagPolicy::default();
        let a = d("a");
        for current in [None, Some(&a)] {
            assert!(matches!(
                p.decide(&t("latest"), current, &a),
                Err(Error::LatestNotAllowed)
            ));
        }
        let allowed = TagPolicy::new(Vec::<String>::new(), true);
        assert_eq!(
            allowed.decide(&t("latest"), Some(&a), &d("b")).unwrap(),
            Decision::Move { previous: a }
        );
    }

    fn mutability() -> impl Strategy<Value = Mutability> {
        prop_oneof![Just(Mutability::Immutable), Just(Mutability::Mutable)]
    }

    fn digest() -> impl Strategy<Value = Digest> {
        // Few distinct values, so that "the tag names the pushed digest" comes up often.
        (0u8..4).prop_map(|n| Digest::sha256_of(&[n]))
    }

    fn tag_name() -> impl Strategy<Value = Tag> {
        prop_oneof![
            Just("latest".to_owned()),
            "[a-z0-9]{1,4}(-SNAPSHOT|-snapshot|-dev)?",
            "dev-[a-z]{0,3}",
        ]
        .prop_map(|s| s.parse().unwrap())
    }

    proptest! {
        /// The rule's properties, for any inputs: a tag is created only when absent, kept
        /// exactly when it names the pushed digest, refused only if immutable, moved only if
        /// mutable, and a refusal or move names what the tag named.
        #[test]
        fn decide_keeps_the_rule(
            m in mutability(),
            current in proptest::option::of(digest()),
            pushed in digest(),
        ) {
            let decision = decide(m, current.as_ref(), &pushed);
            prop_assert_eq!(decision == Decision::Create, current.is_none());
            prop_assert_eq!(decision == Decision::Keep, current.as_ref() == Some(&pushed));
            match decision {
                Decision::Create | Decision::Keep => {}
                Decision::Move { previous } => {
                    prop_assert_eq!(m, Mutability::Mutable);
                    prop_assert_eq!(Some(&previous), current.as_ref());
                    prop_assert_ne!(&previous, &pushed);
                }
                Decision::Refuse { existing } => {
                    prop_assert_eq!(m, Mutability::Immutable);
                    prop_assert_eq!(Some(&existing), current.as_ref());
                    prop_assert_ne!(&existing, &pushed);
                }
            }
        }

        /// With a policy: `latest` is refused outright unless allowed, and then moves like any
        /// mutable tag; a tag matching a pattern moves; any other tag is immutable.
        #[test]
        fn the_policy_decides_through_decide(
            tag in tag_name(),
            allow_latest in any::<bool>(),
            current in proptest::option::of(digest()),
            pushed in digest(),
        ) {
            let p = TagPolicy::new(["*-SNAPSHOT", "dev-*"], allow_latest);
            let got = p.decide(&tag, current.as_ref(), &pushed);
            let name = tag.as_str();
            if name == "latest" && !allow_latest {
                prop_assert!(matches!(got, Err(Error::LatestNotAllowed)));
            } else {
                let mutable = name == "latest" || name.ends_with("-SNAPSHOT") || name.starts_with("dev-");
                let m = if mutable { Mutability::Mutable } else { Mutability::Immutable };
                prop_assert_eq!(got.unwrap(), decide(m, current.as_ref(), &pushed));
            }
        }
    }
}
