//! Repository names of the form `<team>/<artifact>`.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Longest repository name accepted, as the distribution-spec recommends for interoperability.
const MAX_NAME_LEN: usize = 255;

/// A repository name `<team>/<artifact>`, where the artifact may itself contain `/`.
///
/// Every path component follows the distribution-spec grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; the team additionally matches Pier One's
/// `[a-z][a-z0-9_-]*` so that team names stay usable as identifiers in other systems.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    full: String,
    team_len: usize,
}

impl RepoName {
    /// The part before the first `/`: the team that owns the repository.
    pub fn team(&self) -> &str {
        &self.full[..self.team_len]
    }

    /// The part after the team's `/`.
    pub fn artifact(&self) -> &str {
        &self.full[self.team_len + 1..]
    }

    /// The whole name, `<team>/<artifact>`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

/// One path component by the distribution-spec grammar.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", and then an alphanumeric.
        let run_start = i;
        let sep = b[i];
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let run = i - run_start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

fn valid_team(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == b'_' || x == b'-')
}

impl FromStr for RepoName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |why: &'static str| Error::InvalidName {
            name: s.to_owned(),
            why,
        };
        if s.len() > MAX_NAME_LEN {
            return Err(invalid("longer than 255 characters"));
        }
        let (team, artifact) = s
            .split_once('/')
            .ok_or_else(|| invalid("must be <team>/<artifact>"))?;
        if !s.split('/').all(valid_component) {
            return Err(invalid(
                "each path component must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*",
            ));
        }
        if !valid_team(team) {
            return Err(invalid("the team must match [a-z][a-z0-9_-]*"));
        }
        debug_assert!(!artifact.is_empty());
        Ok(RepoName {
            full: s.to_owned(),
            team_len: team.len(),
        })
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_team_and_nested_artifact() {
        let n: RepoName = "myteam/app".parse().unwrap();
        assert_eq!((n.team(), n.artifact()), ("myteam", "app"));
        let n: RepoName = "my-team/group/sub.app__x/y--z".parse().unwrap();
        assert_eq!(n.team(), "my-team");
        assert_eq!(n.artifact(), "group/sub.app__x/y--z");
        assert_eq!(n.to_string(), "my-team/group/sub.app__x/y--z");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "app",
            "team/",
            "/app",
            "Team/app",
            "team/App",
            "team//app",
            "team/app/",
            "team/.app",
            "team/app.",
            "team/a..b",
            "team/a___b",
            "team/a_-b",
            "1team/app",
            "team/a b",
            "team/a:b",
        ] {
            assert!(
                bad.parse::<RepoName>().is_err(),
                "{bad:?} should be invalid"
            );
        }
        let long = format!("team/{}", "a".repeat(251));
        assert!(long.parse::<RepoName>().is_err());
        let ok = format!("team/{}", "a".repeat(250));
        assert!(ok.parse::<RepoName>().is_ok());
    }
}
