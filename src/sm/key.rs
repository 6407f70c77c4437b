//! SM_KEY: the daemon's signing identity, read as genossrv reads GDB_SM_KEY (§10.8):
//! with a space it is a BIP39 mnemonic (English, empty passphrase, m/44'/60'/0'/0/0),
//! otherwise a 32-byte hex private key, `0x` optional.

use super::sig::Signer;
use k256::ecdsa::SigningKey;

/// Ethereum's first account.
pub const DERIVATION_PATH: &str = "m/44'/60'/0'/0/0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not a valid BIP39 English mnemonic ({0})")]
    Mnemonic(String),
    #[error("is not 32 bytes of hex (64 hex digits, 0x optional)")]
    Hex,
    #[error("is not a valid secp256k1 private key")]
    Scalar,
}

pub fn parse_key(text: &str) -> Result<Signer, KeyError> {
    let text = text.trim();
    if text.contains(char::is_whitespace) {
        return from_mnemonic(text);
    }
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::Hex);
    }
    let bytes = hex::decode(hex).map_err(|_| KeyError::Hex)?;
    SigningKey::from_slice(&bytes)
        .map(Signer::new)
        .map_err(|_| KeyError::Scalar)
}

fn from_mnemonic(phrase: &str) -> Result<Signer, KeyError> {
    let normalized = phrase.split_whitespace().collect::<Vec<_>>().join(" ");
    let mnemonic = bip39::Mnemonic::parse_in(bip39::Language::English, &normalized)
        .map_err(|e| KeyError::Mnemonic(e.to_string()))?;
    let seed = mnemonic.to_seed("");
    let path: bip32::DerivationPath = DERIVATION_PATH
        .parse()
        .map_err(|_| KeyError::Mnemonic("bad derivation path".into()))?;
    let xprv = bip32::XPrv::derive_from_path(&seed, &path).map_err(|_| KeyError::Scalar)?;
    Ok(Signer::new(xprv.private_key().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_mnemonics_and_keys() {
        // §10.8: the mnemonic genossrv signed sm.json with.
        let srv = parse_key(
            "legal winner thank year wave sausage worth useful legal winner thank yellow",
        )
        .unwrap();
        assert_eq!(srv.address(), "0x58A57ed9d8d624cBD12e2C467D34787555bB1b25");
        // Hardhat's well-known test mnemonic and its first account's key.
        let hh = "test test test test test test test test test test test junk";
        assert_eq!(
            parse_key(hh).unwrap().address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        assert_eq!(
            parse_key(key).unwrap().address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        assert_eq!(
            parse_key(&key[2..]).unwrap().address(),
            parse_key(key).unwrap().address()
        );
        // Extra spaces between words are tolerated.
        assert!(parse_key("test  test test test test test test test test test test junk").is_ok());
    }

    #[test]
    fn refuses_bad_keys_without_echoing_them() {
        assert!(matches!(
            parse_key("test test test test test test test test test test test test"),
            Err(KeyError::Mnemonic(_))
        ));
        assert!(matches!(
            parse_key("hello world"),
            Err(KeyError::Mnemonic(_))
        ));
        assert_eq!(parse_key("0x1234").unwrap_err(), KeyError::Hex);
        assert_eq!(parse_key(&"zz".repeat(32)).unwrap_err(), KeyError::Hex);
        assert_eq!(parse_key(&"00".repeat(32)).unwrap_err(), KeyError::Scalar);
        assert_eq!(parse_key(&"ff".repeat(32)).unwrap_err(), KeyError::Scalar);
        let err = parse_key("abandon abandon secretword")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretword"), "{err}");
    }
}
