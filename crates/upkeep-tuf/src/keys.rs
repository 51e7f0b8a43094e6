//! Public keys and signature verification (ed25519, ECDSA P-256, RSA), and ed25519 signing
//! for publishers.
//!
//! Keys use the securesystemslib JSON form that TUF metadata carries:
//! `{"keytype": …, "scheme": …, "keyval": {"public": …}}`. A key of a type this build does
//! not know still parses; it simply never verifies a signature, so it cannot count towards
//! a threshold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A public key as it appears in root or delegations metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `ed25519`, `ecdsa`, `ecdsa-sha2-nistp256` or `rsa`.
    pub keytype: String,
    /// `ed25519`, `ecdsa-sha2-nistp256`, `rsassa-pss-sha256` or `rsa-pkcs1v15-sha256`.
    pub scheme: String,
    /// The key value; `public` holds hex (ed25519) or PEM (ECDSA, RSA).
    pub keyval: KeyVal,
    /// Fields this build does not know, kept so that the key serialises unchanged.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

/// The `keyval` of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The public key.
    pub public: String,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl Key {
    /// An ed25519 public key.
    pub fn ed25519(public: &ed25519_dalek::VerifyingKey) -> Key {
        Key {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(public.as_bytes()),
                unrecognized: BTreeMap::new(),
            },
            unrecognized: BTreeMap::new(),
        }
    }

    /// The conventional key id: hex SHA-256 of the key's canonical JSON.
    pub fn key_id(&self) -> String {
        let value = serde_json::to_value(self).expect("a key always serialises");
        hex::encode(Sha256::digest(
            crate::canonical::to_canonical(&value).expect("a key has no floats"),
        ))
    }

    /// True if `sig_hex` is a valid signature of `msg` by this key. Any malformed input
    /// (bad hex, bad PEM, unknown scheme) is simply `false`.
    pub fn verify(&self, msg: &[u8], sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => verify_ed25519(&self.keyval.public, msg, &sig),
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                verify_p256(&self.keyval.public, msg, &sig)
            }
            ("rsa", "rsassa-pss-sha256") => verify_rsa(&self.keyval.public, msg, &sig, true),
            ("rsa", "rsa-pkcs1v15-sha256") => verify_rsa(&self.keyval.public, msg, &sig, false),
            _ => false,
        }
    }
}

fn verify_ed25519(public_hex: &str, msg: &[u8], sig: &[u8]) -> bool {
    use ed25519_dalek::Verifier;
    let Ok(bytes) = hex::decode(public_hex) else {
        return false;
    };
    let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&bytes) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    key.verify(msg, &sig).is_ok()
}

fn verify_p256(public_pem: &str, msg: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(public_pem) else {
        return false;
    };
    let Ok(sig) = p256::ecdsa::Signature::from_der(sig) else {
        return false;
    };
    // Accept high-S signatures as OpenSSL and securesystemslib do.
    let sig = sig.normalize_s().unwrap_or(sig);
    key.verify(msg, &sig).is_ok()
}

fn verify_rsa(public_pem: &str, msg: &[u8], sig: &[u8], pss: bool) -> bool {
    use rsa::pkcs8::DecodePublicKey;
    let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(public_pem) else {
        return false;
    };
    let digest = Sha256::digest(msg);
    if pss {
        key.verify(rsa::Pss::new::<Sha256>(), &digest, sig).is_ok()
    } else {
        key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
            .is_ok()
    }
}

/// An ed25519 private key that signs metadata for a publisher.
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    public: Key,
    key_id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The on-disk form of a private key (securesystemslib's legacy ed25519 layout).
#[derive(Serialize, Deserialize)]
struct PrivateKeyFile {
    keytype: String,
    scheme: String,
    keyid: String,
    keyval: PrivateKeyVal,
}

#[derive(Serialize, Deserialize)]
struct PrivateKeyVal {
    public: String,
    private: String,
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> SigningKey {
        let inner = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_dalek(inner)
    }

    /// A key from its 32-byte seed (tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> SigningKey {
        let public = Key::ed25519(&inner.verifying_key());
        let key_id = public.key_id();
        SigningKey {
            inner,
            public,
            key_id,
        }
    }

    /// The public half.
    pub fn public(&self) -> &Key {
        &self.public
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `msg`, returning the hex signature.
    pub fn sign(&self, msg: &[u8]) -> String {
        use ed25519_dalek::Signer;
        hex::encode(self.inner.sign(msg).to_bytes())
    }

    /// Serialises the private key as JSON for a key file.
    pub fn to_json(&self) -> String {
        let f = PrivateKeyFile {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyid: self.key_id.clone(),
            keyval: PrivateKeyVal {
                public: self.public.keyval.public.clone(),
                private: hex::encode(self.inner.to_bytes()),
            },
        };
        serde_json::to_string_pretty(&f).expect("key file serialises")
    }

    /// Reads a private key written by [`SigningKey::to_json`].
    pub fn from_json(text: &str) -> Result<SigningKey, String> {
        let f: PrivateKeyFile =
            serde_json::from_str(text).map_err(|e| format!("not a key file: {e}"))?;
        if f.keytype != "ed25519" || f.scheme != "ed25519" {
            return Err(format!("unsupported key type {}/{}", f.keytype, f.scheme));
        }
        let seed = hex::decode(&f.keyval.private).map_err(|_| "private key is not hex")?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| "private key is not 32 bytes".to_string())?;
        let key = SigningKey::from_seed(seed);
        if key.public.keyval.public != f.keyval.public {
            return Err("public key does not match the private key".into());
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_sign_verify_and_tamper() {
        let k = SigningKey::from_seed([7; 32]);
        let sig = k.sign(b"hello");
        assert!(k.public().verify(b"hello", &sig));
        assert!(!k.public().verify(b"hellp", &sig));
        assert!(!k.public().verify(b"hello", "zz"));
        assert!(!k.public().verify(b"hello", &sig[2..]));
    }

    #[test]
    fn unknown_scheme_never_verifies() {
        let k = SigningKey::from_seed([7; 32]);
        let sig = k.sign(b"m");
        let mut p = k.public().clone();
        p.scheme = "ed448".into();
        assert!(!p.verify(b"m", &sig));
    }

    #[test]
    fn key_file_round_trip() {
        let k = SigningKey::from_seed([3; 32]);
        let back = SigningKey::from_json(&k.to_json()).unwrap();
        assert_eq!(back.key_id(), k.key_id());
        assert!(SigningKey::from_json("{}").is_err());
    }
}
