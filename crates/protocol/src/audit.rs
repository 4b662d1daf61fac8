//! The tamper-evident tag log: how an entry is hashed into the chain, how a checkpoint is
//! signed, and how a client verifies both without trusting the server.
//!
//! Every tag assignment becomes an [`AuditEntry`] whose `hash` covers its fields and the hash
//! of the entry before it, so changing, inserting or removing any entry breaks every later
//! link. A [`Checkpoint`] is the server's Ed25519 signature over the log's size and head hash:
//! even a rewriter who recomputes the whole chain cannot produce the signed head.
//!
//! The encodings below are the contract with verifiers; changing them is a new version.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One tag assignment, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub principal: String,
    pub realm: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// What a mutable tag named before it moved.
    pub previous_digest: Option<String>,
    /// `hash` of entry `seq - 1`, or [`GENESIS`].
    pub prev_hash: String,
    /// [`AuditEntry::compute_hash`] of this entry.
    pub hash: String,
}

impl AuditEntry {
    /// Hex SHA-256 over the fields and `prev_hash`. Each field is written as
    /// `<byte length>:<bytes>\n`, so no choice of field contents can make two different
    /// entries encode alike.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |v: &[u8]| {
            h.update(v.len().to_string().as_bytes());
            h.update(b":");
            h.update(v);
            h.update(b"\n");
        };
        field(b"pierone-audit-v1");
        field(self.seq.to_string().as_bytes());
        field(self.at.to_string().as_bytes());
        field(self.principal.as_bytes());
        field(self.realm.as_bytes());
        field(self.repository.as_bytes());
        field(self.tag.as_bytes());
        field(self.digest.as_bytes());
        field(self.previous_digest.as_deref().unwrap_or("").as_bytes());
        field(self.prev_hash.as_bytes());
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A signed statement "the log had `size` entries and its last hash was `head`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub size: u64,
    /// Hash of entry `size`, or [`GENESIS`] for an empty log.
    pub head: String,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub at: i64,
    /// The signer's Ed25519 public key, base64.
    pub public_key: String,
    /// Ed25519 signature over [`Checkpoint::message`], base64.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(size: u64, head: &str, at: i64) -> Vec<u8> {
        format!("pierone-audit-checkpoint-v1\n{size}\n{head}\n{at}\n").into_bytes()
    }

    /// Check the signature with `public_key` (raw 32 bytes). Verifiers should pass a key
    /// they obtained out of band; the `public_key` field is only a hint.
    pub fn verify_signature(&self, public_key: &[u8]) -> Result<(), Error> {
        let sig = B64
            .decode(&self.signature)
            .map_err(|e| Error::AuditCheckpointInvalid(format!("signature is not base64: {e}")))?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&Checkpoint::message(self.size, &self.head, self.at), &sig)
            .map_err(|_| {
                Error::AuditCheckpointInvalid(
                    "the signature does not match the checkpoint and key".into(),
                )
            })
    }
}

/// Decode a base64 public key as printed by [`AuditSigner::public_key`].
pub fn decode_public_key(b64: &str) -> Result<Vec<u8>, Error> {
    let raw = B64
        .decode(b64.trim())
        .map_err(|e| Error::AuditKeyInvalid(format!("public key is not base64: {e}")))?;
    if raw.len() != 32 {
        return Err(Error::AuditKeyInvalid(format!(
            "an Ed25519 public key has 32 bytes, not {}",
            raw.len()
        )));
    }
    Ok(raw)
}

/// The server's checkpoint signing key.
pub struct AuditSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl AuditSigner {
    /// A key from a PEM file as `openssl genpkey -algorithm ed25519` writes it (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<AuditSigner, Error> {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() {
            return Err(Error::AuditKeyInvalid(
                "no \"BEGIN PRIVATE KEY\" block (expected PKCS#8 PEM, e.g. from `openssl genpkey -algorithm ed25519`)".into(),
            ));
        }
        let der = B64
            .decode(body.trim())
            .map_err(|e| Error::AuditKeyInvalid(format!("PEM body is not base64: {e}")))?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(|key| AuditSigner { key })
            .map_err(|e| Error::AuditKeyInvalid(format!("not an Ed25519 PKCS#8 key: {e}")))
    }

    /// The public key, base64: what verifiers should pin.
    pub fn public_key(&self) -> String {
        B64.encode(self.key.public_key().as_ref())
    }

    pub fn sign(&self, size: u64, head: &str, at: i64) -> Checkpoint {
        let sig = self.key.sign(&Checkpoint::message(size, head, at));
        Checkpoint {
            size,
            head: head.to_owned(),
            at,
            public_key: self.public_key(),
            signature: B64.encode(sig.as_ref()),
        }
    }
}

/// Checks a log read in order, one entry at a time, so that a log of any length is verified
/// in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    size: u64,
    head: String,
    /// The head hash once `size` reached the checkpoint's size.
    at_checkpoint: Option<(u64, Option<String>)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new()
    }
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier {
            size: 0,
            head: GENESIS.to_owned(),
            at_checkpoint: None,
        }
    }

    /// Continue after a prefix verified earlier: `size` entries whose last hashed to `head`.
    /// The next entry must link to `head`, so a log that rewrote that prefix fails.
    pub fn resume(size: u64, head: &str) -> ChainVerifier {
        ChainVerifier {
            size,
            head: head.to_owned(),
            at_checkpoint: None,
        }
    }

    /// Remember the head hash at `size`, to compare with a checkpoint afterwards.
    pub fn watch(&mut self, size: u64) {
        self.at_checkpoint = Some((size, (size == self.size).then(|| self.head.clone())));
    }

    /// Entries checked so far, and the hash of the last.
    pub fn head(&self) -> (u64, &str) {
        (self.size, &self.head)
    }

    /// The next entry: it must be numbered `size + 1`, link to the current head, and hash to
    /// what it says.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), Error> {
        let broken = |why: String| Error::AuditChainBroken { seq: e.seq, why };
        if e.seq != self.size + 1 {
            return Err(Error::AuditChainBroken {
                seq: self.size + 1,
                why: format!("missing: the next entry in the log is numbered {}", e.seq),
            });
        }
        if e.prev_hash != self.head {
            return Err(broken(format!(
                "links to {} but the entry before it hashes to {}",
                e.prev_hash, self.head
            )));
        }
        let computed = e.compute_hash();
        if computed != e.hash {
            return Err(broken(format!(
                "its contents hash to {computed}, not to the recorded {}: the entry was altered",
                e.hash
            )));
        }
        self.size = e.seq;
        self.head = computed;
        if let Some((size, seen)) = &mut self.at_checkpoint
            && *size == self.size
        {
            *seen = Some(self.head.clone());
        }
        Ok(())
    }

    /// After the entries: does the checkpoint sign what we computed at its size?
    pub fn check_checkpoint(&self, cp: &Checkpoint, public_key: &[u8]) -> Result<(), Error> {
        cp.verify_signature(public_key)?;
        let seen = match &self.at_checkpoint {
            Some((size, seen)) if *size == cp.size => seen.as_deref(),
            _ => None,
        };
        match seen {
            None => Err(Error::AuditCheckpointInvalid(format!(
                "the checkpoint signs {} entries but the log has only {}",
                cp.size, self.size
            ))),
            Some(h) if h != cp.head => Err(Error::AuditCheckpointInvalid(format!(
                "entry {} hashes to {h} but the signed head is {}: the log was rewritten",
                cp.size, cp.head
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// The entry following `prev` (or the first entry), with its hash filled in.
#[allow(clippy::too_many_arguments)]
pub fn next_entry(
    prev: Option<(u64, &str)>,
    at: i64,
    principal: &str,
    realm: &str,
    repository: &str,
    tag: &str,
    digest: &str,
    previous_digest: Option<&str>,
) -> AuditEntry {
    let (seq, prev_hash) = prev.map_or((1, GENESIS), |(s, h)| (s + 1, h));
    let mut e = AuditEntry {
        seq,
        at,
        principal: principal.to_owned(),
        realm: realm.to_owned(),
        repository: repository.to_owned(),
        tag: tag.to_owned(),
        digest: digest.to_owned(),
        previous_digest: previous_digest.map(str::to_owned),
        prev_hash: prev_hash.to_owned(),
        hash: String::new(),
    };
    e.hash = e.compute_hash();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated once with `openssl genpkey -algorithm ed25519`; only for these tests.
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGvYlJ0nOaV+g8z3Xyb3cJXj5cCS1eG3s6+rSUxjkZL0\n-----END PRIVATE KEY-----\n";

    fn log(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|e| (e.seq, e.hash.as_str()));
            let e = next_entry(
                prev,
                1000 + i as i64,
                "alice",
                "/employees",
                "team/app",
                &format!("1.{i}"),
                "sha256:00",
                None,
            );
            out.push(e);
        }
        out
    }

    fn verify(entries: &[AuditEntry], cp: &Checkpoint, key: &[u8]) -> Result<(), Error> {
        let mut v = ChainVerifier::new();
        v.watch(cp.size);
        for e in entries {
            v.push(e)?;
        }
        v.check_checkpoint(cp, key)
    }

    #[test]
    fn an_intact_log_verifies() {
        let signer = AuditSigner::from_pem(KEY).unwrap();
        let key = decode_public_key(&signer.public_key()).unwrap();
        let entries = log(5);
        let cp = signer.sign(4, &entries[3].hash, 7);
        verify(&entries, &cp, &key).unwrap();
        let empty = signer.sign(0, GENESIS, 7);
        verify(&entries, &empty, &key).unwrap();
    }

    #[test]
    fn an_altered_entry_is_reported_by_number() {
        let mut entries = log(5);
        entries[2].digest = "sha256:ff".into();
        let mut v = ChainVerifier::new();
        let err = entries.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert!(
            matches!(&err, Error::AuditChainBroken { seq: 3, why } if why.contains("altered")),
            "{err}"
        );
    }

    #[test]
    fn a_removed_entry_is_reported() {
        let mut entries = log(5);
        entries.remove(1);
        let mut v = ChainVerifier::new();
        let err = entries.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert!(
            matches!(err, Error::AuditChainBroken { seq: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_recomputed_chain_fails_the_signed_head() {
        let signer = AuditSigner::from_pem(KEY).unwrap();
        let key = decode_public_key(&signer.public_key()).unwrap();
        let entries = log(5);
        let cp = signer.sign(5, &entries[4].hash, 7);
        // Rewrite entry 2 and recompute every hash after it: the chain is consistent again.
        let mut forged: Vec<AuditEntry> = entries[..1].to_vec();
        for e in &entries[1..] {
            let prev = forged.last().map(|p| (p.seq, p.hash.as_str()));
            let digest = if e.seq == 2 { "sha256:ee" } else { &e.digest };
            forged.push(next_entry(
                prev,
                e.at,
                &e.principal,
                &e.realm,
                &e.repository,
                &e.tag,
                digest,
                None,
            ));
        }
        let err = verify(&forged, &cp, &key).unwrap_err();
        assert!(matches!(err, Error::AuditCheckpointInvalid(ref m) if m.contains("rewritten")));
    }

    #[test]
    fn verification_resumes_from_a_trusted_prefix() {
        let signer = AuditSigner::from_pem(KEY).unwrap();
        let key = decode_public_key(&signer.public_key()).unwrap();
        let entries = log(6);
        let mut v = ChainVerifier::resume(3, &entries[2].hash);
        let cp = signer.sign(6, &entries[5].hash, 9);
        v.watch(cp.size);
        entries[3..].iter().try_for_each(|e| v.push(e)).unwrap();
        v.check_checkpoint(&cp, &key).unwrap();
        // A checkpoint at the trusted size itself.
        let mut v = ChainVerifier::resume(3, &entries[2].hash);
        v.watch(3);
        v.check_checkpoint(&signer.sign(3, &entries[2].hash, 9), &key)
            .unwrap();
        // A log whose prefix changed no longer links to the trusted head.
        let mut v = ChainVerifier::resume(3, &"f".repeat(64));
        let err = v.push(&entries[3]).unwrap_err();
        assert!(
            matches!(err, Error::AuditChainBroken { seq: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_key_or_signature_fails() {
        let signer = AuditSigner::from_pem(KEY).unwrap();
        let entries = log(2);
        let mut cp = signer.sign(2, &entries[1].hash, 7);
        assert!(verify(&entries, &cp, &[7u8; 32]).is_err());
        let key = decode_public_key(&signer.public_key()).unwrap();
        cp.at += 1;
        assert!(verify(&entries, &cp, &key).is_err());
        assert!(AuditSigner::from_pem("nonsense").is_err());
    }
}
