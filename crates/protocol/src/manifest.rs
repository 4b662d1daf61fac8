//! Manifest media types, parsing and validation.
//!
//! Parsing never re-serialises: the registry stores and serves the bytes it was given, and this
//! module only extracts what the registry must check (referenced blobs, child manifests,
//! `subject`) and what the referrers API reports.

use std::collections::BTreeMap;

use oci_spec::image::{ImageIndex, ImageManifest};

use crate::{Digest, Error};

/// The largest manifest accepted: the distribution-spec asks registries to take at least 4 MiB.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// The manifest media types the registry knows.
pub mod media_types {
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// A Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker manifest list (Docker's index).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// A Docker schema 1 manifest, which the registry refuses.
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// A signed Docker schema 1 manifest, which the registry refuses.
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

/// Whether a manifest describes one image (or artifact) or a set of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker schema2 manifest: a config plus layers.
    Image,
    /// OCI image index or Docker manifest list: a set of child manifests.
    Index,
}

/// A content descriptor as far as the registry needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes, as the manifest declares it.
    pub size: u64,
}

/// What the registry learns from a valid manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// An image (or artifact) or an index.
    pub kind: ManifestKind,
    /// The manifest's own media type, which is also what it is served as.
    pub media_type: String,
    /// The config blob (image manifests only).
    pub config: Option<Descriptor>,
    /// Layer blobs (image manifests only).
    pub layers: Vec<Descriptor>,
    /// Child manifests (indexes only).
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to, for the referrers API.
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for image manifests without one the config media type, as the
    /// referrers API defines it.
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Every blob the manifest requires to exist in the registry.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

fn is_index_type(mt: &str) -> bool {
    mt == media_types::OCI_INDEX || mt == media_types::DOCKER_MANIFEST_LIST
}

fn is_image_type(mt: &str) -> bool {
    mt == media_types::OCI_MANIFEST || mt == media_types::DOCKER_MANIFEST
}

fn convert(d: &oci_spec::image::Descriptor) -> Result<Descriptor, Error> {
    let digest: Digest = d
        .digest()
        .to_string()
        .parse()
        .map_err(|e: Error| Error::ManifestInvalid(format!("descriptor digest: {e}")))?;
    Ok(Descriptor {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
    })
}

/// Parse and validate a manifest.
///
/// `content_type` is the request's `Content-Type` (without parameters), if any. When both it and
/// the body's `mediaType` are present they must agree; when neither is, the shape of the body
/// decides, as the image-spec allows `mediaType` to be omitted.
///
/// ```
/// use pierone_protocol::{Digest, ManifestKind, parse_manifest};
///
/// let config = Digest::sha256_of(b"{}");
/// let layer = Digest::sha256_of(b"layer");
/// let body = format!(
///     r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
///        "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},
///        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":5}}]}}"#
/// );
/// let m = parse_manifest(None, body.as_bytes()).unwrap();
/// assert_eq!(m.kind, ManifestKind::Image);
/// let blobs: Vec<&Digest> = m.blobs().map(|d| &d.digest).collect();
/// assert_eq!(blobs, [&config, &layer]);
/// // A Content-Type that contradicts the body's mediaType is refused.
/// let index = "application/vnd.oci.image.index.v1+json";
/// assert!(parse_manifest(Some(index), body.as_bytes()).is_err());
/// ```
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, Error> {
    let len = body.len() as u64;
    if len > MAX_MANIFEST_SIZE {
        return Err(Error::ManifestTooLarge {
            size: len,
            limit: MAX_MANIFEST_SIZE,
        });
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::ManifestInvalid(format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::ManifestInvalid("not a JSON object".into()))?;
    let body_type = match obj.get("mediaType") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Error::ManifestInvalid("mediaType is not a string".into())),
    };
    // Generic types such as application/json or application/octet-stream carry no information;
    // clients like oras and curl send them, so they do not count as a declaration.
    let declared = content_type.filter(|ct| {
        is_index_type(ct)
            || is_image_type(ct)
            || *ct == media_types::DOCKER_SCHEMA1
            || *ct == media_types::DOCKER_SCHEMA1_SIGNED
    });
    let media_type = match (declared, body_type) {
        (Some(ct), Some(bt)) if ct != bt => {
            return Err(Error::ManifestInvalid(format!(
                "Content-Type {ct} does not match the manifest's mediaType {bt}"
            )));
        }
        (_, Some(bt)) => bt.to_owned(),
        (Some(ct), None) => ct.to_owned(),
        (None, None) if obj.contains_key("manifests") => media_types::OCI_INDEX.to_owned(),
        (None, None) if obj.contains_key("config") => media_types::OCI_MANIFEST.to_owned(),
        (None, None) => {
            return Err(Error::ManifestInvalid(
                "cannot tell the manifest type: no mediaType, no config, no manifests".into(),
            ));
        }
    };
    if media_type == media_types::DOCKER_SCHEMA1 || media_type == media_types::DOCKER_SCHEMA1_SIGNED
    {
        return Err(Error::ManifestInvalid(
            "Docker schema1 manifests are not supported; push schema2 or OCI".into(),
        ));
    }
    if obj.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(Error::ManifestInvalid("schemaVersion must be 2".into()));
    }
    let annotations = |a: &Option<std::collections::HashMap<String, String>>| {
        a.as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    if is_index_type(&media_type) {
        let index: ImageIndex = serde_json::from_value(value)
            .map_err(|e| Error::ManifestInvalid(format!("not a valid index: {e}")))?;
        Ok(Manifest {
            kind: ManifestKind::Index,
            config: None,
            layers: Vec::new(),
            manifests: index
                .manifests()
                .iter()
                .map(convert)
                .collect::<Result<_, _>>()?,
            subject: index.subject().as_ref().map(convert).transpose()?,
            artifact_type: index.artifact_type().as_ref().map(|t| t.to_string()),
            annotations: annotations(index.annotations()),
            media_type,
        })
    } else if is_image_type(&media_type) {
        let m: ImageManifest = serde_json::from_value(value)
            .map_err(|e| Error::ManifestInvalid(format!("not a valid image manifest: {e}")))?;
        let config = convert(m.config())?;
        let artifact_type = m
            .artifact_type()
            .as_ref()
            .map(|t| t.to_string())
            .or_else(|| Some(config.media_type.clone()));
        Ok(Manifest {
            kind: ManifestKind::Image,
            layers: m.layers().iter().map(convert).collect::<Result<_, _>>()?,
            config: Some(config),
            manifests: Vec::new(),
            subject: m.subject().as_ref().map(convert).transpose()?,
            artifact_type,
            annotations: annotations(m.annotations()),
            media_type,
        })
    } else {
        Err(Error::ManifestInvalid(format!(
            "unsupported manifest media type {media_type}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(media_type: Option<&str>) -> String {
        let mt = media_type
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":5}}]}}"#
        )
    }

    #[test]
    fn oci_image_manifest() {
        let m = parse_manifest(
            Some(media_types::OCI_MANIFEST),
            image(Some(media_types::OCI_MANIFEST)).as_bytes(),
        )
        .unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(
            m.blobs().map(|d| d.digest.as_str()).collect::<Vec<_>>(),
            [D1, D2]
        );
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn media_type_from_header_or_shape() {
        let m = parse_manifest(Some(media_types::DOCKER_MANIFEST), image(None).as_bytes()).unwrap();
        assert_eq!(m.media_type, media_types::DOCKER_MANIFEST);
        let m = parse_manifest(Some("application/json"), image(None).as_bytes()).unwrap();
        assert_eq!(m.media_type, media_types::OCI_MANIFEST);
        let m = parse_manifest(None, image(Some(media_types::DOCKER_MANIFEST)).as_bytes()).unwrap();
        assert_eq!(m.media_type, media_types::DOCKER_MANIFEST);
    }

    #[test]
    fn mismatched_content_type_is_invalid() {
        let e = parse_manifest(
            Some(media_types::OCI_INDEX),
            image(Some(media_types::OCI_MANIFEST)).as_bytes(),
        );
        assert!(matches!(e, Err(Error::ManifestInvalid(_))));
    }

    #[test]
    fn index_with_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":10,"platform":{{"architecture":"amd64","os":"linux"}}}}],"subject":{{"mediaType":"{}","digest":"{D2}","size":3}},"artifactType":"application/x.sig"}}"#,
            media_types::OCI_INDEX,
            media_types::OCI_MANIFEST,
            media_types::OCI_MANIFEST
        );
        let m = parse_manifest(None, body.as_bytes()).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.subject.as_ref().unwrap().digest.as_str(), D2);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
        assert_eq!(m.blobs().count(), 0);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"schemaVersion":1,"config":{}}"#,
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:zz","size":1},"layers":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#,
            br#"{"schemaVersion":2,"mediaType":"text/plain","config":{}}"#,
            br#"{"schemaVersion":2,"mediaType":7}"#,
        ] {
            assert!(
                matches!(parse_manifest(None, bad), Err(Error::ManifestInvalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b' '; (MAX_MANIFEST_SIZE + 1) as usize];
        assert!(matches!(
            parse_manifest(None, &huge),
            Err(Error::ManifestTooLarge { .. })
        ));
    }
}
