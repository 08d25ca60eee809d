//! Margo's `deploymentId` of a site's status: stable and unique per (site,
//! source branch, symphony, variation), so a workload orchestrator can key
//! on it across passes, restarts and sites, and never mistakes one site's
//! deployment for another's.
//!
//! Derivation (a name-based UUID, RFC 9562 version 8): the SHA-256 of
//! `fermata.dev/deployment-id`, NUL, the site, NUL, the branch, NUL,
//! `symphony/variation`; its first 16 bytes with the version nibble set to
//! 8 and the variant bits to `10`, printed as `8-4-4-4-12` lowercase hex.
//! NUL cannot occur in any of the parts, so two tuples never hash the same
//! input. A variation's `fermata.dev/deployment-id` annotation replaces it.

use sha2::{Digest as _, Sha256};

/// What the hash input starts with: another use of SHA-256 over the same
/// names never yields these ids.
const DOMAIN: &str = "fermata.dev/deployment-id";

/// The derived `deploymentId` of `composition` (`symphony/variation`) of
/// `branch` at `site`.
pub fn deployment_id(site: &str, branch: &str, composition: &str) -> String {
    let mut h = Sha256::new();
    for (i, part) in [DOMAIN, site, branch, composition].iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_shaped_stable_and_distinct() {
        let a = deployment_id("plant-a", "main", "line-control/vision");
        // Pinned: a changed derivation would re-key every deployment a
        // workload orchestrator knows.
        assert_eq!(a, "93a06153-1541-88b7-bd21-2b31a13675a6");
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
        let others = [
            deployment_id("plant-b", "main", "line-control/vision"),
            deployment_id("plant-a", "release", "line-control/vision"),
            deployment_id("plant-a", "main", "line-control/db"),
            // The separator keeps the parts apart.
            deployment_id("plant-am", "ain", "line-control/vision"),
        ];
        for o in others {
            assert_ne!(a, o);
        }
    }
}
