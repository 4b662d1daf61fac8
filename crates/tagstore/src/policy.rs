//! Which tags may move: the configured mutable patterns and the `latest` rule.

use pierone_protocol::Tag;
use wildmatch::WildMatch;

use crate::Error;

/// Whether a tag may be moved once set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    Immutable,
    Mutable,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
