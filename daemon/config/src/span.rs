//! A location index of the YAML document: every key and value with its line, column and length.
//!
//! The typed model carries no positions (serde loses them inside internally tagged enums), so
//! the loader parses the same bytes a second time into this untyped tree and semantic checks
//! look places up by path.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// A place in the source: 1-based line and character column, and a length in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
    pub len: u32,
    /// Character offset from the start of the document.
    pub offset: usize,
}

impl Pos {
    pub(crate) const UNKNOWN: Pos = Pos {
        line: 0,
        column: 0,
        len: 0,
        offset: 0,
    };

    pub(crate) fn from_location(loc: &Location) -> Pos {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(0),
            column: u32::try_from(loc.column()).unwrap_or(0),
            len: u32::try_from(loc.span().len()).unwrap_or(0),
            offset: usize::try_from(loc.span().offset()).unwrap_or(0),
        }
    }

    pub(crate) fn is_known(&self) -> bool {
        self.line != 0
    }
}

/// A scalar as YAML typed it (plain `4444` is an integer, `"4444"` a string).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
}

/// One node of the document with its place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SNode {
    pub pos: Pos,
    pub kind: Kind,
}

/// The shape of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<SNode>),
    /// Entries in document order, and an index from key to position for large mappings
    /// (a mesh of tens of thousands of nodes is looked up once per node).
    Map(Vec<(SKey, SNode)>, MapIndex),
}

/// Key → position in a mapping's entries; empty for small mappings, searched linearly.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MapIndex(std::collections::HashMap<String, usize>);

/// Mappings with more entries than this get an index.
const INDEX_FROM: usize = 32;

/// A mapping key with its place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SKey {
    pub name: String,
    pub pos: Pos,
}

impl SNode {
    /// Returns the entries when this is a mapping.
    pub(crate) fn entries(&self) -> &[(SKey, SNode)] {
        match &self.kind {
            Kind::Map(entries, _) => entries,
            _ => &[],
        }
    }

    /// Returns the key and value of `name` in this mapping.
    pub(crate) fn entry(&self, name: &str) -> Option<&(SKey, SNode)> {
        match &self.kind {
            Kind::Map(entries, MapIndex(index)) if !index.is_empty() => {
                index.get(name).and_then(|i| entries.get(*i))
            }
            _ => self.entries().iter().find(|(k, _)| k.name == name),
        }
    }

    /// Walks `path`; a segment names a mapping key, or a sequence index in decimal.
    pub(crate) fn find<S: AsRef<str>>(&self, path: &[S]) -> Option<&SNode> {
        let mut node = self;
        for seg in path {
            node = node.child(seg.as_ref())?;
        }
        Some(node)
    }

    fn child(&self, seg: &str) -> Option<&SNode> {
        match &self.kind {
            Kind::Map(..) => self.entry(seg).map(|(_, v)| v),
            Kind::Seq(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            Kind::Scalar(_) => None,
        }
    }

    /// Returns the place of the key that ends `path` (the value's place for sequence items).
    pub(crate) fn key_pos<S: AsRef<str>>(&self, path: &[S]) -> Option<Pos> {
        let (last, parent) = path.split_last()?;
        let parent = self.find(parent)?;
        match &parent.kind {
            Kind::Map(..) => parent.entry(last.as_ref()).map(|(k, _)| k.pos),
            _ => parent.child(last.as_ref()).map(|n| n.pos),
        }
    }

    /// Finds the path of the deepest key or value that starts at `pos` (line, column).
    pub(crate) fn path_at(&self, pos: (u32, u32)) -> Option<Vec<String>> {
        let children: Vec<(String, Option<Pos>, &SNode)> = match &self.kind {
            Kind::Map(entries, _) => entries
                .iter()
                .map(|(k, v)| (k.name.clone(), Some(k.pos), v))
                .collect(),
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), None, v))
                .collect(),
            Kind::Scalar(_) => return None,
        };
        for (name, key_pos, v) in children {
            if let Some(mut rest) = v.path_at(pos) {
                rest.insert(0, name);
                return Some(rest);
            }
            let at = |p: Pos| (p.line, p.column) == pos;
            if key_pos.is_some_and(at) || at(v.pos) {
                return Some(vec![name]);
            }
        }
        None
    }
}

impl<'de> Deserialize<'de> for SNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Kind>::deserialize(d)?;
        Ok(SNode {
            pos: Pos::from_location(&spanned.referenced),
            kind: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for SKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Kind>::deserialize(d)?;
        let name = match spanned.value {
            Kind::Scalar(Scalar::Str(s)) => s,
            Kind::Scalar(Scalar::Int(i)) => i.to_string(),
            Kind::Scalar(Scalar::Float(x)) => x.to_string(),
            Kind::Scalar(Scalar::Bool(b)) => b.to_string(),
            Kind::Scalar(Scalar::Null) => "~".to_owned(),
            Kind::Seq(_) | Kind::Map(..) => "<complex key>".to_owned(),
        };
        Ok(SKey {
            name,
            pos: Pos::from_location(&spanned.referenced),
        })
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Int(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Int(v.into())))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Int(v)))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Int(
            i128::try_from(v).unwrap_or(i128::MAX),
        )))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Str(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Str(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Str(
            String::from_utf8_lossy(v).into_owned(),
        )))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Scalar(Scalar::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(KindVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<SNode>()? {
            items.push(item);
        }
        Ok(Kind::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<SKey>()? {
            let value = map.next_value::<SNode>()?;
            entries.push((key, value));
        }
        let mut index = MapIndex::default();
        if entries.len() > INDEX_FROM {
            for (i, (key, _)) in entries.iter().enumerate() {
                // The first occurrence wins, as for the linear search.
                index.0.entry(key.name.clone()).or_insert(i);
            }
        }
        Ok(Kind::Map(entries, index))
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_keys_and_values() {
        let src = "a:\n  b: [1, x]\n  c: \"4\"\n";
        let tree: SNode = serde_saphyr::from_str(src).unwrap();
        let b1 = tree.find(&["a", "b", "1"]).unwrap();
        assert_eq!(b1.kind, Kind::Scalar(Scalar::Str("x".into())));
        assert_eq!((b1.pos.line, b1.pos.column), (2, 10));
        let c = tree.key_pos(&["a", "c"]).unwrap();
        assert_eq!((c.line, c.column, c.len), (3, 3, 1));
        assert_eq!(
            tree.find(&["a", "c"]).unwrap().kind,
            Kind::Scalar(Scalar::Str("4".into()))
        );
        assert_eq!(tree.path_at((3, 3)), Some(vec!["a".into(), "c".into()]));
        assert_eq!(
            tree.path_at((2, 10)),
            Some(vec!["a".into(), "b".into(), "1".into()])
        );
    }
}
