//! The signed documents cosign puts in a registry, checked as pure functions of their bytes:
//! the simple-signing payload, and the Sigstore bundle v0.3 with its DSSE envelope over an
//! in-toto statement. See docs/SIGNING.md for what each check is and why.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use pierone_protocol::{Digest, RepoName};
use serde_json::{Map, Value};

use crate::key::{Scheme, TrustedKey};
use crate::verify::{Format, Reason};

/// Media type of a cosign simple-signing layer (the payload blob).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature over the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type (or, before cosign 3.1.2, the config media type) of cosign's OCI 1.1
/// signature referrers.
pub const COSIGN_SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// `critical.type` of a simple-signing payload.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";
/// Media type (artifact type and layer type) of a Sigstore bundle v0.3.
pub const SIGSTORE_BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `_type` of an in-toto statement v1.
pub const IN_TOTO_STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of what `cosign sign` (v3, bundle format) signs.
pub const COSIGN_SIGN_PREDICATE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";

/// At most this many signatures of one DSSE envelope are tried.
pub const MAX_DSSE_SIGNATURES: usize = 8;

/// protojson reads `bytes` fields as standard or URL-safe base64, padded or not.
const PROTOJSON_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const PROTOJSON_BASE64_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode cosign's signature annotation: standard base64 with padding, as Go's
/// `base64.StdEncoding` writes and reads it.
pub fn decode_signature_annotation(text: &str) -> Result<Vec<u8>, Reason> {
    let sig = STANDARD
        .decode(text)
        .map_err(|e| Reason::BadBase64(e.to_string()))?;
    if sig.is_empty() {
        return Err(Reason::BadBase64("empty signature".to_owned()));
    }
    Ok(sig)
}

fn decode_protojson_bytes(text: &str) -> Result<Vec<u8>, String> {
    PROTOJSON_BASE64
        .decode(text)
        .or_else(|_| PROTOJSON_BASE64_URL.decode(text))
        .map_err(|e| e.to_string())
}

/// Go's `encoding/json` matches object keys to struct fields case-insensitively, with Unicode
/// simple folding, of which only the Kelvin sign and the long s fold onto ASCII letters.
fn go_fold(c: char) -> char {
    match c {
        '\u{212A}' => 'k',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    }
}

fn go_key_matches(key: &str, field: &str) -> bool {
    key.chars().map(go_fold).eq(field.chars().map(go_fold))
}

/// The value of `field` in `obj` as cosign (Go) would read it. Two keys that both match are
/// refused: Go would take the last, another reader the first, and a signed document must mean
/// one thing.
fn go_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a Value>, Reason> {
    let mut found = None;
    for (k, v) in obj {
        if go_key_matches(k, field) {
            if found.is_some() {
                return Err(Reason::PayloadInvalid(format!(
                    "{field:?} appears under two keys that differ only in case"
                )));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn go_object<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, Reason> {
    match go_field(obj, field)? {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(Reason::PayloadInvalid(format!("{path} is not an object"))),
        None => Err(Reason::PayloadInvalid(format!("no {path}"))),
    }
}

fn go_string<'a>(obj: &'a Map<String, Value>, field: &str, path: &str) -> Result<&'a str, Reason> {
    match go_field(obj, field)? {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Reason::PayloadInvalid(format!("{path} is not a string"))),
        None => Err(Reason::PayloadInvalid(format!("no {path}"))),
    }
}

/// The repository a `docker-reference` names: without a `@digest` or `:tag` suffix, and the
/// candidates with and without a leading registry host (a first component with `.` or `:`, or
/// `localhost`, as Docker decides it).
fn reference_repositories(reference: &str) -> Vec<&str> {
    let no_digest = reference.split('@').next().unwrap_or_default();
    let path = match no_digest.rfind(':') {
        Some(colon) if !no_digest[colon..].contains('/') => &no_digest[..colon],
        _ => no_digest,
    };
    let mut out = vec![path];
    if let Some((first, rest)) = path.split_once('/')
        && (first.contains(['.', ':']) || first == "localhost")
    {
        out.push(rest);
    }
    out
}

/// Check a simple-signing payload whose signature has been verified: it must name `image`, be
/// of cosign's type, and name `repo` (host and tag or digest dropped).
pub fn check_simple_signing_payload(
    payload: &[u8],
    image: &Digest,
    repo: &RepoName,
) -> Result<(), Reason> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Reason::PayloadInvalid(format!("not JSON: {e}")))?;
    let root = value
        .as_object()
        .ok_or_else(|| Reason::PayloadInvalid("not a JSON object".to_owned()))?;
    let critical = go_object(root, "critical", "critical")?;
    let image_obj = go_object(critical, "image", "critical.image")?;
    let named = go_string(
        image_obj,
        "docker-manifest-digest",
        "critical.image.docker-manifest-digest",
    )?;
    if named != image.as_str() {
        return Err(Reason::OtherDigest(named.to_owned()));
    }
    let kind = go_string(critical, "type", "critical.type")?;
    if kind != SIMPLE_SIGNING_TYPE {
        return Err(Reason::PayloadInvalid(format!(
            "critical.type is {kind:?}, not {SIMPLE_SIGNING_TYPE:?}"
        )));
    }
    let identity = go_object(critical, "identity", "critical.identity")?;
    let reference = go_string(
        identity,
        "docker-reference",
        "critical.identity.docker-reference",
    )?;
    if !reference_repositories(reference).contains(&repo.as_str()) {
        return Err(Reason::OtherRepository(reference.to_owned()));
    }
    Ok(())
}

/// The DSSE pre-authentication encoding: what a DSSE signature signs.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// protojson accepts a field under its JSON name or its proto name, not both.
fn proto_field<'a>(
    obj: &'a Map<String, Value>,
    json_name: &str,
    proto_name: &str,
) -> Result<Option<&'a Value>, String> {
    match (obj.get(json_name), obj.get(proto_name)) {
        (Some(_), Some(_)) if json_name != proto_name => {
            Err(format!("both {json_name:?} and {proto_name:?}"))
        }
        (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

fn proto_object<'a>(
    obj: &'a Map<String, Value>,
    json_name: &str,
    proto_name: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match proto_field(obj, json_name, proto_name)? {
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(format!("{json_name} is not an object")),
        None => Ok(None),
    }
}

fn proto_string<'a>(
    obj: &'a Map<String, Value>,
    json_name: &str,
    proto_name: &str,
) -> Result<Option<&'a str>, String> {
    match proto_field(obj, json_name, proto_name)? {
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{json_name} is not a string")),
        None => Ok(None),
    }
}

/// What a verified signature yielded: which key, under which scheme, and the signature as
/// found (base64).
#[derive(Debug, Clone)]
pub struct SignedBy<'k> {
    /// The key that verified.
    pub key: &'k TrustedKey,
    /// The scheme it verified under.
    pub scheme: Scheme,
    /// The signature, base64 as in the envelope.
    pub signature: String,
}

/// Check a Sigstore bundle v0.3 holding a DSSE envelope over an in-toto statement: the key its
/// hint names must be one of `keys`, one of the envelope's signatures must verify over the PAE
/// with it, and the statement must be cosign's signing predicate over `image`.
pub fn check_bundle<'k>(
    bundle: &[u8],
    image: &Digest,
    keys: &'k [TrustedKey],
) -> Result<SignedBy<'k>, Reason> {
    let bad = Reason::BundleInvalid;
    let value: Value = serde_json::from_slice(bundle).map_err(|e| bad(format!("not JSON: {e}")))?;
    let root = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".to_owned()))?;
    let media_type = proto_string(root, "mediaType", "media_type")
        .map_err(bad)?
        .unwrap_or_default();
    if media_type != SIGSTORE_BUNDLE_MEDIA_TYPE {
        return Err(bad(format!(
            "mediaType {media_type:?}, not {SIGSTORE_BUNDLE_MEDIA_TYPE:?}"
        )));
    }
    let material = proto_object(root, "verificationMaterial", "verification_material")
        .map_err(bad)?
        .ok_or_else(|| bad("no verificationMaterial".to_owned()))?;
    let Some(public_key) = proto_object(material, "publicKey", "public_key").map_err(bad)? else {
        return Err(Reason::Keyless);
    };
    let hint = proto_string(public_key, "hint", "hint")
        .map_err(bad)?
        .ok_or_else(|| bad("verificationMaterial.publicKey has no hint".to_owned()))?;
    let key = keys
        .iter()
        .find(|k| k.hint() == hint)
        .ok_or_else(|| Reason::UnknownKeyHint(hint.to_owned()))?;
    let Some(envelope) = proto_object(root, "dsseEnvelope", "dsse_envelope").map_err(bad)? else {
        return Err(bad(
            "no dsseEnvelope (a messageSignature bundle signs a blob, not an image)".to_owned(),
        ));
    };
    let payload_type = proto_string(envelope, "payloadType", "payload_type")
        .map_err(bad)?
        .unwrap_or_default();
    if payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(bad(format!(
            "DSSE payloadType {payload_type:?}, not {IN_TOTO_PAYLOAD_TYPE:?}"
        )));
    }
    let payload = proto_string(envelope, "payload", "payload")
        .map_err(bad)?
        .ok_or_else(|| bad("DSSE envelope without payload".to_owned()))?;
    let payload = decode_protojson_bytes(payload)
        .map_err(|e| Reason::BadBase64(format!("DSSE payload: {e}")))?;
    let signatures = match envelope.get("signatures") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(bad("DSSE envelope without signatures".to_owned())),
    };
    let message = pae(payload_type, &payload);
    let mut found = None;
    let mut base64_error = None;
    for s in signatures.iter().take(MAX_DSSE_SIGNATURES) {
        let Some(text) = s.get("sig").and_then(Value::as_str) else {
            continue;
        };
        match decode_protojson_bytes(text) {
            Ok(sig) if !sig.is_empty() => {
                if let Some(scheme) = key.verify(&message, &sig) {
                    found = Some(SignedBy {
                        key,
                        scheme,
                        signature: text.to_owned(),
                    });
                    break;
                }
            }
            Ok(_) => base64_error = Some("empty DSSE signature".to_owned()),
            Err(e) => base64_error = Some(format!("DSSE signature: {e}")),
        }
    }
    let Some(found) = found else {
        return Err(match base64_error {
            Some(e) => Reason::BadBase64(e),
            None => Reason::NoKeyVerifies,
        });
    };
    check_statement(&payload, image)?;
    Ok(found)
}

/// The in-toto statement a verified envelope carries must be cosign's signing predicate with
/// `image` among its subjects.
pub fn check_statement(statement: &[u8], image: &Digest) -> Result<(), Reason> {
    let bad = Reason::PayloadInvalid;
    let value: Value =
        serde_json::from_slice(statement).map_err(|e| bad(format!("statement not JSON: {e}")))?;
    let root = value
        .as_object()
        .ok_or_else(|| bad("statement not a JSON object".to_owned()))?;
    let kind = root
        .get("_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != IN_TOTO_STATEMENT_V1 {
        return Err(bad(format!(
            "statement _type {kind:?}, not {IN_TOTO_STATEMENT_V1:?}"
        )));
    }
    let predicate = proto_string(root, "predicateType", "predicate_type")
        .map_err(bad)?
        .unwrap_or_default();
    if predicate != COSIGN_SIGN_PREDICATE_TYPE {
        return Err(bad(format!(
            "predicateType {predicate:?}, not {COSIGN_SIGN_PREDICATE_TYPE:?}"
        )));
    }
    let Some(Value::Array(subjects)) = root.get("subject") else {
        return Err(bad("statement without subject".to_owned()));
    };
    let algorithm = image.algorithm().as_str();
    let mut named = Vec::new();
    for s in subjects {
        if let Some(hex) = s
            .get("digest")
            .and_then(|d| d.get(algorithm))
            .and_then(Value::as_str)
        {
            if hex == image.hex() {
                return Ok(());
            }
            named.push(format!("{algorithm}:{hex}"));
        }
    }
    Err(match named.into_iter().next() {
        Some(other) => Reason::OtherDigest(other),
        None => bad(format!("no subject has a {algorithm} digest")),
    })
}

/// Check one signed blob as the verifier does, given its bytes (already hashed against their
/// digest): for the simple-signing formats the payload and its `dev.cosignproject.cosign/signature`
/// annotation, for a bundle the bundle (which carries its signature; `signature` is ignored).
/// This is what `pierone audit verify` can run offline on a recorded [`crate::Verified`].
pub fn check_signed_blob<'k>(
    format: Format,
    blob: &[u8],
    signature: Option<&str>,
    keys: &'k [TrustedKey],
    image: &Digest,
    repo: &RepoName,
) -> Result<SignedBy<'k>, Reason> {
    match format {
        Format::SigstoreBundle => check_bundle(blob, image, keys),
        Format::CosignTag | Format::CosignReferrer => {
            let text = signature.ok_or(Reason::NoSignatureAnnotation)?;
            let sig = decode_signature_annotation(text)?;
            let (key, scheme) = keys
                .iter()
                .find_map(|k| k.verify(blob, &sig).map(|s| (k, s)))
                .ok_or(Reason::NoKeyVerifies)?;
            check_simple_signing_payload(blob, image, repo)?;
            Ok(SignedBy {
                key,
                scheme,
                signature: text.to_owned(),
            })
        }
    }
}
