//! SDP sealing (§3.4): AES-256-GCM with `key = SHA-256(password:appId:roomId)`, written
//! as `"<12 decimal iv bytes, comma-separated>$<base64 ciphertext+tag>"`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// Sealed SDPs larger than this are refused before any work (a browser's is ~1-3 KiB).
pub const MAX_SEALED_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed SDP is larger than {MAX_SEALED_LEN} bytes")]
    TooLarge,
    #[error("sealed SDP is not <iv>$<base64>")]
    Format,
    #[error("sealed SDP iv is not 12 decimal bytes")]
    Iv,
    #[error("sealed SDP is not base64")]
    Base64,
    #[error("decryption failed (wrong password or tampered)")]
    Decrypt,
    #[error("sealed SDP is not UTF-8")]
    Utf8,
}

/// The sealing key of one room.
#[derive(Clone)]
pub struct SealKey(Aes256Gcm);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn derive(password: &str, app_id: &str, room: &str) -> Self {
        Self::from_bytes(&key_bytes(password, app_id, room))
    }

    fn from_bytes(key: &[u8; 32]) -> Self {
        Self(Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)))
    }

    /// Seals with a fresh random iv.
    pub fn seal(&self, sdp: &str) -> String {
        let mut iv = [0u8; 12];
        getrandom::fill(&mut iv).expect("the OS random source works");
        self.seal_with_iv(sdp, iv)
    }

    pub fn seal_with_iv(&self, sdp: &str, iv: [u8; 12]) -> String {
        let ct = self
            .0
            .encrypt(&Nonce::from(iv), sdp.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let ivs: Vec<String> = iv.iter().map(u8::to_string).collect();
        format!("{}${}", ivs.join(","), STANDARD.encode(ct))
    }

    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(SealError::TooLarge);
        }
        let (iv_text, b64) = sealed.split_once('$').ok_or(SealError::Format)?;
        let mut iv = [0u8; 12];
        let mut parts = iv_text.split(',');
        for slot in iv.iter_mut() {
            *slot = parts
                .next()
                .and_then(|p| p.trim().parse::<u8>().ok())
                .ok_or(SealError::Iv)?;
        }
        if parts.next().is_some() {
            return Err(SealError::Iv);
        }
        let ct = STANDARD.decode(b64.trim()).map_err(|_| SealError::Base64)?;
        let plain = self
            .0
            .decrypt(&Nonce::from(iv), ct.as_slice())
            .map_err(|_| SealError::Decrypt)?;
        String::from_utf8(plain).map_err(|_| SealError::Utf8)
    }
}

pub fn key_bytes(password: &str, app_id: &str, room: &str) -> [u8; 32] {
    Sha256::digest(format!("{password}:{app_id}:{room}").as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_malformed_and_wrong_keys() {
        let key = SealKey::derive("", "1234", "r");
        let sealed = key.seal("v=0\r\n");
        assert_eq!(key.open(&sealed).unwrap(), "v=0\r\n");
        assert_eq!(
            SealKey::derive("pw", "1234", "r").open(&sealed),
            Err(SealError::Decrypt)
        );
        assert_eq!(key.open("nope"), Err(SealError::Format));
        assert_eq!(key.open("1,2,3$AAAA"), Err(SealError::Iv));
        assert_eq!(
            key.open("1,2,3,4,5,6,7,8,9,10,11,256$AAAA"),
            Err(SealError::Iv)
        );
        assert_eq!(
            key.open("1,2,3,4,5,6,7,8,9,10,11,12,13$AAAA"),
            Err(SealError::Iv)
        );
        assert_eq!(
            key.open("1,2,3,4,5,6,7,8,9,10,11,12$***"),
            Err(SealError::Base64)
        );
        assert_eq!(
            key.open("1,2,3,4,5,6,7,8,9,10,11,12$"),
            Err(SealError::Decrypt)
        );
        assert_eq!(
            key.open(&"1".repeat(MAX_SEALED_LEN + 1)),
            Err(SealError::TooLarge)
        );
    }
}
