//! The public keys a trust policy lists: PEM `PUBLIC KEY` (SubjectPublicKeyInfo) parsed once at
//! load time into aws-lc-rs verification keys, and the signature schemes each key type accepts.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    RSA_PSS_2048_8192_SHA256, VerificationAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use spki::der::asn1::UintRef;
use spki::der::{Decode, Reader, SliceReader};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// The smallest RSA modulus accepted: what aws-lc-rs's `*_2048_8192_*` algorithms verify.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted.
pub const MAX_RSA_BITS: usize = 8192;

/// The type of a trusted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256, ASN.1 DER signatures: what `cosign generate-key-pair` makes.
    EcdsaP256,
    /// Ed25519 (pure, over the message itself).
    Ed25519,
    /// RSA of 2048 to 8192 bits, SHA-256, PKCS#1 v1.5 or PSS padding.
    Rsa {
        /// The modulus length.
        bits: usize,
    },
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyType::Ed25519 => f.write_str("Ed25519"),
            KeyType::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// The signature scheme a verified signature used: part of the audit record, because RSA keys
/// accept two paddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// ECDSA P-256, SHA-256, ASN.1 DER `ECDSA-Sig-Value`.
    EcdsaP256Sha256,
    /// Ed25519.
    Ed25519,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256 (MGF1-SHA-256, salt of the digest's length).
    RsaPssSha256,
}

impl Scheme {
    /// A stable name for logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Scheme::Ed25519 => "ed25519",
            Scheme::RsaPkcs1Sha256 => "rsa-pkcs1v15-sha256",
            Scheme::RsaPssSha256 => "rsa-pss-sha256",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The modulus length of a PKCS#1 `RSAPublicKey` (what an rsaEncryption SPKI's bit string
/// holds), read here so that a short key is refused saying how short it is.
fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Result<usize, String> {
    let bad = |e: spki::der::Error| format!("not a valid RSA public key: {e}");
    let mut reader = SliceReader::new(rsa_public_key).map_err(bad)?;
    let modulus = reader
        .sequence(|r: &mut SliceReader<'_>| {
            let n = UintRef::decode(r)?;
            UintRef::decode(r)?;
            Ok(n)
        })
        .map_err(bad)?;
    reader.finish().map_err(bad)?;
    let n = modulus.as_bytes();
    Ok(match n.first() {
        Some(first) => (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    })
}

/// A named public key of a team's policy, ready to verify.
#[derive(Clone)]
pub struct TrustedKey {
    name: String,
    key_type: KeyType,
    spki_der: Vec<u8>,
    hint: String,
    verifiers: Vec<(Scheme, ParsedPublicKey)>,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("name", &self.name)
            .field("key_type", &self.key_type)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// Parse a PEM `PUBLIC KEY` block. The error says why the key cannot be used; the caller
    /// adds which team and key it is.
    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, String> {
        let (label, der) = spki::der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM block: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "a PEM {label:?} block; expected \"PUBLIC KEY\" (SubjectPublicKeyInfo, as in \
                 cosign.pub or `openssl pkey -pubout`)"
            ));
        }
        TrustedKey::from_spki_der(name, der)
    }

    /// A key from a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(name: &str, der: Vec<u8>) -> Result<TrustedKey, String> {
        let spki = SubjectPublicKeyInfoRef::try_from(der.as_slice())
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let (oid, params) = spki
            .algorithm
            .oids()
            .map_err(|e| format!("algorithm parameters: {e}"))?;
        let (key_type, schemes): (KeyType, &[(Scheme, &'static dyn VerificationAlgorithm)]) =
            match (oid, params) {
                (ID_EC_PUBLIC_KEY, Some(PRIME256V1)) => (
                    KeyType::EcdsaP256,
                    &[(Scheme::EcdsaP256Sha256, &ECDSA_P256_SHA256_ASN1)],
                ),
                (ID_EC_PUBLIC_KEY, Some(curve)) => {
                    let name = match curve {
                        SECP384R1 => "P-384".to_owned(),
                        SECP521R1 => "P-521".to_owned(),
                        other => other.to_string(),
                    };
                    return Err(format!(
                        "unsupported key type: ECDSA on curve {name}; only P-256 is accepted \
                         (what cosign generate-key-pair makes)"
                    ));
                }
                (ID_EC_PUBLIC_KEY, None) => {
                    return Err("EC key without a named curve".to_owned());
                }
                (ID_ED25519, _) => (KeyType::Ed25519, &[(Scheme::Ed25519, &ED25519)]),
                (RSA_ENCRYPTION, _) => {
                    let bits = rsa_modulus_bits(spki.subject_public_key.raw_bytes())?;
                    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                        return Err(format!(
                            "RSA key of {bits} bits; between {MIN_RSA_BITS} and {MAX_RSA_BITS} \
                             bits are accepted"
                        ));
                    }
                    (
                        KeyType::Rsa { bits },
                        &[
                            (Scheme::RsaPkcs1Sha256, &RSA_PKCS1_2048_8192_SHA256),
                            (Scheme::RsaPssSha256, &RSA_PSS_2048_8192_SHA256),
                        ],
                    )
                }
                (ID_RSASSA_PSS, _) => {
                    return Err("unsupported key type: an RSASSA-PSS-only key (OID \
                                1.2.840.113549.1.1.10); give the same key as rsaEncryption"
                        .to_owned());
                }
                (other, _) => {
                    return Err(format!(
                        "unsupported key type (algorithm OID {other}); ECDSA P-256, Ed25519 and \
                         RSA are accepted"
                    ));
                }
            };
        let verifiers = schemes
            .iter()
            .map(|(scheme, alg)| {
                ParsedPublicKey::new(*alg, &der)
                    .map(|k| (*scheme, k))
                    .map_err(|e| format!("{key_type} key rejected: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hint = STANDARD.encode(digest(&SHA256, &der).as_ref());
        Ok(TrustedKey {
            name: name.to_owned(),
            key_type,
            spki_der: der,
            hint,
            verifiers,
        })
    }

    /// The key's name in the policy, which audit records carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The DER SubjectPublicKeyInfo, as given.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// base64(SHA-256(DER SubjectPublicKeyInfo)): how a Sigstore bundle names its key
    /// (`verificationMaterial.publicKey.hint`).
    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// The scheme under which `signature` is this key's signature of `message`, if any.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Option<Scheme> {
        self.verifiers
            .iter()
            .find(|(_, key)| key.verify_sig(message, signature).is_ok())
            .map(|(scheme, _)| *scheme)
    }
}
