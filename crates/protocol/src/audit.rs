//! The tamper-evident tag log: how an entry is hashed into the chain, how a checkpoint is
//! signed, and how a client verifies both without trusting the server.
//!
//! Every tag assignment becomes an [`AuditEntry`] whose `hash` covers its fields and the hash
//! of the entry before it, so changing, inserting or removing any entry breaks every later
//! link. Operators' quarantines of corrupt blobs are entries of another [`AuditKind`] in the
//! same chain, with an encoding of their own. A [`Checkpoint`] is the server's Ed25519 signature over the log's size and head hash:
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

/// What an entry records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// `repository:tag` was pointed at the manifest `digest`.
    #[default]
    Tag,
    /// Blob `digest` was taken out of service because its stored bytes do not hash to it;
    /// `repository:tag` names a manifest that needs it (both empty when nothing does).
    Quarantine,
}

impl AuditKind {
    /// The storage name, also what JSON carries.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Tag => "tag",
            AuditKind::Quarantine => "quarantine",
        }
    }

    /// The kind stored as `s`, if it is one.
    pub fn parse(s: &str) -> Option<AuditKind> {
        [AuditKind::Tag, AuditKind::Quarantine]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    fn is_tag(&self) -> bool {
        *self == AuditKind::Tag
    }
}

/// One tag assignment (or quarantine), as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Absent for tag assignments, so their JSON is what it was before kinds existed.
    #[serde(default, skip_serializing_if = "AuditKind::is_tag")]
    pub kind: AuditKind,
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch; RFC 3339 with milliseconds in JSON.
    #[serde(with = "rfc3339_millis")]
    pub at: i64,
    /// Who made the change (the principal's uid).
    pub principal: String,
    /// The principal's realm (`/employees`, `/services`).
    pub realm: String,
    /// The repository (empty for a quarantine no tag needed).
    pub repository: String,
    /// The tag (empty for a quarantine no tag needed).
    pub tag: String,
    /// The digest the tag now names, or the blob quarantined.
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
    ///
    /// Tag assignments keep the `pierone-audit-v1` encoding, so every entry written before
    /// kinds existed keeps its hash. A quarantine starts with its own label and has no
    /// `previous_digest`, so it can never encode like an assignment.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |v: &[u8]| {
            h.update(v.len().to_string().as_bytes());
            h.update(b":");
            h.update(v);
            h.update(b"\n");
        };
        field(match self.kind {
            AuditKind::Tag => b"pierone-audit-v1",
            AuditKind::Quarantine => b"pierone-audit-quarantine-v1",
        });
        field(self.seq.to_string().as_bytes());
        field(self.at.to_string().as_bytes());
        field(self.principal.as_bytes());
        field(self.realm.as_bytes());
        field(self.repository.as_bytes());
        field(self.tag.as_bytes());
        field(self.digest.as_bytes());
        if self.kind == AuditKind::Tag {
            field(self.previous_digest.as_deref().unwrap_or("").as_bytes());
        }
        field(self.prev_hash.as_bytes());
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A signed statement "the log had `size` entries, its last hash was `head` and its Merkle
/// root was `root`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The number of entries it covers.
    pub size: u64,
    /// Hash of entry `size`, or [`GENESIS`] for an empty log.
    pub head: String,
    /// Merkle tree root over the first `size` entries, hex.
    pub root: String,
    /// When it was signed, in milliseconds since the Unix epoch; RFC 3339 with milliseconds in
    /// JSON.
    #[serde(with = "rfc3339_millis")]
    pub at: i64,
    /// The signer's Ed25519 public key, base64.
    pub public_key: String,
    /// Ed25519 signature over [`Checkpoint::message`], base64.
    pub signature: String,
    /// Roots of the perfect subtrees the tree of `size` leaves decomposes into, largest first:
    /// enough to extend the tree without its leaves. Not signed; it must fold to `root`.
    #[serde(default)]
    pub frontier: Vec<String>,
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(size: u64, head: &str, root: &str, at: i64) -> Vec<u8> {
        format!("pierone-audit-checkpoint-v2\n{size}\n{head}\n{root}\n{at}\n").into_bytes()
    }

    /// Check the signature with `public_key` (raw 32 bytes). Verifiers should pass a key
    /// they obtained out of band; the `public_key` field is only a hint.
    pub fn verify_signature(&self, public_key: &[u8]) -> Result<(), Error> {
        let sig = B64
            .decode(&self.signature)
            .map_err(|e| Error::AuditCheckpointInvalid(format!("signature is not base64: {e}")))?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(
                &Checkpoint::message(self.size, &self.head, &self.root, self.at),
                &sig,
            )
            .map_err(|_| {
                Error::AuditCheckpointInvalid(
                    "the signature does not match the checkpoint and key".into(),
                )
            })
    }
}

/// The DER of an Ed25519 `SubjectPublicKeyInfo` before its 32 key bytes (RFC 8410): a
/// SEQUENCE of the algorithm (OID 1.3.101.112, no parameters) and a BIT STRING.
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// `raw` (32 bytes) as base64, as [`AuditSigner::public_key`] prints it.
pub fn encode_public_key(raw: &[u8]) -> String {
    B64.encode(raw)
}

/// `raw` (32 bytes) as a `BEGIN PUBLIC KEY` PEM block, as `openssl pkey -pubout` writes it.
pub fn public_key_pem(raw: &[u8]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(raw);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        B64.encode(der)
    )
}

/// Decode a public key: base64 as printed by [`AuditSigner::public_key`], or PEM as `openssl
/// pkey -pubout` writes it.
pub fn decode_public_key(key: &str) -> Result<Vec<u8>, Error> {
    if key.contains("-----BEGIN") {
        return decode_public_key_pem(key);
    }
    let raw = B64
        .decode(key.trim())
        .map_err(|e| Error::AuditKeyInvalid(format!("public key is not base64: {e}")))?;
    if raw.len() != 32 {
        return Err(Error::AuditKeyInvalid(format!(
            "an Ed25519 public key has 32 bytes, not {}",
            raw.len()
        )));
    }
    Ok(raw)
}

fn decode_public_key_pem(pem: &str) -> Result<Vec<u8>, Error> {
    let blocks = pem_blocks(pem);
    let Some((_, body)) = blocks.iter().find(|(label, _)| label == "PUBLIC KEY") else {
        return Err(match blocks.first() {
            Some((label, _)) if label.ends_with("PRIVATE KEY") => Error::AuditKeyInvalid(
                "found a private key; give its public key (`pierone audit public-key --key FILE` prints it)".into(),
            ),
            Some((label, _)) => Error::AuditKeyInvalid(format!(
                "found a PEM block of type {label}, not \"BEGIN PUBLIC KEY\""
            )),
            None => Error::AuditKeyInvalid("no complete \"BEGIN PUBLIC KEY\" block".into()),
        });
    };
    let der = B64
        .decode(body)
        .map_err(|e| Error::AuditKeyInvalid(format!("PEM body is not base64: {e}")))?;
    match der.strip_prefix(ED25519_SPKI_PREFIX) {
        Some(raw) if raw.len() == 32 => Ok(raw.to_vec()),
        _ => Err(Error::AuditKeyInvalid(
            "the PUBLIC KEY block is not an Ed25519 key".into(),
        )),
    }
}

/// The `(label, base64 body)` of each `-----BEGIN label-----` block of a PEM text.
fn pem_blocks(pem: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in pem.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if line.starts_with("-----END") {
            blocks.extend(current.take());
        } else if let Some((_, body)) = &mut current
            && !line.contains(':')
        {
            // Lines with a colon are RFC 1421 headers (`Proc-Type: ...`), not base64.
            body.push_str(line);
        }
    }
    blocks
}

const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// The error for a key of another kind than Ed25519.
fn not_ed25519(kind: &str) -> Error {
    Error::AuditKeyInvalid(format!(
        "found {kind}, but audit checkpoints need an Ed25519 key (create one with `openssl genpkey -algorithm ed25519`)"
    ))
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &x| (l << 8) | usize::from(x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The algorithm OID of a PKCS#8 `PrivateKeyInfo`, and the OID parameter (an EC key's
/// curve) if it has one.
fn pkcs8_algorithm(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (0x30, info, _) = der_element(der)? else {
        return None;
    };
    let (0x02, _, rest) = der_element(info)? else {
        return None;
    };
    let (0x30, algorithm, _) = der_element(rest)? else {
        return None;
    };
    let (0x06, oid, rest) = der_element(algorithm)? else {
        return None;
    };
    let param = der_element(rest)
        .filter(|(tag, _, _)| *tag == 0x06)
        .map(|(_, p, _)| p);
    Some((oid, param))
}

/// The curve OID of a SEC1 `ECPrivateKey` (`BEGIN EC PRIVATE KEY`).
fn sec1_curve(der: &[u8]) -> Option<&[u8]> {
    let (0x30, key, _) = der_element(der)? else {
        return None;
    };
    let (0x02, _, rest) = der_element(key)? else {
        return None;
    };
    let (0x04, _, rest) = der_element(rest)? else {
        return None;
    };
    let (0xa0, params, _) = der_element(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_element(params)? else {
        return None;
    };
    Some(oid)
}

/// A PKCS#8 key's kind, as `openssl` names its algorithm.
fn pkcs8_kind(oid: &[u8], param: Option<&[u8]>) -> &'static str {
    match oid {
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01] => "an RSA key",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a] => "an RSA-PSS key",
        [0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01] => "a DSA key",
        OID_EC_PUBLIC_KEY => ec_kind(param),
        [0x2b, 0x65, 0x71] => "an Ed448 key",
        [0x2b, 0x65, 0x6e] => "an X25519 key",
        [0x2b, 0x65, 0x6f] => "an X448 key",
        _ => "a key of another algorithm",
    }
}

/// An EC key's kind by its curve.
fn ec_kind(curve: Option<&[u8]>) -> &'static str {
    match curve {
        Some([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]) => "an EC P-256 key",
        Some([0x2b, 0x81, 0x04, 0x00, 0x22]) => "an EC P-384 key",
        Some([0x2b, 0x81, 0x04, 0x00, 0x23]) => "an EC P-521 key",
        Some([0x2b, 0x81, 0x04, 0x00, 0x0a]) => "an EC secp256k1 key",
        _ => "an EC key",
    }
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
    /// Any other key is refused with the kind of key it is, in the words of `openssl`.
    pub fn from_pem(pem: &str) -> Result<AuditSigner, Error> {
        let blocks = pem_blocks(pem);
        // `openssl ecparam -genkey` writes an "EC PARAMETERS" block before the key.
        let Some((label, body)) = blocks
            .iter()
            .find(|(label, _)| label.ends_with("PRIVATE KEY"))
            .or(blocks.first())
        else {
            return Err(Error::AuditKeyInvalid(
                "no \"BEGIN PRIVATE KEY\" block (expected PKCS#8 PEM, e.g. from `openssl genpkey -algorithm ed25519`)".into(),
            ));
        };
        let der = || {
            B64.decode(body)
                .map_err(|e| Error::AuditKeyInvalid(format!("PEM body is not base64: {e}")))
        };
        match label.as_str() {
            "PRIVATE KEY" => {}
            "RSA PRIVATE KEY" => return Err(not_ed25519("an RSA key")),
            "EC PRIVATE KEY" => {
                let curve = der().ok().and_then(|d| sec1_curve(&d).map(<[u8]>::to_vec));
                return Err(not_ed25519(ec_kind(curve.as_deref())));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::AuditKeyInvalid(
                    "the key is encrypted; the server needs it unencrypted (`openssl pkey -in KEY -out PLAIN`)".into(),
                ));
            }
            "PUBLIC KEY" => {
                return Err(Error::AuditKeyInvalid(
                    "found a public key; signing needs the Ed25519 private key (create one with `openssl genpkey -algorithm ed25519`)".into(),
                ));
            }
            "OPENSSH PRIVATE KEY" => return Err(not_ed25519("an OpenSSH key")),
            other => return Err(not_ed25519(&format!("a PEM block of type {other}"))),
        }
        let der = der()?;
        match pkcs8_algorithm(&der) {
            Some((OID_ED25519, _)) => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map(|key| AuditSigner { key })
                .map_err(|_| Error::AuditKeyInvalid("the Ed25519 key is malformed".into())),
            Some((oid, param)) => Err(not_ed25519(pkcs8_kind(oid, param))),
            None => Err(Error::AuditKeyInvalid(
                "the PRIVATE KEY block is not a PKCS#8 key".into(),
            )),
        }
    }

    /// The public key, base64: what verifiers should pin.
    pub fn public_key(&self) -> String {
        B64.encode(self.key.public_key().as_ref())
    }

    /// Sign what `tree` has seen: its size, chain head and Merkle root.
    pub fn sign(&self, tree: &ChainVerifier, at: i64) -> Checkpoint {
        let (size, head) = tree.head();
        let root = tree.root();
        let sig = self.key.sign(&Checkpoint::message(size, head, &root, at));
        Checkpoint {
            size,
            head: head.to_owned(),
            root,
            at,
            public_key: self.public_key(),
            signature: B64.encode(sig.as_ref()),
            frontier: tree.frontier(),
        }
    }
}

type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn leaf_hash(entry_hash: &Hash) -> Hash {
    sha256(&[&[0], entry_hash])
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1], left, right])
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn bad_hash(what: &str, s: &str) -> Error {
    Error::AuditCheckpointInvalid(format!("{what} {s:?} is not a 64-digit hex hash"))
}

/// A Merkle tree built leaf by leaf in O(log n) memory: it keeps only the roots of the
/// perfect subtrees the leaves so far decompose into.
#[derive(Debug, Clone, Default)]
struct Tree {
    size: u64,
    /// Largest subtree first; one per set bit of `size`.
    frontier: Vec<Hash>,
}

impl Tree {
    fn from_frontier(size: u64, frontier: &[String]) -> Result<Tree, Error> {
        if frontier.len() != size.count_ones() as usize {
            return Err(Error::AuditCheckpointInvalid(format!(
                "a tree of {size} leaves has {} subtrees, not {}",
                size.count_ones(),
                frontier.len()
            )));
        }
        let frontier = frontier
            .iter()
            .map(|h| unhex(h).ok_or_else(|| bad_hash("frontier hash", h)))
            .collect::<Result<_, _>>()?;
        Ok(Tree { size, frontier })
    }

    fn push_leaf(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        // Every trailing one bit is a subtree of the new leaf's size: merge them.
        while s & 1 == 1 {
            let left = self.frontier.pop().unwrap_or_default();
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.frontier.push(h);
        self.size += 1;
    }

    fn root(&self) -> Hash {
        let mut it = self.frontier.iter().rev();
        let Some(last) = it.next() else {
            return sha256(&[]);
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Checks a log read in order, one entry at a time, so that a log of any length is verified
/// in constant memory; builds its Merkle tree on the way.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    size: u64,
    head: String,
    tree: Tree,
    /// The head hash and root once `size` reached the checkpoint's size.
    at_checkpoint: Option<(u64, Option<(String, String)>)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new()
    }
}

impl ChainVerifier {
    /// A verifier that has seen no entry yet.
    pub fn new() -> ChainVerifier {
        ChainVerifier {
            size: 0,
            head: GENESIS.to_owned(),
            tree: Tree::default(),
            at_checkpoint: None,
        }
    }

    /// Continue after a checkpoint verified earlier. The next entry must link to its head,
    /// so a log that rewrote that prefix fails.
    pub fn resume(cp: &Checkpoint) -> Result<ChainVerifier, Error> {
        let tree = Tree::from_frontier(cp.size, &cp.frontier)?;
        if hex(&tree.root()) != cp.root {
            return Err(Error::AuditCheckpointInvalid(
                "the checkpoint's frontier does not fold to its root".into(),
            ));
        }
        Ok(ChainVerifier {
            size: cp.size,
            head: cp.head.clone(),
            tree,
            at_checkpoint: None,
        })
    }

    /// Remember the head hash and root at `size`, to compare with a checkpoint afterwards.
    pub fn watch(&mut self, size: u64) {
        let now = (size == self.size).then(|| (self.head.clone(), self.root()));
        self.at_checkpoint = Some((size, now));
    }

    /// Entries checked so far, and the hash of the last.
    pub fn head(&self) -> (u64, &str) {
        (self.size, &self.head)
    }

    /// The Merkle root over the entries so far, hex.
    pub fn root(&self) -> String {
        hex(&self.tree.root())
    }

    /// The roots of the perfect subtrees, largest first (see [`Checkpoint::frontier`]).
    pub fn frontier(&self) -> Vec<String> {
        self.tree.frontier.iter().map(|h| hex(h)).collect()
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
        let raw = unhex(&computed).ok_or_else(|| broken("unreadable hash".into()))?;
        self.tree.push_leaf(leaf_hash(&raw));
        self.size = e.seq;
        self.head = computed;
        if let Some((size, seen)) = &mut self.at_checkpoint
            && *size == self.size
        {
            *seen = Some((self.head.clone(), hex(&self.tree.root())));
        }
        Ok(())
    }

    /// After the entries: does the checkpoint sign what we computed at its size?
    pub fn check_checkpoint(&self, cp: &Checkpoint, public_key: &[u8]) -> Result<(), Error> {
        cp.verify_signature(public_key)?;
        let seen = match &self.at_checkpoint {
            Some((size, seen)) if *size == cp.size => seen.as_ref(),
            _ => None,
        };
        match seen {
            None => Err(Error::AuditCheckpointInvalid(format!(
                "the checkpoint signs {} entries but the log has only {}",
                cp.size, self.size
            ))),
            Some((h, _)) if *h != cp.head => Err(Error::AuditCheckpointInvalid(format!(
                "entry {} hashes to {h} but the signed head is {}: the log was rewritten",
                cp.size, cp.head
            ))),
            Some((_, r)) if *r != cp.root => Err(Error::AuditCheckpointInvalid(format!(
                "the entries' Merkle root is {r} but the signed root is {}",
                cp.root
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// An entry's place in a signed tree: the sibling hashes from the leaf up (RFC 9162 §2.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The entry proven (from 1).
    pub seq: u64,
    /// The size of the tree it is proven in (a checkpoint's size).
    pub size: u64,
    /// The sibling hashes, hex, nearest the leaf first.
    pub path: Vec<String>,
}

/// The leaf ranges `[lo, hi)` whose subtree roots form the inclusion path of leaf `m` in a
/// tree of `n` leaves, in path order (nearest the leaf first).
pub fn inclusion_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    fn walk(m: u64, lo: u64, hi: u64, out: &mut Vec<(u64, u64)>) {
        if hi - lo <= 1 {
            return;
        }
        let k = (hi - lo - 1).checked_ilog2().map_or(1, |b| 1u64 << b);
        if m < lo + k {
            walk(m, lo, lo + k, out);
            out.push((lo + k, hi));
        } else {
            walk(m, lo + k, hi, out);
            out.push((lo, lo + k));
        }
    }
    let mut out = Vec::new();
    if m < n {
        walk(m, 0, n, &mut out);
    }
    out
}

/// Builds an inclusion proof from the entry hashes of a log streamed in order, keeping only
/// one small tree per path element.
#[derive(Debug)]
pub struct InclusionBuilder {
    seq: u64,
    size: u64,
    ranges: Vec<(u64, u64)>,
    trees: Vec<Tree>,
    next: u64,
}

impl InclusionBuilder {
    /// For entry `seq` (from 1) in the tree of the first `size` entries.
    pub fn new(seq: u64, size: u64) -> Option<InclusionBuilder> {
        if seq == 0 || seq > size {
            return None;
        }
        let ranges = inclusion_ranges(seq - 1, size);
        Some(InclusionBuilder {
            seq,
            size,
            trees: vec![Tree::default(); ranges.len()],
            ranges,
            next: 0,
        })
    }

    /// The next entry's hash (hex), in order from entry 1 to entry `size`.
    pub fn push(&mut self, entry_hash: &str) -> Result<(), Error> {
        let raw = unhex(entry_hash).ok_or_else(|| bad_hash("entry hash", entry_hash))?;
        let i = self.next;
        self.next += 1;
        if let Some(t) = self
            .ranges
            .iter()
            .position(|(lo, hi)| (*lo..*hi).contains(&i))
        {
            self.trees[t].push_leaf(leaf_hash(&raw));
        }
        Ok(())
    }

    /// The proof, once all `size` entries were pushed.
    pub fn finish(self) -> Result<InclusionProof, Error> {
        if self.next != self.size {
            return Err(Error::AuditCheckpointInvalid(format!(
                "{} of the {} entries were read",
                self.next, self.size
            )));
        }
        Ok(InclusionProof {
            seq: self.seq,
            size: self.size,
            path: self.trees.iter().map(|t| hex(&t.root())).collect(),
        })
    }
}

/// Whether `entry` is entry `proof.seq` of the tree whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    entry: &AuditEntry,
    proof: &InclusionProof,
    root: &str,
) -> Result<(), Error> {
    let invalid = |why: &str| Error::AuditCheckpointInvalid(format!("inclusion proof: {why}"));
    if entry.compute_hash() != entry.hash {
        return Err(Error::AuditChainBroken {
            seq: entry.seq,
            why: "its contents do not hash to its recorded hash: the entry was altered".into(),
        });
    }
    if entry.seq != proof.seq || proof.seq == 0 || proof.seq > proof.size {
        return Err(invalid("it is for another entry or tree"));
    }
    let raw = unhex(&entry.hash).ok_or_else(|| bad_hash("entry hash", &entry.hash))?;
    let (mut f, mut s) = (proof.seq - 1, proof.size - 1);
    let mut r = leaf_hash(&raw);
    for p in &proof.path {
        let p = unhex(p).ok_or_else(|| bad_hash("path hash", p))?;
        if s == 0 {
            return Err(invalid("the path is longer than the tree is deep"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(&p, &r);
            // A right edge: climb past the levels where this node has no sibling.
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(invalid("the path is shorter than the tree is deep"));
    }
    if hex(&r) != root {
        return Err(invalid(
            "it leads to another root: the entry is not in the signed log",
        ));
    }
    Ok(())
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
        kind: AuditKind::Tag,
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

/// The quarantine entry following `prev` (or the first entry), with its hash filled in:
/// `principal` took blob `digest` out of service, which `repository:tag` needs (both empty
/// when no tag does).
pub fn next_quarantine_entry(
    prev: Option<(u64, &str)>,
    at: i64,
    principal: &str,
    realm: &str,
    repository: &str,
    tag: &str,
    digest: &str,
) -> AuditEntry {
    let mut e = next_entry(prev, at, principal, realm, repository, tag, digest, None);
    e.kind = AuditKind::Quarantine;
    e.hash = e.compute_hash();
    e
}

/// Times in the API's JSON: RFC 3339 in UTC with exactly three fractional digits, like every
/// other time of the Pier One API. Reading also takes the epoch milliseconds that servers
/// before this sent (and that `pierone audit verify --state` files hold), so nothing stored
/// becomes unreadable. The hashed and signed encodings use the milliseconds, never this text.
pub mod rfc3339_millis {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// `ms` (since the Unix epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, or `None` out of range.
    pub fn format(ms: i64) -> Option<String> {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        Some(format!(
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

    /// An RFC 3339 time as milliseconds since the Unix epoch; finer digits are refused, since
    /// they would not survive the round trip that hashing relies on.
    pub fn parse(s: &str) -> Option<i64> {
        let nanos = OffsetDateTime::parse(s, &Rfc3339)
            .ok()?
            .unix_timestamp_nanos();
        (nanos % 1_000_000 == 0).then(|| i64::try_from(nanos / 1_000_000).ok())?
    }

    /// Serde: write RFC 3339.
    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        match format(*ms) {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_i64(*ms),
        }
    }

    /// Serde: read RFC 3339 or epoch milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Millis(i64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Millis(ms) => Ok(ms),
            Either::Text(t) => parse(&t).ok_or_else(|| {
                D::Error::custom(format!(
                    "{t:?} is not an RFC 3339 time with at most millisecond precision"
                ))
            }),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_reads_the_old_numbers() {
            for ms in [0, 1, 999, 1_433_520_000_000, 1_764_576_000_123, -1] {
                let text = format(ms).unwrap();
                assert_eq!(text.len(), 24, "{text}");
                assert_eq!(parse(&text), Some(ms), "{text}");
            }
            assert_eq!(
                format(1_434_039_209_152).unwrap(),
                "2015-06-11T16:13:29.152Z"
            );
            assert_eq!(
                parse("2015-06-11T18:13:29.152+02:00"),
                Some(1_434_039_209_152)
            );
            assert_eq!(parse("2015-06-11T16:13:29.1521Z"), None);
            assert_eq!(parse("yesterday"), None);
            #[derive(Deserialize)]
            struct T {
                #[serde(with = "super")]
                at: i64,
            }
            let old: T = serde_json::from_str(r#"{"at": 1434039209152}"#).unwrap();
            let new: T = serde_json::from_str(r#"{"at": "2015-06-11T16:13:29.152Z"}"#).unwrap();
            assert_eq!((old.at, new.at), (1_434_039_209_152, 1_434_039_209_152));
            assert!(serde_json::from_str::<T>(r#"{"at": "2015-06-11"}"#).is_err());
        }
    }
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

    /// A checkpoint over the first `size` entries.
    fn signed(signer: &AuditSigner, entries: &[AuditEntry], size: usize) -> Checkpoint {
        let mut v = ChainVerifier::new();
        entries[..size].iter().for_each(|e| v.push(e).unwrap());
        signer.sign(&v, 7)
    }

    fn verify(entries: &[AuditEntry], cp: &Checkpoint, key: &[u8]) -> Result<(), Error> {
        let mut v = ChainVerifier::new();
        v.watch(cp.size);
        for e in entries {
            v.push(e)?;
        }
        v.check_checkpoint(cp, key)
    }

    fn signer_and_key() -> (AuditSigner, Vec<u8>) {
        let signer = AuditSigner::from_pem(KEY).unwrap();
        let key = decode_public_key(&signer.public_key()).unwrap();
        (signer, key)
    }

    #[test]
    fn public_keys_are_read_as_base64_or_pem() {
        let (signer, key) = signer_and_key();
        let pem = public_key_pem(&key);
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            "{pem}"
        );
        assert_eq!(decode_public_key(&pem).unwrap(), key);
        assert_eq!(encode_public_key(&key), signer.public_key());
        assert_eq!(
            decode_public_key(KEY).unwrap_err().to_string(),
            Error::AuditKeyInvalid(
                "found a private key; give its public key (`pierone audit public-key --key FILE` prints it)".into()
            )
            .to_string()
        );
    }

    /// RFC 9162's definition, written recursively, to check the incremental tree against.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => sha256(&[]),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = 1usize << (n - 1).ilog2();
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn an_intact_log_verifies() {
        let (signer, key) = signer_and_key();
        let entries = log(5);
        verify(&entries, &signed(&signer, &entries, 4), &key).unwrap();
        verify(&entries, &signed(&signer, &entries, 0), &key).unwrap();
        verify(&entries, &signed(&signer, &entries, 5), &key).unwrap();
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
        let (signer, key) = signer_and_key();
        let entries = log(5);
        let cp = signed(&signer, &entries, 5);
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
    fn a_wrong_key_or_signature_fails() {
        let (signer, key) = signer_and_key();
        let entries = log(2);
        let mut cp = signed(&signer, &entries, 2);
        assert!(verify(&entries, &cp, &[7u8; 32]).is_err());
        cp.at += 1;
        assert!(verify(&entries, &cp, &key).is_err());
        let mut cp = signed(&signer, &entries, 2);
        cp.root = "0".repeat(64);
        assert!(verify(&entries, &cp, &key).is_err(), "the root is signed");
        assert!(AuditSigner::from_pem("nonsense").is_err());
    }

    /// Keys of other kinds, as `openssl` writes them (the RSA one is only the PKCS#8 header,
    /// which is all the kind is read from).
    #[test]
    fn a_key_of_another_kind_is_named() {
        let need = "but audit checkpoints need an Ed25519 key (create one with `openssl genpkey -algorithm ed25519`)";
        let rsa = "-----BEGIN PRIVATE KEY-----\nMBQCAQAwDQYJKoZIhvcNAQEBBQAEAA==\n-----END PRIVATE KEY-----\n";
        let p256 = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg17swRaKScogcesKd
rVeRyf13Vm9obMS97UnqZzv1uXqhRANCAARCKLVpr3rmdfP+mJrs/r4rPRV98AGB
Mw8gF+Th1YFZGJf+PwTm7NDWKTohS8IiOoEkfReBnb/QyZ5VUUuCzQ9G
-----END PRIVATE KEY-----
";
        let sec1 = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIJtEFdQ2zG17awF6ZPugR+8XP0PdEPZmVPBh7JztSLr5oAoGCCqGSM49
AwEHoUQDQgAEFvO/p88X/205njicW7Ear3G7RMDeh6Pye0GqPV5PwlsMaPt1+w+W
slTuCeZn5s/VJO9gi7J5O8JydSG5q9WjMw==
-----END EC PRIVATE KEY-----
";
        let ed448 = "-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEOS//so+NGVFs9C4J6MwFNwAlwLWocJ813cCJ4zRKj7uN
r3xLUwlK5VvpJJfcArXtSRL0HRsmJq6KTA==
-----END PRIVATE KEY-----
";
        let public = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA6g85bNqTUVnZUKENTikMwOXKwW2I02HX18JWh1RMCOI=
-----END PUBLIC KEY-----
";
        let message = |pem: &str| AuditSigner::from_pem(pem).unwrap_err().to_string();
        assert_eq!(
            message(rsa),
            format!("audit signing key: found an RSA key, {need}")
        );
        assert_eq!(
            message(p256),
            format!("audit signing key: found an EC P-256 key, {need}")
        );
        assert_eq!(
            message(sec1),
            format!("audit signing key: found an EC P-256 key, {need}")
        );
        assert_eq!(
            message(ed448),
            format!("audit signing key: found an Ed448 key, {need}")
        );
        assert_eq!(
            message("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
            format!("audit signing key: found an RSA key, {need}")
        );
        assert_eq!(
            message(public),
            "audit signing key: found a public key; signing needs the Ed25519 private key (create one with `openssl genpkey -algorithm ed25519`)"
        );
        assert_eq!(
            message("nonsense"),
            "audit signing key: no \"BEGIN PRIVATE KEY\" block (expected PKCS#8 PEM, e.g. from `openssl genpkey -algorithm ed25519`)"
        );
        // And the key of the right kind still loads.
        assert!(AuditSigner::from_pem(KEY).is_ok());
    }

    #[test]
    fn verification_resumes_from_a_checkpoint() {
        let (signer, key) = signer_and_key();
        let entries = log(6);
        let old = signed(&signer, &entries, 3);
        let new = signed(&signer, &entries, 6);
        let mut v = ChainVerifier::resume(&old).unwrap();
        v.watch(new.size);
        entries[3..].iter().try_for_each(|e| v.push(e)).unwrap();
        v.check_checkpoint(&new, &key).unwrap();
        // A checkpoint at the resumed size itself.
        let mut v = ChainVerifier::resume(&old).unwrap();
        v.watch(3);
        v.check_checkpoint(&old, &key).unwrap();
        // A log whose prefix changed no longer links to the remembered head.
        let mut other = old.clone();
        other.head = "f".repeat(64);
        let mut v = ChainVerifier::resume(&other).unwrap();
        let err = v.push(&entries[3]).unwrap_err();
        assert!(
            matches!(err, Error::AuditChainBroken { seq: 4, .. }),
            "{err}"
        );
        // A frontier that does not fold to the root is refused.
        let mut bad = old.clone();
        bad.frontier[0] = "0".repeat(64);
        assert!(ChainVerifier::resume(&bad).is_err());
    }

    #[test]
    fn the_incremental_tree_is_rfc_9162s_tree() {
        let entries = log(40);
        let leaves: Vec<Hash> = entries.iter().map(|e| unhex(&e.hash).unwrap()).collect();
        let mut v = ChainVerifier::new();
        assert_eq!(v.root(), hex(&mth(&[])));
        for (i, e) in entries.iter().enumerate() {
            v.push(e).unwrap();
            assert_eq!(v.root(), hex(&mth(&leaves[..=i])), "size {}", i + 1);
            assert_eq!(v.frontier().len(), (i + 1).count_ones() as usize);
        }
    }

    #[test]
    fn inclusion_proofs_verify_for_every_entry_of_every_size() {
        let entries = log(33);
        for size in 1..=33u64 {
            let mut v = ChainVerifier::new();
            entries[..size as usize]
                .iter()
                .for_each(|e| v.push(e).unwrap());
            let root = v.root();
            for seq in 1..=size {
                let mut b = InclusionBuilder::new(seq, size).unwrap();
                for e in &entries[..size as usize] {
                    b.push(&e.hash).unwrap();
                }
                let proof = b.finish().unwrap();
                let e = &entries[seq as usize - 1];
                verify_inclusion(e, &proof, &root)
                    .unwrap_or_else(|err| panic!("seq {seq} size {size}: {err}"));
                // The same proof does not place another entry there.
                if size > 1 {
                    let other = &entries[(seq as usize) % size as usize];
                    let mut moved = proof.clone();
                    moved.seq = other.seq;
                    assert!(verify_inclusion(other, &moved, &root).is_err());
                }
                // Nor does it prove anything against another root.
                assert!(verify_inclusion(e, &proof, &"0".repeat(64)).is_err());
            }
        }
        assert!(InclusionBuilder::new(0, 3).is_none());
        assert!(InclusionBuilder::new(4, 3).is_none());
    }

    #[test]
    fn an_altered_entry_has_no_inclusion_proof() {
        let entries = log(8);
        let mut v = ChainVerifier::new();
        entries.iter().for_each(|e| v.push(e).unwrap());
        let mut b = InclusionBuilder::new(5, 8).unwrap();
        entries.iter().for_each(|e| b.push(&e.hash).unwrap());
        let proof = b.finish().unwrap();
        let mut altered = entries[4].clone();
        altered.digest = "sha256:ff".into();
        assert!(verify_inclusion(&altered, &proof, &v.root()).is_err());
        altered.hash = altered.compute_hash();
        assert!(verify_inclusion(&altered, &proof, &v.root()).is_err());
    }

    #[test]
    fn tag_entries_keep_the_v1_encoding() {
        // Computed by the encoding as it was before entries had kinds: a log written then
        // must verify unchanged.
        let e = next_entry(
            Some((1, "ab")),
            1000,
            "alice",
            "/employees",
            "team/app",
            "1.0",
            "sha256:00",
            Some("sha256:11"),
        );
        let mut h = Sha256::new();
        for f in [
            "pierone-audit-v1",
            "2",
            "1000",
            "alice",
            "/employees",
            "team/app",
            "1.0",
            "sha256:00",
            "sha256:11",
            "ab",
        ] {
            h.update(format!("{}:{f}\n", f.len()).as_bytes());
        }
        assert_eq!(e.hash, hex(&h.finalize()));
        // Nor does their JSON change: older readers see what they always saw.
        let json = serde_json::to_value(&e).unwrap();
        assert!(json.get("kind").is_none(), "{json}");
        let back: AuditEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn quarantine_entries_chain_with_assignments_and_cannot_pass_for_one() {
        let (signer, key) = signer_and_key();
        let mut entries = log(3);
        let last = entries.last().map(|e| (e.seq, e.hash.clone())).unwrap();
        let q = next_quarantine_entry(
            Some((last.0, &last.1)),
            2000,
            "scrub",
            "/operator",
            "team/app",
            "1.2",
            "sha256:ff",
        );
        assert_eq!(q.kind, AuditKind::Quarantine);
        let json = serde_json::to_value(&q).unwrap();
        assert_eq!(json["kind"], "quarantine");
        assert_eq!(serde_json::from_value::<AuditEntry>(json).unwrap(), q);
        entries.push(q.clone());
        verify(&entries, &signed(&signer, &entries, 4), &key).unwrap();
        // Relabelled as a tag assignment (same fields), it no longer hashes to its hash.
        let mut forged = q.clone();
        forged.kind = AuditKind::Tag;
        assert_ne!(forged.compute_hash(), q.hash);
        entries[3] = forged;
        let mut v = ChainVerifier::new();
        let err = entries.iter().try_for_each(|e| v.push(e)).unwrap_err();
        assert!(
            matches!(err, Error::AuditChainBroken { seq: 4, .. }),
            "{err}"
        );
        assert_eq!(AuditKind::parse("quarantine"), Some(AuditKind::Quarantine));
        assert_eq!(AuditKind::parse("other"), None);
    }
}
