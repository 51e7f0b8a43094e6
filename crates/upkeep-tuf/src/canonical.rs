//! Canonical JSON (OLPC), the byte form TUF signatures are computed over.

use serde::Serialize;

/// Serialises `value` as canonical JSON: the bytes TUF signatures are computed over. As
/// OLPC canonical JSON (and securesystemslib) has it, only `"` and `\` are escaped in
/// strings; a control character is written raw (a PEM public key's line breaks, as
/// python-tuf's ECDSA and RSA keys carry them). Fails only for values canonical JSON
/// cannot express (floating-point numbers).
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    Ok(out)
}

/// [`to_canonical`] for bytes that are also written as a metadata file (what upkeep's
/// publisher does, so that clients verify the file without re-serialising it): a string
/// holding a control character (U+0000–U+001F) is refused, since canonical JSON writes it
/// raw and no JSON parser then reads the file — signing one would make the whole role
/// unreadable to every client.
pub fn to_canonical_file<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let out = to_canonical(value)?;
    // Canonical JSON has no whitespace outside strings: any byte below 0x20 is in one.
    if let Some(at) = out.iter().position(|&b| b < 0x20) {
        let start = out[..at].iter().rposition(|&b| b == b'"').unwrap_or(0);
        let context = String::from_utf8_lossy(&out[start..at]);
        return Err(format!(
            "a string holds control character U+{:04X} after {context:?}; canonical JSON cannot carry control characters",
            out[at]
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{to_canonical, to_canonical_file};

    #[test]
    fn control_characters_are_written_raw_for_signatures_and_refused_in_files() {
        assert_eq!(
            to_canonical(&serde_json::json!({"a": "x\\y\"z"})).unwrap(),
            br#"{"a":"x\\y\"z"}"#
        );
        // What securesystemslib signs for a PEM key: the line break raw.
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n";
        let bytes = to_canonical(&serde_json::json!({"public": pem})).unwrap();
        assert!(bytes.windows(5).any(|w| w == b"KEY--") && bytes.contains(&b'\n'));
        let e = to_canonical_file(&serde_json::json!({"t": "Tools\t1.0"})).unwrap_err();
        assert!(e.contains("U+0009") && e.contains("Tools"), "{e}");
        assert!(to_canonical_file(&serde_json::json!(["a\nb"])).is_err());
        assert!(to_canonical_file(&serde_json::json!(["a b"])).is_ok());
    }
}
