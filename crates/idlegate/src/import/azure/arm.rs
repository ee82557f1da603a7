//! Template expressions: `[parameters('x')]` and `[variables('x')]` resolved to plain values,
//! references (`resourceId(...)`, ids) to the name of what they point to.

use super::super::ImportError;
use super::HINT_DEPLOYED;
use serde_json::Value;

/// A template's parameters and variables, for `[parameters('x')]` and `[variables('x')]`.
pub(super) struct Arm<'a> {
    parameters: Option<&'a Value>,
    variables: Option<&'a Value>,
}

impl<'a> Arm<'a> {
    pub(super) fn of(input: &'a Value) -> Arm<'a> {
        Arm {
            parameters: input.get("parameters"),
            variables: input.get("variables"),
        }
    }

    /// `v` with template expressions resolved, at `path`.
    pub(super) fn resolve(&self, v: &'a Value, path: &str) -> Result<Value, ImportError> {
        match v.as_str() {
            Some(s) if is_expression(s) => self.expression(&s[1..s.len() - 1], path, 0),
            _ => Ok(v.clone()),
        }
    }

    pub(super) fn expression(&self, e: &str, path: &str, depth: u32) -> Result<Value, ImportError> {
        let e = e.trim();
        let cannot = || {
            ImportError::at(
                path,
                format!("the template expression [{e}] cannot be resolved here (idlegate resolves parameters('…') with a defaultValue and variables('…') with a plain value)"),
            )
            .with_hint(HINT_DEPLOYED)
        };
        if depth > 8 {
            return Err(cannot());
        }
        let table = if let Some(n) = call_arg(e, "parameters") {
            self.parameters
                .and_then(|p| p.get(n))
                .and_then(|p| p.get("defaultValue"))
        } else if let Some(n) = call_arg(e, "variables") {
            self.variables.and_then(|p| p.get(n))
        } else {
            return Err(cannot());
        };
        match table {
            Some(Value::String(s)) if is_expression(s) => {
                self.expression(&s[1..s.len() - 1], path, depth + 1)
            }
            Some(v) => Ok(v.clone()),
            None => Err(cannot()),
        }
    }

    /// The name a reference names: the last segment of an id, or of a `resourceId(...)` /
    /// `concat(...)` expression's last argument.
    pub(super) fn reference(&self, v: &Value, path: &str) -> Result<String, ImportError> {
        let s = v
            .as_str()
            .ok_or_else(|| ImportError::at(path, "expected a resource id (a string)"))?;
        if !is_expression(s) {
            return Ok(last_segment(s));
        }
        let inner = &s[1..s.len() - 1];
        let last = last_argument(inner).unwrap_or(inner).trim();
        if let Some(lit) = last.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
            return Ok(last_segment(lit));
        }
        match self.expression(last, path, 0)? {
            Value::String(s) => Ok(last_segment(&s)),
            _ => Err(
                ImportError::at(path, format!("[{inner}] does not name a resource"))
                    .with_hint(HINT_DEPLOYED),
            ),
        }
    }
}

pub(super) fn is_expression(s: &str) -> bool {
    s.starts_with('[') && !s.starts_with("[[") && s.ends_with(']')
}

/// `x` of `f('x')`, when `e` is exactly that call.
fn call_arg<'e>(e: &'e str, f: &str) -> Option<&'e str> {
    let rest = e
        .strip_prefix(f)?
        .trim_start()
        .strip_prefix("(")?
        .strip_suffix(")")?
        .trim();
    rest.strip_prefix('\'')?.strip_suffix('\'')
}

/// The last top-level argument of a call `f(a, b, c)`.
fn last_argument(e: &str) -> Option<&str> {
    let open = e.find('(')?;
    let body = e.get(open + 1..e.len().checked_sub(1)?)?;
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in body.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => start = i + 1,
            _ => {}
        }
    }
    Some(&body[start..])
}

pub(super) fn last_segment(s: &str) -> String {
    s.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(s)
        .to_string()
}
