//! Ethereum addresses: parsing and EIP-55 checksums.

use sha3::{Digest, Keccak256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("does not start with 0x")]
    Prefix,
    #[error("is not 40 hex digits after 0x")]
    Hex,
    #[error("fails its EIP-55 checksum (expected {0})")]
    Checksum(String),
}

/// Parses `0x` + 40 hex digits. All-lowercase and all-uppercase forms carry no
/// checksum and are accepted; mixed case must be the exact EIP-55 form. Returns the
/// EIP-55 form, the one browsers put in `user:<address>` node ids.
pub fn parse_address(s: &str) -> Result<String, AddressError> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or(AddressError::Prefix)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AddressError::Hex);
    }
    let checksummed = to_checksum(hex);
    let has_lower = hex.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper && hex != &checksummed[2..] {
        return Err(AddressError::Checksum(checksummed));
    }
    Ok(checksummed)
}

/// The EIP-55 mixed-case form of 40 hex digits.
pub fn to_checksum(hex: &str) -> String {
    let lower = hex.to_ascii_lowercase();
    let hash = Keccak256::digest(lower.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower.chars().enumerate() {
        let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
        if c.is_ascii_alphabetic() && nibble >= 8 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip55_reference_vectors() {
        // From the EIP-55 specification, and the Hardhat account that signs sm.json.
        for addr in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        ] {
            assert_eq!(parse_address(addr).as_deref(), Ok(addr));
            assert_eq!(parse_address(&addr.to_lowercase()).as_deref(), Ok(addr));
            assert_eq!(
                parse_address(&format!("0x{}", addr[2..].to_uppercase())).as_deref(),
                Ok(addr)
            );
        }
    }

    #[test]
    fn refuses_bad_addresses() {
        assert_eq!(
            parse_address("f39fd6e51aad88f6f4ce6ab8827279cfffb92266"),
            Err(AddressError::Prefix)
        );
        assert_eq!(parse_address("0x1234"), Err(AddressError::Hex));
        assert_eq!(
            parse_address("0xg39fd6e51aad88f6f4ce6ab8827279cfffb92266"),
            Err(AddressError::Hex)
        );
        assert!(matches!(
            parse_address("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            Err(AddressError::Checksum(_))
        ));
    }
}
