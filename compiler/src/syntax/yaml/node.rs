//! The spanned YAML tree that serde-saphyr deserializes a document into:
//! every node with its value, where it starts, and where its last scalar
//! ends.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A YAML node with where it starts in the file.
pub(super) struct YNode {
    pub(super) val: YVal,
    pub(super) loc: serde_saphyr::Location,
    /// End byte of the node's last scalar (collections: of any descendant).
    pub(super) end: Option<usize>,
}

pub(super) enum YVal {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<YNode>),
    Map(Vec<(YNode, YNode)>),
}

impl YVal {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            YVal::Null => "nothing",
            YVal::Bool(_) => "a boolean",
            YVal::Int(_) => "an integer",
            YVal::Float(_) => "a number",
            YVal::Str(_) => "a string",
            YVal::Seq(_) => "a list",
            YVal::Map(_) => "a map",
        }
    }
}

impl<'de> Deserialize<'de> for YNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<YVal>::deserialize(d)?;
        let span = s.referenced.span();
        let own_end = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => usize::try_from(o.saturating_add(l)).ok(),
            _ => None,
        };
        let child_end = match &s.value {
            YVal::Seq(items) => items.iter().filter_map(|n| n.end).max(),
            YVal::Map(entries) => entries
                .iter()
                .flat_map(|(k, v)| [k.end, v.end])
                .flatten()
                .max(),
            _ => None,
        };
        Ok(YNode {
            val: s.value,
            loc: s.referenced,
            end: own_end.max(child_end),
        })
    }
}

impl<'de> Deserialize<'de> for YVal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(YVisitor)
    }
}

struct YVisitor;

impl<'de> Visitor<'de> for YVisitor {
    type Value = YVal;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<YVal, E> {
        Ok(YVal::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<YVal, E> {
        Ok(YVal::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YVal, D::Error> {
        d.deserialize_any(YVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YVal, E> {
        Ok(YVal::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YVal, E> {
        Ok(YVal::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YVal, E> {
        Ok(YVal::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<YVal, E> {
        Ok(YVal::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<YVal, E> {
        match i128::try_from(v) {
            Ok(v) => Ok(YVal::Int(v)),
            Err(_) => Ok(YVal::Float(v as f64)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YVal, E> {
        Ok(YVal::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<YVal, E> {
        Ok(YVal::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<YVal, E> {
        Ok(YVal::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<YVal, E> {
        Ok(YVal::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<YVal, A::Error> {
        let mut items = Vec::new();
        while let Some(x) = a.next_element::<YNode>()? {
            items.push(x);
        }
        Ok(YVal::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<YVal, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = a.next_key::<YNode>()? {
            let v = a.next_value::<YNode>()?;
            entries.push((k, v));
        }
        Ok(YVal::Map(entries))
    }
}
