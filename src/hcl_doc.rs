//! HCL text as a JSON document, the one shape every HCL reader of nomadlet (ACL policies,
//! agent config) works on: attributes become keys, each block is appended to a list under its
//! identifier, and a labelled block becomes `{label: body}`.

use serde_json::{Map, Value};

/// A parse error with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for HclError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "At {}:{}: {}", self.line, self.column, self.message)
    }
}

/// Parse HCL `text` into its JSON document.
pub fn parse(text: &str) -> Result<Value, HclError> {
    let body = hcl::parse(text).map_err(|e| match e {
        hcl::Error::Parse(p) => HclError {
            line: p.location().line(),
            column: p.location().column(),
            message: p.message().to_string(),
        },
        other => HclError {
            line: 0,
            column: 0,
            message: other.to_string(),
        },
    })?;
    Ok(body_to_json(&body))
}

/// Convert an HCL body to the JSON form described in the module docs.
fn body_to_json(body: &hcl::Body) -> Value {
    let mut obj = Map::new();
    for attr in body.attributes() {
        let v = serde_json::to_value(attr.expr()).unwrap_or(Value::Null);
        obj.insert(attr.key().to_string(), v);
    }
    for block in body.blocks() {
        let mut inner = body_to_json(block.body());
        for label in block.labels().iter().rev() {
            let mut m = Map::new();
            m.insert(label.as_str().to_string(), inner);
            inner = Value::Object(m);
        }
        let slot = obj
            .entry(block.identifier().to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = slot {
            list.push(inner);
        } else {
            *slot = Value::Array(vec![slot.clone(), inner]);
        }
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_lists_and_labels_nest() {
        let v = parse("a = 1\nplugin \"raw_exec\" {\n  config { enabled = true }\n}\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "plugin": [{"raw_exec": {"config": [{"enabled": true}]}}]})
        );
    }

    #[test]
    fn errors_carry_their_place() {
        let e = parse("a = 1\nb = = 2\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 5), "{e}");
    }
}
