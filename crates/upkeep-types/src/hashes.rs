//! `Hashes`: a file's signed digests, compact enough for catalogs of 100,000 updates.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Algorithm → hex digest, sorted by algorithm, serialised as a JSON object. A small vector
/// rather than a `BTreeMap`: a B-tree node for two entries costs four times the memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hashes(Vec<(Box<str>, Box<str>)>);

impl Hashes {
    /// No hashes.
    pub fn new() -> Hashes {
        Hashes(Vec::new())
    }
    /// Sets the digest for `alg`, replacing an earlier one.
    pub fn insert(&mut self, alg: impl Into<Box<str>>, hex: impl Into<Box<str>>) {
        let (alg, hex) = (alg.into(), hex.into());
        match self.0.binary_search_by(|(a, _)| a.as_ref().cmp(&alg)) {
            Ok(i) => self.0[i].1 = hex,
            Err(i) => self.0.insert(i, (alg, hex)),
        }
    }
    /// The digest for `alg`.
    pub fn get(&self, alg: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(a, _)| a.as_ref().cmp(alg))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }
    /// Removes and returns the digest for `alg`.
    pub fn remove(&mut self, alg: &str) -> Option<Box<str>> {
        let i = self.0.binary_search_by(|(a, _)| a.as_ref().cmp(alg)).ok()?;
        Some(self.0.remove(i).1)
    }
    /// (algorithm, digest) pairs in algorithm order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(a, h)| (a.as_ref(), h.as_ref()))
    }
    /// Number of digests.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&str> for Hashes {
    type Output = str;
    /// The digest for an algorithm known to be present (e.g. `sha256` of a file this program
    /// hashed itself). Panics otherwise.
    fn index(&self, alg: &str) -> &str {
        self.get(alg).unwrap_or_else(|| panic!("no {alg} digest"))
    }
}

impl Serialize for Hashes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (a, h) in &self.0 {
            m.serialize_entry(a.as_ref(), h.as_ref())?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Hashes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hashes, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hashes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of algorithm to hex digest")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hashes, A::Error> {
                let mut h = Hashes::new();
                while let Some((a, v)) = map.next_entry::<String, String>()? {
                    h.insert(a, v);
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_map_semantics_and_json_form() {
        let mut h = Hashes::new();
        h.insert("sha512", "bb");
        h.insert("sha256", "aa");
        h.insert("sha256", "cc");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("sha256", "cc"), ("sha512", "bb")]
        );
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"sha256":"cc","sha512":"bb"}"#
        );
        let back: Hashes = serde_json::from_str(r#"{"sha512":"bb","sha256":"cc"}"#).unwrap();
        assert_eq!(back, h);
        assert_eq!(h.remove("sha512").as_deref(), Some("bb"));
        assert_eq!(h.get("sha512"), None);
        assert!(serde_json::from_str::<Hashes>("[]").is_err());
    }
}
