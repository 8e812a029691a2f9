//! An OpenFeature evaluation context read straight from a request's JSON
//! bytes (OFREP), without first building a `serde_json::Value` tree of the
//! whole body: strings without escapes are borrowed from the body, numbers
//! and booleans are kept as they are, and only what the context keeps
//! (the user id, the roles, the attributes) is copied out.
//!
//! It reads exactly as the body read whole into a `serde_json::Value` and
//! then through [`super::flagd::context_of_json`]: the same JSON is
//! accepted (every part of the body is parsed, with serde_json's depth
//! limit and number range), a field given twice counts once, with its last
//! value, and the fields are read in name order, so the same field is
//! named when several are bad. The rules themselves are
//! [`super::flagd`]'s, shared with the protobuf context.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The value of a request's `context`.
pub enum JsonContext<'de> {
    /// `null`.
    Null,
    /// An object: its fields in the order sent, names repeated if sent
    /// twice ([`fields_in_order`] makes them a JSON object's).
    Object(Vec<(Cow<'de, str>, JsonField<'de>)>),
    /// Anything else (not a context).
    Other,
}

/// A context field's value.
pub enum JsonField<'de> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json reads it.
    Number(serde_json::Number),
    /// A string, borrowed from the body when it has no escapes.
    String(Cow<'de, str>),
    /// A list.
    List(Vec<JsonField<'de>>),
    /// An object (read whole: readyd's rules never look inside one).
    Object(serde_json::Value),
}

impl JsonField<'_> {
    /// It as a `serde_json::Value`, as it was sent.
    pub fn into_value(self) -> serde_json::Value {
        match self {
            JsonField::Null => serde_json::Value::Null,
            JsonField::Bool(b) => serde_json::Value::Bool(b),
            JsonField::Number(n) => serde_json::Value::Number(n),
            JsonField::String(text) => serde_json::Value::String(text.into_owned()),
            JsonField::List(items) => {
                serde_json::Value::Array(items.into_iter().map(JsonField::into_value).collect())
            }
            JsonField::Object(object) => object,
        }
    }
}

/// `fields` as a JSON object holds them: one field per name, with the
/// value sent last, in name order.
pub fn fields_in_order<K: Ord, V>(mut fields: Vec<(K, V)>) -> Vec<(K, V)> {
    // Stable: fields of one name stay in the order sent.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    // `dedup_by` keeps the first of a run and drops the later ones: the
    // kept one takes each later value, so it ends with the last.
    fields.dedup_by(|later, kept| {
        if later.0 == kept.0 {
            std::mem::swap(&mut later.1, &mut kept.1);
            true
        } else {
            false
        }
    });
    fields
}

/// A text (an object's field name), borrowed when it has no escapes.
pub struct Text<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Any JSON value, parsed and checked as `serde_json::Value` would parse
/// it (depth limit, number range), then dropped. serde_json's own
/// `IgnoredAny` skips without those checks, which would accept bodies a
/// whole read refuses.
pub struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

/// Reads whatever it is given and keeps nothing.
struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skipped;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skipped, E> {
        Ok(Skipped)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skipped, A::Error> {
        while seq.next_element::<Skipped>()?.is_some() {}
        Ok(Skipped)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skipped, A::Error> {
        while map.next_entry::<Skipped, Skipped>()?.is_some() {}
        Ok(Skipped)
    }
}

impl<'de> Deserialize<'de> for JsonContext<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContextVisitor;
        impl<'de> Visitor<'de> for ContextVisitor {
            type Value = JsonContext<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(JsonContext::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some((Text(name), value)) = map.next_entry::<Text, JsonField>()? {
                    fields.push((name, value));
                }
                Ok(JsonContext::Object(fields))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(JsonContext::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(JsonContext::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(JsonContext::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(JsonContext::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(JsonContext::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                SkipVisitor.visit_seq(seq)?;
                Ok(JsonContext::Other)
            }
        }
        deserializer.deserialize_any(ContextVisitor)
    }
}

impl<'de> Deserialize<'de> for JsonField<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = JsonField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(JsonField::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(JsonField::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(JsonField::Number(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(JsonField::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                // As `serde_json::Value` reads it: a number that is not
                // finite is null (the parser never gives one).
                Ok(serde_json::Number::from_f64(n).map_or(JsonField::Null, JsonField::Number))
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(JsonField::String(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(JsonField::String(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(JsonField::String(Cow::Owned(text)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(JsonField::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // serde_json's own reading of an object, whatever it holds.
                serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(JsonField::Object)
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_sent_twice_keeps_its_last_value_and_fields_read_in_name_order() {
        let fields = vec![("b", 1), ("a", 2), ("b", 3), ("c", 4), ("b", 5), ("a", 6)];
        assert_eq!(fields_in_order(fields), vec![("a", 6), ("b", 5), ("c", 4)]);
        assert!(fields_in_order(Vec::<(&str, i32)>::new()).is_empty());
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_copied() {
        let body = br#"{"plain": "u1", "esc\u0061ped": "a\nb"}"#;
        let Ok(JsonContext::Object(fields)) = serde_json::from_slice::<JsonContext>(body) else {
            panic!("an object");
        };
        assert!(matches!(fields[0].0, Cow::Borrowed("plain")));
        assert!(matches!(
            fields[0].1,
            JsonField::String(Cow::Borrowed("u1"))
        ));
        assert!(matches!(&fields[1].0, Cow::Owned(name) if name == "escaped"));
        assert!(matches!(&fields[1].1, JsonField::String(Cow::Owned(text)) if text == "a\nb"));
    }
}
