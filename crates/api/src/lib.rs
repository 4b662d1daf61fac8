//! The Pier One API's JSON (`/teams`, artifacts, tags, scm-source, image search, statistics,
//! health, readiness, the audit log's pages and proofs, and the error envelope) as plain serde
//! types.
//!
//! The server serialises its answers from these types and the `pierone` CLI deserialises
//! them, so the two cannot drift apart: a field renamed here is renamed on both sides, and an
//! answer that does not fit is recognisably not from a Pier One API. Fields are public and
//! the types carry no behaviour beyond their encoding; unknown fields are ignored when
//! reading, so that a newer server can add fields without breaking older clients.
//!
//! Lists (`/teams`, `/teams/{team}/artifacts`, `.../tags`, `/tags/{prefix}`) are JSON arrays
//! of one page; the next page is named by a `Link: <...>; rel="next"` header, whose page size
//! limits are [`DEFAULT_PAGE_SIZE`] and [`MAX_PAGE_SIZE`].

#![warn(missing_docs)]

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Items in a page of a Pier One list when the client does not say (`?n=`).
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A point in time as RFC 3339 in UTC with milliseconds, like Pier One's
/// `2015-06-11T16:13:29.152Z`. Reading checks that it is RFC 3339.
///
/// A tag as the server writes it and the CLI reads it:
///
/// ```
/// use pierone_api::{Tag, Timestamp};
///
/// let json = r#"{"name": "1.0", "digest": "sha256:ab", "image": null,
///     "created": "2015-06-11T16:13:29.152Z", "created_by": "jdoe",
///     "media_type": "application/vnd.oci.image.manifest.v1+json", "size": 1234}"#;
/// let tag: Tag = serde_json::from_str(json).unwrap();
/// assert_eq!(tag.created, Timestamp::from_millis(1_434_039_209_152));
/// assert_eq!(tag.size, 1234);
/// // Not a time: not a Pier One answer.
/// assert!(serde_json::from_str::<Tag>(&json.replace("2015-06-11T16:13:29.152Z", "yesterday")).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Timestamp(String);

impl Timestamp {
    /// The instant `ms` milliseconds after the Unix epoch (the epoch itself when out of
    /// range).
    pub fn from_millis(ms: i64) -> Timestamp {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        // Always three fractional digits, so that every timestamp has the same length and
        // sorts as text.
        Timestamp(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ))
    }

    /// `s` if it is RFC 3339.
    pub fn parse(s: &str) -> Option<Timestamp> {
        OffsetDateTime::parse(s, &Rfc3339)
            .ok()
            .map(|_| Timestamp(s.to_owned()))
    }

    /// The text, as on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The instant.
    pub fn to_datetime(&self) -> OffsetDateTime {
        // Every Timestamp was checked or built as RFC 3339.
        OffsetDateTime::parse(&self.0, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not an RFC 3339 date and time"))
        })
    }
}

/// An element of `GET /teams`: a team that has artifacts.
pub type TeamName = String;

/// An element of `GET /teams/{team}/artifacts`: an artifact's name within its team (nested
/// artifacts contain `/`).
pub type ArtifactName = String;

/// A tag with its provenance: an element of `GET /teams/{team}/artifacts/{artifact}/tags`,
/// and the answer of `.../tags/{tag}` and `.../latest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// The tag's name.
    pub name: String,
    /// The manifest's digest.
    pub digest: String,
    /// The config digest (Docker's image id), for image manifests.
    pub image: Option<String>,
    /// When the tag was pushed.
    pub created: Timestamp,
    /// Who pushed it (the principal's uid).
    pub created_by: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest plus everything it references, in bytes.
    pub size: u64,
}

/// `GET /teams/{team}/artifacts/{artifact}/tags/{tag}/scm-source`: where an image was built
/// from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScmSource {
    /// The repository URL.
    pub url: String,
    /// The commit the image was built from.
    pub revision: String,
    /// Who built it.
    pub author: String,
    /// Whether the working tree had local changes (empty when clean).
    pub status: String,
    /// When it was recorded.
    pub created: Timestamp,
}

/// An element of `GET /tags/{prefix}`: a tag whose manifest or config digest starts with the
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMatch {
    /// The tag.
    pub name: String,
    /// The team of the repository.
    pub team: String,
    /// The artifact of the repository.
    pub artifact: String,
    /// The manifest's digest.
    pub digest: String,
}

/// `GET /stats`: counts over the whole registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Teams with at least one repository.
    pub teams: u64,
    /// Repositories.
    pub artifacts: u64,
    /// Tags.
    pub tags: u64,
    /// Bytes of distinct manifests and the blobs they reference.
    pub storage: u64,
}

/// An element of `GET /stats/teams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamStats {
    /// The team.
    pub team: String,
    /// Its counts.
    pub stats: TeamCounts,
}

/// The counts of one team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamCounts {
    /// The team's repositories.
    pub artifacts: u64,
    /// Tags in them.
    pub tags: u64,
}

/// `GET /.well-known/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `true` while the process answers.
    pub health: bool,
}

/// `GET /.well-known/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the database and the blob store both answered.
    pub ready: bool,
    /// `"ok"` or what failed.
    pub database: String,
    /// `"ok"` or what failed.
    pub blob_store: String,
}

/// `GET /audit/log`: a page of entries and the log's current size and head.
///
/// Generic over the entry, because an entry's encoding is hashed into the log's chain and so
/// is defined where the hashing is (`pierone_protocol::audit::AuditEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog<E> {
    /// The entries of this page, in order.
    pub entries: Vec<E>,
    /// Entries in the whole log.
    pub size: u64,
    /// The chain hash of the newest entry (hex).
    pub head: String,
}

/// `GET /audit/proof`: the inclusion proof of entry `seq` in the tree of the first `size`
/// entries (RFC 9162 audit path, nearest the leaf first), with the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProof<E> {
    /// The entry proven.
    pub seq: u64,
    /// The size of the tree it is proven in.
    pub size: u64,
    /// The audit path, hex hashes, nearest the leaf first.
    pub path: Vec<String>,
    /// The entry itself, when it exists.
    pub entry: Option<E>,
}

/// `GET /audit/checkpoint`: the newest signed checkpoint, with how often the server signs one.
///
/// Generic over the checkpoint for the same reason as [`AuditLog`]: its signed encoding is
/// defined where the signing is (`pierone_protocol::audit::Checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint<C> {
    /// The signed checkpoint.
    #[serde(flatten)]
    pub checkpoint: C,
    /// Milliseconds between the server's checkpoints: an entry logged after the checkpoint's
    /// `at` is in a signed checkpoint within about this long. Not signed, and absent where the
    /// server does not sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// The OCI error envelope every error answer carries.
///
/// Each error's `detail` (free-form JSON) is not read: nothing the CLI shows depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The errors, usually one.
    pub errors: Vec<ErrorInfo>,
    /// The request's id, as in `X-Request-Id` and the server's log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One error of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// One of the OCI distribution spec's codes, such as `NAME_UNKNOWN`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// The URL of the next page in a `Link` header value (`<url>; rel="next"`), if it names one.
///
/// ```
/// let link = r#"</teams?n=100&last=red>; rel="next""#;
/// assert_eq!(pierone_api::next_link(link), Some("/teams?n=100&last=red"));
/// assert_eq!(pierone_api::next_link(r#"</x>; rel="prev""#), None);
/// ```
pub fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .map(str::trim)
            .filter_map(|p| p.strip_prefix("rel="))
            .any(|rel| {
                rel.trim_matches('"')
                    .split_whitespace()
                    .any(|r| r == "next")
            })
            .then_some(target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_pier_ones() {
        assert_eq!(
            Timestamp::from_millis(1_434_039_209_152).as_str(),
            "2015-06-11T16:13:29.152Z"
        );
        assert_eq!(
            Timestamp::from_millis(0).as_str(),
            "1970-01-01T00:00:00.000Z"
        );
        let t = Timestamp::from_millis(1_434_039_209_152).to_datetime();
        assert_eq!(t.unix_timestamp(), 1_434_039_209);
    }

    #[test]
    fn reading_checks_timestamps() {
        let t: Timestamp = serde_json::from_str("\"2015-06-11T16:13:29+02:00\"").unwrap();
        assert_eq!(t.as_str(), "2015-06-11T16:13:29+02:00");
        for bad in ["\"yesterday\"", "\"2015-06-11\"", "1434039209152"] {
            assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tag_is_written_with_the_api_field_names() {
        let tag = Tag {
            name: "1.0".into(),
            digest: "sha256:ab".into(),
            image: None,
            created: Timestamp::from_millis(0),
            created_by: "alice".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 42,
        };
        assert_eq!(
            serde_json::to_string(&tag).unwrap(),
            r#"{"name":"1.0","digest":"sha256:ab","image":null,"created":"1970-01-01T00:00:00.000Z","created_by":"alice","media_type":"application/vnd.oci.image.manifest.v1+json","size":42}"#
        );
        let back: Tag = serde_json::from_str(&serde_json::to_string(&tag).unwrap()).unwrap();
        assert_eq!(back, tag);
    }

    #[test]
    fn answers_that_do_not_fit_are_refused() {
        // What another JSON service might answer where a list of teams is expected.
        assert!(serde_json::from_str::<Vec<TeamName>>(r#"{"teams":["a"]}"#).is_err());
        assert!(serde_json::from_str::<Vec<TeamName>>("[1, 2]").is_err());
        // A tag with a size that is not a number, or no provenance.
        assert!(
            serde_json::from_str::<Tag>(
                r#"{"name":"1","digest":"d","image":null,"created":"1970-01-01T00:00:00Z","created_by":"a","media_type":"m","size":"3"}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<Tag>(r#"{"name":"1","digest":"d"}"#).is_err());
        // Unknown fields are a newer server's, not a wrong one's.
        let s: Stats =
            serde_json::from_str(r#"{"teams":1,"artifacts":2,"tags":3,"storage":4,"blobs":5}"#)
                .unwrap();
        assert_eq!(s.storage, 4);
    }

    #[test]
    fn the_error_envelope_is_read_without_its_detail() {
        let e: ErrorBody = serde_json::from_str(
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such team","detail":{"x":1}}],"request_id":"r1"}"#,
        )
        .unwrap();
        assert_eq!(e.errors[0].code, "NAME_UNKNOWN");
        assert_eq!(e.request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</teams?n=100&last=b>; rel="next""#),
            Some("/teams?n=100&last=b")
        );
        assert_eq!(
            next_link(r#"</a>; rel="prev", </b?last=x>; rel=next"#),
            Some("/b?last=x")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
