//! EIP-191 `personal_sign` over canonical JSON, as ethers signs and verifies it
//! (genosdb-data.md §10.2): keccak256 of the prefixed message, secp256k1 with
//! RFC 6979 nonces and low s, `0x` + r + s + v with v 27/28.

use crate::eth;
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("signature is not 0x-prefixed hex")]
    Hex,
    #[error("signature is {0} bytes, not 65 (or 64, compact)")]
    Length(usize),
    #[error("signature has a non-canonical s")]
    HighS,
    #[error("signature has an invalid v ({0})")]
    V(u8),
    #[error("signature does not recover a public key")]
    Recover,
}

/// keccak256("\x19Ethereum Signed Message:\n" + decimal byte length + message).
pub fn eip191_digest(message: &[u8]) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(b"\x19Ethereum Signed Message:\n");
    h.update(message.len().to_string().as_bytes());
    h.update(message);
    h.finalize().into()
}

/// The EIP-55 address of a public key: the last 20 bytes of keccak256 of its
/// uncompressed point without the 0x04 prefix.
pub fn address_of(key: &VerifyingKey) -> String {
    let point = key.to_sec1_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    eth::to_checksum(&hex::encode(&hash[12..]))
}

/// Recovers the signer's EIP-55 address, accepting what ethers'
/// `Signature.from` accepts: 65 bytes with v 0/1/27/28 (or ≥ 35, EIP-155), or a
/// 64-byte compact signature (EIP-2098).
pub fn recover(digest: &[u8; 32], signature: &str) -> Result<String, SigError> {
    let bytes = parse_hex(signature)?;
    let (rs, y_odd) = match bytes.len() {
        65 => {
            if bytes[32] & 0x80 != 0 {
                return Err(SigError::HighS);
            }
            let mut rs = [0u8; 64];
            rs.copy_from_slice(&bytes[..64]);
            (rs, normalized_v(bytes[64])? == 28)
        }
        64 => {
            let mut rs = [0u8; 64];
            rs.copy_from_slice(&bytes);
            let y_odd = rs[32] & 0x80 != 0;
            rs[32] &= 0x7f;
            (rs, y_odd)
        }
        n => return Err(SigError::Length(n)),
    };
    let sig = Signature::from_slice(&rs).map_err(|_| SigError::Recover)?;
    let key = VerifyingKey::recover_from_prehash(digest, &sig, RecoveryId::new(y_odd, false))
        .map_err(|_| SigError::Recover)?;
    Ok(address_of(&key))
}

/// ethers' `Signature.getNormalizedV`.
fn normalized_v(v: u8) -> Result<u8, SigError> {
    match v {
        0 | 27 => Ok(27),
        1 | 28 => Ok(28),
        v if v < 35 => Err(SigError::V(v)),
        v if v & 1 == 1 => Ok(27),
        _ => Ok(28),
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, SigError> {
    let hex = s.strip_prefix("0x").ok_or(SigError::Hex)?;
    if hex.len() % 2 != 0 || hex.len() > 260 {
        return Err(SigError::Hex);
    }
    hex::decode(hex).map_err(|_| SigError::Hex)
}

/// A signing identity. Its key never leaves this type: `Debug` prints the address.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    address: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        let address = address_of(key.verifying_key());
        Self { key, address }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// `0x` + r + s + v, exactly as ethers' `signMessage` prints it.
    pub fn sign(&self, message: &[u8]) -> String {
        let (sig, recid) = self.key.sign_prehash_recoverable(&eip191_digest(message));
        let v = 27 + (recid.to_byte() & 1);
        format!("0x{}{v:02x}", hex::encode(sig.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARDHAT_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const V13_CANONICAL: &str = r#"{"id":"p1","originUser":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","timestamp":{"logical":2,"physical":1795591972020},"type":"upsert","value":{"n":1,"title":"signed by SA"}}"#;
    const V13_SIG: &str = "0x8ed8d3356d0aa5544c5d366de346e502d393c3ee58227c378233301ac211c3670a0bacaad8268dfc452dabe1ac8706085c81a8b6b8b259a0330d0ed3109c2bcf1b";

    fn hardhat() -> Signer {
        Signer::new(SigningKey::from_slice(&hex::decode(HARDHAT_KEY).unwrap()).unwrap())
    }

    #[test]
    fn v13_digest_signature_and_recovery() {
        assert_eq!(V13_CANONICAL.len(), 175);
        let digest = eip191_digest(V13_CANONICAL.as_bytes());
        assert_eq!(
            hex::encode(digest),
            "8598f87675654d4edecb2e55b0d04a8174beda84594ea11b1bc788fd2218748b"
        );
        let signer = hardhat();
        assert_eq!(
            signer.address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        // RFC 6979 is deterministic: we sign exactly what the browser signed.
        assert_eq!(signer.sign(V13_CANONICAL.as_bytes()), V13_SIG);
        assert_eq!(recover(&digest, V13_SIG).unwrap(), signer.address());
        assert!(
            format!("{signer:?}").contains("0xf39F") && !format!("{signer:?}").contains("ac09")
        );
    }

    #[test]
    fn v_forms_and_compact_signatures_recover_the_same_address() {
        let digest = eip191_digest(V13_CANONICAL.as_bytes());
        let body = &V13_SIG[..130];
        for v in ["00", "1b", "25"] {
            // 0x25 = 37: odd EIP-155 v means 27.
            assert_eq!(
                recover(&digest, &format!("{body}{v}")).unwrap(),
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            );
        }
        assert_ne!(
            recover(&digest, &format!("{body}1c")).ok().as_deref(),
            Some("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266")
        );
        assert_eq!(recover(&digest, &format!("{body}1d")), Err(SigError::V(29)));
        // v = 27 means y even: the compact form keeps s's top bit clear.
        assert_eq!(
            recover(&digest, body).unwrap(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
    }

    #[test]
    fn malformed_signatures_are_errors() {
        let digest = [7u8; 32];
        assert_eq!(recover(&digest, "8ed8"), Err(SigError::Hex));
        assert_eq!(recover(&digest, "0x8ed"), Err(SigError::Hex));
        assert_eq!(recover(&digest, "0xzz"), Err(SigError::Hex));
        assert_eq!(recover(&digest, "0x1234"), Err(SigError::Length(2)));
        let high_s = format!("0x{}{}{}", "11".repeat(32), "ff".repeat(32), "1b");
        assert_eq!(recover(&digest, &high_s), Err(SigError::HighS));
        let zero = format!("0x{}1b", "00".repeat(64));
        assert_eq!(recover(&digest, &zero), Err(SigError::Recover));
        assert!(recover(&digest, &"0x".repeat(1000)).is_err());
    }
}
