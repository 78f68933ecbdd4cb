//! A request's `input`, as JSON gave it, checked into texts: a non-empty string or a non-empty
//! array of at most the tenant's `max_inputs` non-empty strings; on OpenAI's route also token
//! ids, as OpenAI takes them: one array of integers (one input) or an array of such arrays.

use serde_json::Value;

use super::EmbedError;

/// A request's inputs: texts, or token ids still to be decoded (see
/// `models::engine::token_ids`).
#[derive(Debug, PartialEq)]
pub(super) enum Inputs {
    Texts(Vec<String>),
    TokenIds(Vec<Vec<u32>>),
}

impl Inputs {
    pub(super) fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::TokenIds(t) => t.len(),
        }
    }
}

/// Texts as [`parse_input`] takes them, or, when `token_ids`, OpenAI's token-id forms: `[int]`
/// (one input) or `[[int]]` (one per array), each id in 0..=u32::MAX, no array empty.
pub(super) fn parse_inputs(
    input: Option<&Value>,
    max_inputs: usize,
    token_ids: bool,
) -> Result<Inputs, EmbedError> {
    match input {
        Some(Value::Array(items)) if token_ids => match token_ids_of(items, "input", max_inputs) {
            Some(ids) => ids.map(Inputs::TokenIds),
            None => parse_input(input, max_inputs).map(Inputs::Texts),
        },
        _ => parse_input(input, max_inputs).map(Inputs::Texts),
    }
}

/// `field`'s token ids in OpenAI's forms: `[int]` (one input) or `[[int]]` (at most
/// `max_inputs`), every array non-empty, each id in 0..=u32::MAX; `None` when `items` is in
/// neither form (no number or array first). Errors name `field[i][j]`.
pub(super) fn token_ids_of(
    items: &[Value],
    field: &'static str,
    max_inputs: usize,
) -> Option<Result<Vec<Vec<u32>>, EmbedError>> {
    let parsed = match items.first()? {
        Value::Number(_) => ids_of(items, field, field).map(|ids| vec![ids]),
        Value::Array(_) if items.len() > max_inputs => Err(too_many(items.len(), max_inputs, field)),
        Value::Array(_) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Array(ids) => ids_of(ids, field, &format!("{field}[{i}]")),
                other => Err(EmbedError::invalid(
                    field,
                    format!(
                        "{field}[{i}] must be an array of token ids like {field}[0], got {}",
                        json_kind(other)
                    ),
                )),
            })
            .collect(),
        _ => return None,
    };
    Some(parsed)
}

fn too_many(count: usize, max_inputs: usize, field: &'static str) -> EmbedError {
    EmbedError::TooMany {
        message: format!("{field} has {count} items; this server accepts at most {max_inputs} per request"),
        param: field,
    }
}

/// One input's token ids; `at` names it in errors, `field` is the request field.
fn ids_of(items: &[Value], field: &'static str, at: &str) -> Result<Vec<u32>, EmbedError> {
    if items.is_empty() {
        return Err(EmbedError::invalid(field, format!("{at} is empty")));
    }
    items
        .iter()
        .enumerate()
        .map(|(j, item)| {
            item.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                let got = match item {
                    Value::Number(n) => n.to_string(),
                    other => json_kind(other).to_owned(),
                };
                EmbedError::invalid(
                    field,
                    format!("{at}[{j}] must be a token id (an integer from 0 to {}), got {got}", u32::MAX),
                )
            })
        })
        .collect()
}

/// `input` is a non-empty string or a non-empty array of at most `max_inputs` non-empty strings.
pub(super) fn parse_input(input: Option<&Value>, max_inputs: usize) -> Result<Vec<String>, EmbedError> {
    let texts = match input {
        None | Some(Value::Null) => return Err(EmbedError::invalid("input", "input is required")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(EmbedError::invalid("input", "input must not be an empty array"));
            }
            if items.len() > max_inputs {
                return Err(too_many(items.len(), max_inputs, "input"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(EmbedError::invalid(
                        "input",
                        format!("input[{i}] must be a string, got {}", json_kind(other)),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(EmbedError::invalid(
                "input",
                format!("input must be a string or an array of strings, got {}", json_kind(other)),
            ));
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        let at = if texts.len() == 1 { "input".to_owned() } else { format!("input[{i}]") };
        return Err(EmbedError::invalid("input", format!("{at} is empty")));
    }
    Ok(texts)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(input: Value) -> EmbedError {
        parse_input(Some(&input), 2).unwrap_err()
    }

    #[test]
    fn input_is_a_non_empty_string_or_array_of_them() {
        assert_eq!(parse_input(Some(&json!("hi")), 2).unwrap(), vec!["hi"]);
        assert_eq!(parse_input(Some(&json!(["a", "b"])), 2).unwrap(), vec!["a", "b"]);
        for bad in [json!([]), json!(""), json!(["a", "  "]), json!(["a", 3]), json!(7)] {
            assert!(matches!(refused(bad.clone()), EmbedError::Invalid { param: "input", .. }), "{bad}");
        }
        assert!(matches!(refused(json!(["a", "b", "c"])), EmbedError::TooMany { .. }));
        assert!(matches!(parse_input(None, 2), Err(EmbedError::Invalid { .. })));
    }

    #[test]
    fn token_ids_are_one_array_of_integers_or_arrays_of_them() {
        let ids = |v: Value| parse_inputs(Some(&v), 2, true);
        assert_eq!(ids(json!([1, 2, 3])).unwrap(), Inputs::TokenIds(vec![vec![1, 2, 3]]));
        assert_eq!(ids(json!([[1], [2, 3]])).unwrap(), Inputs::TokenIds(vec![vec![1], vec![2, 3]]));
        assert_eq!(ids(json!(["a"])).unwrap(), Inputs::Texts(vec!["a".into()]));
        let message = |v: Value| match ids(v).unwrap_err() {
            EmbedError::Invalid { message, param: "input" } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            message(json!([1, -2])),
            "input[1] must be a token id (an integer from 0 to 4294967295), got -2"
        );
        assert_eq!(
            message(json!([[1], [2, 1.5]])),
            "input[1][1] must be a token id (an integer from 0 to 4294967295), got 1.5"
        );
        assert_eq!(message(json!([[1], []])), "input[1] is empty");
        assert_eq!(
            message(json!([[1], "a"])),
            "input[1] must be an array of token ids like input[0], got a string"
        );
        assert_eq!(
            message(json!([1, "a"])),
            "input[1] must be a token id (an integer from 0 to 4294967295), got a string"
        );
        assert_eq!(
            message(json!([4294967296u64])),
            "input[0] must be a token id (an integer from 0 to 4294967295), got 4294967296"
        );
        assert!(matches!(ids(json!([[1], [2], [3]])), Err(EmbedError::TooMany { .. })));
        // Where token ids are not taken, the text rules answer.
        assert!(matches!(parse_inputs(Some(&json!([1])), 2, false), Err(EmbedError::Invalid { .. })));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,4}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Any JSON is either refused with a named reason or accepted as 1..=max non-empty
            /// strings, in order.
            #[test]
            fn any_json_input_is_refused_or_gives_non_empty_texts(input in json_value(), max in 1usize..5) {
                match parse_input(Some(&input), max) {
                    Ok(texts) => {
                        prop_assert!(!texts.is_empty() && texts.len() <= max);
                        prop_assert!(texts.iter().all(|t| !t.trim().is_empty()));
                        let expected = match &input {
                            Value::String(s) => vec![s.clone()],
                            Value::Array(items) => items.iter().map(|i| i.as_str().unwrap().to_owned()).collect(),
                            other => return Err(TestCaseError::fail(format!("accepted {other}"))),
                        };
                        prop_assert_eq!(texts, expected);
                    }
                    Err(EmbedError::Invalid { param, .. }) => prop_assert_eq!(param, "input"),
                    Err(EmbedError::TooMany { .. }) => prop_assert!(input.as_array().is_some_and(|a| a.len() > max)),
                    Err(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                }
            }
        }
    }
}
