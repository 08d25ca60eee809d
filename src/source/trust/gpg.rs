//! OpenPGP commit signatures (git's default `gpg.format=openpgp`), checked
//! against a keyring file as `git verify-commit` with that keyring would:
//! the signature must verify, its key (the primary key or a subkey bound for
//! signing) must be in the keyring, and neither revoked nor expired now.
//!
//! Packets, armor and cryptography are the `pgp` crate's (rPGP, pure Rust):
//! no `gpg` binary or agent is needed on the host that applies. What is
//! decided here is only which of the keyring's keys may sign, from the
//! self-signatures the crate verifies.

use chrono::{DateTime, Utc};
use git2::Oid;
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureType, SubpacketData};
use pgp::types::{Fingerprint, KeyDetails, KeyId, SignedUser, Tag, Timestamp};

use super::{Signer, SignerSeen, UntrustedCommit};

/// The public keys of `--trusted-keys`, as exported by `gpg --export`.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Parses every key of a keyring: binary (`gpg --export`) or ASCII
    /// armored (`gpg --armor --export`, several blocks may follow each other).
    /// The error says what the crate could not parse.
    pub fn parse(bytes: &[u8]) -> Result<Keyring, String> {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let bytes = &bytes[start..];
        let mut keys = Vec::new();
        // A packet's first octet has its high bit set; armor is ASCII.
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            let parsed = SignedPublicKey::from_bytes_many(bytes).map_err(brief)?;
            for key in parsed {
                keys.push(key.map_err(brief)?);
            }
        } else if !bytes.is_empty() {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "neither binary OpenPGP nor ASCII armor".to_string())?;
            let starts: Vec<usize> = text.match_indices("-----BEGIN PGP ").map(|m| m.0).collect();
            if starts.is_empty() {
                return Err("no `-----BEGIN PGP PUBLIC KEY BLOCK-----`".to_string());
            }
            for (i, at) in starts.iter().enumerate() {
                let block = &text[*at..starts.get(i + 1).copied().unwrap_or(text.len())];
                let (parsed, _) =
                    SignedPublicKey::from_armor_many(block.as_bytes()).map_err(brief)?;
                for key in parsed {
                    keys.push(key.map_err(brief)?);
                }
            }
        }
        Ok(Keyring { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keyring's keys (primary or subkey) that the signature names as its
    /// issuer; every key when it names none (the crate then checks each).
    fn candidates<'a>(&'a self, sig: &Signature) -> Vec<(&'a SignedPublicKey, Component<'a>)> {
        let fingerprints = sig.issuer_fingerprint();
        let key_ids = sig.issuer_key_id();
        let named = |fpr: Fingerprint, id: KeyId| {
            (fingerprints.is_empty() && key_ids.is_empty())
                || fingerprints.iter().any(|f| **f == fpr)
                || key_ids.iter().any(|k| **k == id)
        };
        let mut out = Vec::new();
        for cert in &self.keys {
            if named(cert.fingerprint(), cert.legacy_key_id()) {
                out.push((cert, Component::Primary));
            }
            for sub in &cert.public_subkeys {
                if named(sub.fingerprint(), sub.legacy_key_id()) {
                    out.push((cert, Component::Subkey(sub)));
                }
            }
        }
        out
    }
}

/// Which key of a certificate made a signature.
#[derive(Clone, Copy)]
enum Component<'a> {
    Primary,
    Subkey(&'a SignedPublicSubKey),
}

/// Checks an armored OpenPGP signature of a commit: trusted when one of its
/// signatures (git makes one) verifies with a key of the keyring that may
/// sign at `now`.
pub fn verify(
    keyring: &Keyring,
    commit: Oid,
    armor: &str,
    signed: &[u8],
    now: DateTime<Utc>,
) -> Result<Signer, UntrustedCommit> {
    let bad = |reason: String| UntrustedCommit::BadSignature { commit, reason };
    let (sigs, _) = DetachedSignature::from_armor_many(armor.as_bytes())
        .map_err(|e| bad(format!("not a readable OpenPGP signature ({})", brief(e))))?;
    let sigs = sigs
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a readable OpenPGP signature ({})", brief(e))))?;
    let mut refusal = None;
    for sig in &sigs {
        match check(keyring, commit, &sig.signature, signed, now) {
            Ok(signer) => return Ok(signer),
            Err(e) => {
                refusal.get_or_insert(e);
            }
        }
    }
    Err(refusal.unwrap_or_else(|| bad("no signature packet in it".to_string())))
}

fn check(
    keyring: &Keyring,
    commit: Oid,
    sig: &Signature,
    signed: &[u8],
    now: DateTime<Utc>,
) -> Result<Signer, UntrustedCommit> {
    let bad = |reason: String| UntrustedCommit::BadSignature { commit, reason };
    if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
        let typ = sig.typ().map(|t| format!("{t:?}"));
        return Err(bad(format!(
            "a {} signature, not one over data",
            typ.as_deref().unwrap_or("unknown")
        )));
    }
    // rPGP verifies these; collisions make them forgeable (as Sequoia's
    // standard policy and gpg's `weak-digest` say).
    if let Some(weak @ (HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160)) =
        sig.hash_alg()
    {
        return Err(bad(format!("made with the weak digest {weak}")));
    }
    let candidates = keyring.candidates(sig);
    if candidates.is_empty() {
        return Err(UntrustedCommit::UnknownSigner {
            commit,
            signer: SignerSeen::Gpg {
                key: issuer(sig),
                user_id: None,
                in_keyring: false,
            },
        });
    }
    // Checked before trust: an unverified signature proves no signer.
    let mut failure = None;
    let mut verified = None;
    for (cert, component) in candidates {
        let result = match component {
            Component::Primary => sig.verify(&cert.primary_key, signed),
            Component::Subkey(sub) => sig.verify(&sub.key, signed),
        };
        match result {
            Ok(()) => {
                verified = Some((cert, component));
                break;
            }
            Err(e) => {
                failure.get_or_insert(brief(e));
            }
        }
    }
    let Some((cert, component)) = verified else {
        let e = failure.unwrap_or_default();
        return Err(bad(format!("does not match the commit ({e})")));
    };
    let signing_fpr = match component {
        Component::Primary => hex_of(&cert.fingerprint()),
        Component::Subkey(sub) => hex_of(&sub.fingerprint()),
    };
    let user_id = user_id(cert);
    let unusable = |reason: String| UntrustedCommit::UnusableKey {
        commit,
        signer: SignerSeen::Gpg {
            key: signing_fpr.clone(),
            user_id: user_id.clone(),
            in_keyring: true,
        },
        reason,
    };
    if let Some(expiry) = sig
        .signature_expiration_time()
        .filter(|d| d.as_secs() > 0)
        .zip(sig.created())
        .map(|(d, c)| add(c, d.as_secs()))
    {
        if expiry <= now {
            return Err(bad(format!("the signature expired at {}", rfc3339(expiry))));
        }
    }
    may_sign(cert, component, now).map_err(unusable)?;
    Ok(Signer::Gpg {
        fingerprint: hex_of(&cert.fingerprint()),
        user_id,
        subkey: match component {
            Component::Primary => None,
            Component::Subkey(_) => Some(signing_fpr),
        },
    })
}

/// Why the key may not sign at `now`, if it may not: OpenPGP's rules for a
/// certificate, read from self-signatures that the crate verifies. A
/// revocation counts whatever its reason or date, the cautious reading.
fn may_sign(
    cert: &SignedPublicKey,
    component: Component<'_>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let primary = &cert.primary_key;
    let revoked =
        cert.details.revocation_signatures.iter().find(|s| {
            s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(primary).is_ok()
        });
    if let Some(r) = revoked {
        return Err(format!("is revoked{}", reason(r)));
    }
    let direct = cert
        .details
        .direct_signatures
        .iter()
        .filter(|s| s.verify_key(primary).is_ok());
    let certifications = cert.details.users.iter().flat_map(|u| {
        u.signatures
            .iter()
            .filter(move |s| self_certifies(primary, u, s))
    });
    let Some(self_sig) = newest(direct.chain(certifications)) else {
        return Err("has no valid self-signature in the keyring".to_string());
    };
    if let Some(at) = expiry(primary.created_at(), self_sig) {
        if at <= now {
            return Err(format!("expired at {}", rfc3339(at)));
        }
    }
    match component {
        Component::Primary => {
            // Without key flags (old keys) the primary key may sign.
            if has_key_flags(self_sig) && !self_sig.key_flags().sign() {
                return Err("is not a signing key (no `S` usage)".to_string());
            }
        }
        Component::Subkey(sub) => {
            let revoked = sub.signatures.iter().find(|s| {
                s.typ() == Some(SignatureType::SubkeyRevocation)
                    && s.verify_subkey_binding(primary, &sub.key).is_ok()
            });
            if let Some(r) = revoked {
                return Err(format!("is a revoked subkey{}", reason(r)));
            }
            let bindings = sub.signatures.iter().filter(|s| {
                s.typ() == Some(SignatureType::SubkeyBinding)
                    && s.verify_subkey_binding(primary, &sub.key).is_ok()
            });
            let Some(binding) = newest(bindings) else {
                return Err("is a subkey not bound to its primary key".to_string());
            };
            // A signing subkey must certify its primary key back, or anyone
            // could claim another's subkey as theirs.
            let back = binding
                .embedded_signature()
                .is_some_and(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok());
            if !binding.key_flags().sign() || !back {
                return Err("is a subkey not bound for signing".to_string());
            }
            if let Some(at) = expiry(sub.key.created_at(), binding) {
                if at <= now {
                    return Err(format!("is a subkey that expired at {}", rfc3339(at)));
                }
            }
        }
    }
    Ok(())
}

/// The self-signature that counts: the newest.
fn newest<'a>(sigs: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    sigs.max_by_key(|s| s.created().map(Timestamp::as_secs).unwrap_or(0))
}

/// When a key with this self-signature expires; `None` if never.
fn expiry(created: Timestamp, self_sig: &Signature) -> Option<DateTime<Utc>> {
    self_sig
        .key_expiration_time()
        .filter(|d| d.as_secs() > 0)
        .map(|d| add(created, d.as_secs()))
}

fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    })
}

/// ` (reason)` of a revocation, when it gives one.
fn reason(revocation: &Signature) -> String {
    let text = revocation
        .revocation_reason_string()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty());
    match (revocation.revocation_reason_code(), text) {
        (_, Some(t)) => format!(" ({t})"),
        (Some(code), None) => format!(" ({code:?})"),
        (None, None) => String::new(),
    }
}

/// The user id to show for a key: its primary one with a valid
/// self-signature, else the first such.
fn user_id(cert: &SignedPublicKey) -> Option<String> {
    let primary = &cert.primary_key;
    let valid: Vec<_> = cert
        .details
        .users
        .iter()
        .filter(|u| u.signatures.iter().any(|s| self_certifies(primary, u, s)))
        .collect();
    valid
        .iter()
        .find(|u| u.is_primary())
        .or(valid.first())
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
}

/// Whether `sig` is a valid self-certification of user id `u` (a
/// certification revocation, which rPGP keeps beside them, is not).
fn self_certifies(primary: &pgp::packet::PublicKey, u: &SignedUser, sig: &Signature) -> bool {
    sig.typ() != Some(SignatureType::CertRevocation)
        && sig
            .verify_certification(primary, Tag::UserId, &u.id)
            .is_ok()
}

/// The issuer a signature names: its fingerprint, or its key ID.
fn issuer(sig: &Signature) -> String {
    if let Some(f) = sig.issuer_fingerprint().first() {
        return hex_of(f);
    }
    match sig.issuer_key_id().first() {
        Some(id) => format!("key ID {}", hex::encode_upper(id)),
        None => "a key it does not name".to_string(),
    }
}

/// Some of rPGP's messages embed a `Debug` dump, backtrace and all: the
/// first line without it is what a person can use.
fn brief(e: pgp::errors::Error) -> String {
    let text = e.to_string();
    let text = text.split(", backtrace").next().unwrap_or_default();
    let text = text.lines().next().unwrap_or_default();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

fn hex_of(f: &Fingerprint) -> String {
    hex::encode_upper(f.as_bytes())
}

fn add(t: Timestamp, secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(t.as_secs()) + i64::from(secs), 0)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    //! Fixtures made by gpg 2.2 with `faked-system-time 20260101T000000!`:
    //! `signer.asc` (ed25519, created 2026-01-01, expires 2027-01-01) signed
    //! `payload.txt` into `payload.sig`; `stranger.asc` is another key.
    use super::*;
    use pgp::ser::Serialize;

    const SIGNER: &str = include_str!("testdata/signer.asc");
    const STRANGER: &str = include_str!("testdata/stranger.asc");
    const PAYLOAD: &str = include_str!("testdata/payload.txt");
    const SIG: &str = include_str!("testdata/payload.sig");
    const SIGNER_FPR: &str = "9E45C29E4C592ECCE228A1ADD414B8C3B63892D6";

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().expect("RFC 3339")
    }

    fn keyring(text: &str) -> Keyring {
        Keyring::parse(text.as_bytes()).expect("a keyring")
    }

    #[test]
    fn armored_blocks_one_after_another_and_binary() {
        let both = keyring(&format!("# team keys\n{SIGNER}\n{STRANGER}"));
        assert_eq!(both.len(), 2);
        let mut binary = Vec::new();
        for key in &both.keys {
            binary.extend(key.to_bytes().expect("serializes"));
        }
        let again = Keyring::parse(&binary).expect("binary keyring");
        assert_eq!(again.len(), 2);
        assert_eq!(hex_of(&again.keys[0].fingerprint()), SIGNER_FPR);
        assert!(Keyring::parse(b"  \n").expect("empty").is_empty());
    }

    #[test]
    fn what_is_not_a_public_keyring_is_refused() {
        for (input, needle) in [
            (&b"hello"[..], "no `-----BEGIN PGP PUBLIC KEY BLOCK-----`"),
            (SIG.as_bytes(), "unexpected block type"),
            (&[0x00, 0x00, 0x00, 0x20, 0x01, 0xff][..], "neither binary"),
        ] {
            let e = Keyring::parse(input).err().unwrap_or_default();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
        let truncated = &SIGNER.as_bytes()[..SIGNER.len() / 2];
        assert!(Keyring::parse(truncated).is_err());
    }

    #[test]
    fn trusted_until_the_key_expires() {
        let ring = keyring(SIGNER);
        let signer = verify(
            &ring,
            Oid::ZERO_SHA1,
            SIG,
            PAYLOAD.as_bytes(),
            at("2026-06-01T00:00:00Z"),
        );
        assert_eq!(
            signer,
            Ok(Signer::Gpg {
                fingerprint: SIGNER_FPR.to_string(),
                user_id: Some("Fixture Signer <signer@fermata.invalid>".to_string()),
                subkey: None,
            })
        );
        let e = verify(
            &ring,
            Oid::ZERO_SHA1,
            SIG,
            PAYLOAD.as_bytes(),
            at("2027-01-01T00:00:00Z"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.ends_with(&format!(
                "is signed by {SIGNER_FPR} (Fixture Signer <signer@fermata.invalid>), \
                 which expired at 2027-01-01T00:00:00Z"
            )),
            "{e}"
        );
    }

    #[test]
    fn tampered_payload_and_unknown_key() {
        let now = at("2026-06-01T00:00:00Z");
        let tampered = PAYLOAD.replace("reviewed", "not reviewed");
        let e = verify(
            &keyring(SIGNER),
            Oid::ZERO_SHA1,
            SIG,
            tampered.as_bytes(),
            now,
        );
        assert!(
            matches!(&e, Err(UntrustedCommit::BadSignature { reason, .. }) if reason.starts_with("does not match the commit")),
            "{e:?}"
        );
        let e = verify(
            &keyring(STRANGER),
            Oid::ZERO_SHA1,
            SIG,
            PAYLOAD.as_bytes(),
            now,
        );
        assert_eq!(
            e,
            Err(UntrustedCommit::UnknownSigner {
                commit: Oid::ZERO_SHA1,
                signer: SignerSeen::Gpg {
                    key: SIGNER_FPR.to_string(),
                    user_id: None,
                    in_keyring: false,
                },
            })
        );
        let garbled = SIG.replace("iHUE", "iHUF");
        let e = verify(
            &keyring(SIGNER),
            Oid::ZERO_SHA1,
            &garbled,
            PAYLOAD.as_bytes(),
            now,
        );
        assert!(
            matches!(e, Err(UntrustedCommit::BadSignature { .. })),
            "{e:?}"
        );
    }
}
