//! HuJSON: JSON with `//` and `/* */` comments and trailing commas, the dialect
//! Headscale and Tailscale read policies in.
//!
//! Comments and trailing commas are blanked out with spaces (newlines kept), so the
//! text keeps its shape and serde_json's line and column point at the user's text.
//! Duplicate object keys are an error, as in Headscale (`duplicate object member
//! name`): serde_json would silently keep the last one and hide the mistake.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a text is not HuJSON. `line` and `column` are 1-based; `column` counts
/// characters, not bytes.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ParseError {
    /// Stable PascalCase name for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        "PolicySyntaxError"
    }
}

/// Parses HuJSON text into a JSON value.
pub fn parse(text: &str) -> Result<Value, ParseError> {
    let standard = standardize(text)?;
    let mut de = serde_json::Deserializer::from_slice(&standard);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| from_serde(text, &e))?;
    de.end().map_err(|e| from_serde(text, &e))?;
    Ok(value)
}

/// Scanner state while blanking comments.
#[derive(Clone, Copy, PartialEq)]
enum State {
    Code,
    String,
    StringEscape,
    LineComment,
    BlockComment,
}

/// The same bytes with comments and trailing commas replaced by spaces. Newlines
/// inside block comments stay, so line numbers do not move.
fn standardize(text: &str) -> Result<Vec<u8>, ParseError> {
    let mut out = text.as_bytes().to_vec();
    let mut state = State::Code;
    // Where the current block comment started, for the "unterminated" error.
    let mut comment_start = 0;
    // A comma that is trailing if the next significant byte closes its container,
    // with the significant byte before it: `[,]`, `{,}` and `[1,,]` stay errors.
    let mut pending_comma: Option<(usize, u8)> = None;
    let mut last_significant: u8 = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match state {
            State::String => match b {
                b'\\' => state = State::StringEscape,
                b'"' => state = State::Code,
                _ => {}
            },
            State::StringEscape => state = State::String,
            State::LineComment => {
                if b == b'\n' {
                    state = State::Code;
                } else {
                    out[i] = b' ';
                }
            }
            State::BlockComment => {
                if b == b'*' && bytes.get(i + 1) == Some(&b'/') {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    i += 1;
                    state = State::Code;
                } else if b != b'\n' && b != b'\r' {
                    out[i] = b' ';
                }
            }
            State::Code => match b {
                b'/' if bytes.get(i + 1) == Some(&b'/') => {
                    out[i] = b' ';
                    state = State::LineComment;
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    comment_start = i;
                    i += 1;
                    state = State::BlockComment;
                }
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => {
                    if let Some((comma, before)) = pending_comma.take()
                        && (b == b'}' || b == b']')
                        && !matches!(before, b'[' | b'{' | b',')
                    {
                        out[comma] = b' ';
                    }
                    if b == b',' {
                        pending_comma = Some((i, last_significant));
                    }
                    last_significant = b;
                    if b == b'"' {
                        state = State::String;
                    }
                }
            },
        }
        i += 1;
    }
    if state == State::BlockComment {
        let (line, column) = position_of(text, comment_start);
        return Err(ParseError {
            line,
            column,
            message: "unterminated /* comment".to_string(),
        });
    }
    Ok(out)
}

/// 1-based line and character column of a byte offset.
fn position_of(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Converts serde_json's byte column into a character column of the original text
/// and drops the " at line L column C" suffix from its message.
fn from_serde(text: &str, e: &serde_json::Error) -> ParseError {
    let (line, byte_column) = (e.line(), e.column());
    let mut message = e.to_string();
    if let Some(stripped) = message.strip_suffix(&format!(" at line {line} column {byte_column}")) {
        message = stripped.to_string();
    }
    let lines: Vec<&str> = text.split('\n').collect();
    // Column 0 means serde_json had just consumed a newline (a raw newline inside a
    // string, or the end of the text): the mistake is at the end of the line before.
    if byte_column == 0 && line > 1 {
        let previous = lines.get(line - 2).copied().unwrap_or("");
        return ParseError {
            line: line - 1,
            column: previous.trim_end_matches('\r').chars().count() + 1,
            message,
        };
    }
    let line_text = lines.get(line.saturating_sub(1)).copied().unwrap_or("");
    // serde_json's column counts the bytes consumed on the line, the offending one
    // included; clamp to a char boundary in case it points inside a character.
    let mut end = byte_column.min(line_text.len());
    while !line_text.is_char_boundary(end) {
        end -= 1;
    }
    ParseError {
        line: line.max(1),
        column: line_text[..end].chars().count().max(1),
        message,
    }
}

/// Deserializes any JSON value, refusing duplicate object keys.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_hujson() {
        let cases: &[(&str, &str, Value)] = &[
            ("plain json", r#"{"a": [1, 2]}"#, json!({"a": [1, 2]})),
            (
                "line comment",
                "{\n  // note\n  \"a\": 1 // end\n}",
                json!({"a": 1}),
            ),
            ("block comment", "{ /* x\n y */ \"a\": 1 }", json!({"a": 1})),
            ("comment at end of text", "{\"a\": 1}\n// bye", json!({"a": 1})),
            ("trailing comma in object", r#"{"a": 1,}"#, json!({"a": 1})),
            (
                "trailing comma in array",
                r#"{"a": [1, 2,]}"#,
                json!({"a": [1, 2]}),
            ),
            (
                "trailing comma before a comment",
                "{\"a\": [1, // one\n /* two */ ],\n}",
                json!({"a": [1]}),
            ),
            (
                "// inside a string",
                r#"{"url": "http://x/*y*/"}"#,
                json!({"url": "http://x/*y*/"}),
            ),
            (
                "escaped quote",
                r#"{"a": "say \"hi\" // no"}"#,
                json!({"a": "say \"hi\" // no"}),
            ),
            (
                "escaped backslash at end",
                r#"{"a": "c:\\", "b": 1}"#,
                json!({"a": "c:\\", "b": 1}),
            ),
            ("comma inside a string", r#"{"a": "x,]"}"#, json!({"a": "x,]"})),
            ("non-ASCII in comment", "{ // grüße ✓\n\"a\": 1}", json!({"a": 1})),
            (
                "empty containers",
                r#"{"a": [], "b": {}}"#,
                json!({"a": [], "b": {}}),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(parse(text).as_ref(), Ok(want), "{name}");
        }
    }

    #[test]
    fn reports_line_and_column() {
        // (name, text, line, column, message contains)
        let cases: &[(&str, &str, usize, usize, &str)] = &[
            (
                "missing comma",
                "{\n  \"a\": 1\n  \"b\": 2\n}",
                3,
                3,
                "expected `,` or `}`",
            ),
            (
                "unterminated string",
                "{\"a\": \"oops",
                1,
                11,
                "EOF while parsing a string",
            ),
            (
                "newline inside a string",
                "{\n  \"a\": \"oops\n}",
                2,
                13,
                "control character",
            ),
            (
                "unterminated block comment",
                "{\n  \"a\": 1 /* never\n}",
                2,
                10,
                "unterminated /* comment",
            ),
            ("two trailing commas", "[1,,]", 1, 4, "expected value"),
            ("lone comma in array", "[,]", 1, 2, "expected value"),
            ("lone comma in object", "{,}", 1, 2, "key must be a string"),
            (
                "duplicate key",
                "{\n  \"acls\": [],\n  \"acls\": []\n}",
                3,
                8,
                "duplicate key \"acls\"",
            ),
            (
                "duplicate nested key",
                r#"{"a": {"x": 1, "x": 2}}"#,
                1,
                18,
                "duplicate key \"x\"",
            ),
            ("empty text", "", 1, 1, "EOF while parsing a value"),
            (
                "only a comment",
                "// nothing here\n",
                1,
                16,
                "EOF while parsing a value",
            ),
            ("trailing garbage", "{} x", 1, 4, "trailing characters"),
            ("single slash", r#"{"a": 1 / 2}"#, 1, 9, "expected `,` or `}`"),
            (
                "column counts characters",
                "{\"ü\": 1 2}",
                1,
                9,
                "expected `,` or `}`",
            ),
            (
                "error after a comment keeps columns",
                "{ /* c */ \"a\" 1}",
                1,
                15,
                "expected `:`",
            ),
        ];
        for (name, text, line, column, message) in cases {
            let err = parse(text).expect_err(name);
            assert_eq!((err.line, err.column), (*line, *column), "{name}: {err}");
            assert!(err.message.contains(message), "{name}: {err}");
            assert!(!err.message.contains(" at line "), "{name}: {err}");
        }
    }

    #[test]
    fn error_display_names_the_position() {
        let err = parse("{\n  \"a\": }").unwrap_err();
        assert_eq!(err.to_string(), format!("line 2, column 8: {}", err.message));
        assert_eq!(err.reason(), "PolicySyntaxError");
    }
}
