//! One pass over a document that yields both its fields and, for a `List`, the line each item
//! starts on. Parsing YAML dominates load time, so a document is parsed once on the happy path.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

/// What a document holds.
#[derive(Debug)]
pub enum TopLevel {
    /// A mapping: an object. `items` is kept apart, with lines, when it is a sequence.
    Object {
        /// Every field but a sequence-valued `items`.
        fields: Map<String, Value>,
        /// `items`, when it is a sequence.
        items: Option<Vec<Spanned<Value>>>,
    },
    /// `null` or an empty document.
    Null,
    /// A scalar or a sequence: not a Kubernetes object.
    Other,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut fields = Map::new();
        let mut items = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                match map.next_value::<ItemsField>()? {
                    ItemsField::Seq(list) => items = Some(list),
                    ItemsField::Other(v) => {
                        fields.insert(key, v);
                    }
                }
            } else {
                let value: Value = map.next_value()?;
                fields.insert(key, value);
            }
        }
        Ok(TopLevel::Object { fields, items })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other)
    }

    fn visit_unit<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Null)
    }

    fn visit_none<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<TopLevel, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }

    fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other)
    }
}

/// The value of an `items` key: a sequence (kept with each element's position) or anything else.
enum ItemsField {
    Seq(Vec<Spanned<Value>>),
    Other(Value),
}

impl<'de> Deserialize<'de> for ItemsField {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemsVisitor)
    }
}

struct ItemsVisitor;

impl<'de> Visitor<'de> for ItemsVisitor {
    type Value = ItemsField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ItemsField, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(item);
        }
        Ok(ItemsField::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ItemsField, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(ItemsField::Other)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<ItemsField, D::Error> {
        d.deserialize_any(ItemsVisitor)
    }

    fn visit_unit<E>(self) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::Null))
    }

    fn visit_none<E>(self) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<ItemsField, E> {
        Ok(ItemsField::Other(Value::from(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> TopLevel {
        crate::yaml::parse::<Option<TopLevel>>(text)
            .unwrap()
            .unwrap_or(TopLevel::Null)
    }

    #[test]
    fn list_items_keep_their_lines() {
        let TopLevel::Object { fields, items } = parse("kind: List\nitems:\n- a: 1\n\n- b: [2]\n")
        else {
            panic!("not an object");
        };
        assert_eq!(fields.get("kind"), Some(&Value::from("List")));
        assert!(!fields.contains_key("items"));
        let items = items.unwrap();
        let lines: Vec<u64> = items.iter().map(|i| i.referenced.line()).collect();
        assert_eq!(lines, [3, 5]);
        assert_eq!(items[1].value, serde_json::json!({"b": [2]}));
    }

    #[test]
    fn items_that_are_not_a_sequence_stay_fields() {
        let TopLevel::Object { fields, items } = parse("kind: Thing\nitems: {a: 1}\n") else {
            panic!("not an object");
        };
        assert!(items.is_none());
        assert_eq!(fields.get("items"), Some(&serde_json::json!({"a": 1})));
        let TopLevel::Object { fields, .. } = parse("items: 3\n") else {
            panic!("not an object");
        };
        assert_eq!(fields.get("items"), Some(&Value::from(3)));
    }

    #[test]
    fn non_objects() {
        assert!(matches!(parse("just text\n"), TopLevel::Other));
        assert!(matches!(parse("- a\n- b\n"), TopLevel::Other));
        assert!(matches!(parse("42\n"), TopLevel::Other));
        assert!(matches!(parse("null\n"), TopLevel::Null));
        assert!(matches!(parse("# nothing\n"), TopLevel::Null));
    }
}
