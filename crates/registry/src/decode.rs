//! The registration body as Consul decodes it, into a [`ServiceRegistration`].
//!
//! Consul decodes with Go's `encoding/json`, whose field names match case-insensitively, and its
//! register endpoint also takes the snake_case spelling of the agent's configuration files
//! (`deregister_critical_service_after`, `grpc_use_tls`). Both are served by comparing keys with
//! case and underscores removed, at the levels Consul owns (the service, its checks, its weights),
//! never inside `Meta` or `Header`, whose keys are the user's. Durations are Go duration strings
//! or numbers of nanoseconds (`CheckType.UnmarshalJSON`). Every failure is Consul's
//! `Request decode failed: …` with a reason worded like Go's.
//!
//! Stricter than Consul, on purpose: a duration that is neither a string nor a number is refused
//! (Go silently reads it as zero), and so is a port outside 0–65535 (in [`crate::domain`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::domain::{CheckRegistration, ServiceRegistration, Weights};
use crate::duration;

/// A body Consul could not decode; the message is what follows `Request decode failed: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Request decode failed: {0}")]
pub struct DecodeError(pub String);

/// Decodes a `PUT /v1/agent/service/register` body.
///
/// # Errors
/// [`DecodeError`] for a body that is empty, not JSON, or has a field of the wrong type.
pub fn service_registration(body: &[u8]) -> Result<ServiceRegistration, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError("EOF".into()));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|error| DecodeError(error.to_string()))?;
    let mut fields = Fields::new(value, "structs.ServiceDefinition", "ServiceDefinition")?;
    let mut checks = Vec::new();
    if let Some(check) = fields.take("Check") {
        checks.extend(check_registration(check, "ServiceDefinition.Check")?);
    }
    match fields.take("Checks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                checks.extend(check_registration(item, "ServiceDefinition.Checks")?);
            }
        }
        Some(other) => return Err(fields.mismatch(&other, "Checks", "structs.CheckTypes")),
    }
    let weights = match fields.take("Weights") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let mut weights = Fields::new(value, "structs.Weights", "ServiceDefinition.Weights")?;
            Some(Weights {
                passing: weights.int("Passing")?,
                warning: weights.int("Warning")?,
            })
        }
    };
    Ok(ServiceRegistration {
        id: fields.string("ID")?,
        name: fields.string("Name")?,
        tags: fields.strings("Tags")?,
        address: fields.string("Address")?,
        port: fields.int("Port")?,
        meta: fields.string_map("Meta")?,
        weights,
        enable_tag_override: fields.bool("EnableTagOverride")?,
        kind: fields.string("Kind")?,
        checks,
    })
}

/// One check object; `None` for `null` and for an empty check, which Consul ignores.
fn check_registration(value: Value, owner: &str) -> Result<Option<CheckRegistration>, DecodeError> {
    if value.is_null() {
        return Ok(None);
    }
    let mut fields = Fields::new(value, "structs.CheckType", owner)?;
    let mut unsupported = Vec::new();
    for (key, name) in [
        ("Args", "Args"),
        ("ScriptArgs", "Args"),
        ("Script", "Args"),
        ("DockerContainerID", "DockerContainerID"),
        ("UDP", "UDP"),
        ("H2PING", "H2PING"),
        ("AliasNode", "AliasNode"),
        ("AliasService", "AliasService"),
        ("OSService", "OSService"),
    ] {
        if fields.take(key).is_some_and(|value| is_set(&value)) && !unsupported.contains(&name) {
            unsupported.push(name);
        }
    }
    let check = CheckRegistration {
        check_id: fields.string("CheckID")?,
        name: fields.string("Name")?,
        status: fields.string("Status")?,
        notes: fields.string("Notes")?,
        grpc: fields.string("GRPC")?,
        grpc_use_tls: fields.bool("GRPCUseTLS")?,
        http: fields.string("HTTP")?,
        method: fields.string("Method")?,
        header: fields.header("Header")?,
        body: fields.string("Body")?,
        tls_skip_verify: fields.bool("TLSSkipVerify")?,
        disable_redirects: fields.bool("DisableRedirects")?,
        tcp: fields.string("TCP")?,
        interval: fields.duration("Interval")?,
        timeout: fields.duration("Timeout")?,
        ttl: fields.duration("TTL")?,
        deregister_critical_service_after: fields.duration("DeregisterCriticalServiceAfter")?,
        output_max_size: fields.int("OutputMaxSize")?,
        failures_before_warning: fields.int("FailuresBeforeWarning")?,
        failures_before_critical: fields.int("FailuresBeforeCritical")?,
        unsupported,
    };
    Ok((check != CheckRegistration::default()).then_some(check))
}

/// Whether a field of an unsupported check type is actually set (Consul ignores zero values).
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Bool(flag) => *flag,
        _ => true,
    }
}

/// Go's name for a JSON value's kind, as in `cannot unmarshal string into …`.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The members of one JSON object, found by Go's case-insensitive rule (and without underscores).
struct Fields {
    members: BTreeMap<String, Value>,
    /// The Go struct path for messages (`ServiceDefinition.Check`).
    owner: String,
}

impl Fields {
    fn new(value: Value, go_type: &str, owner: &str) -> Result<Self, DecodeError> {
        let Value::Object(object) = value else {
            return Err(DecodeError(format!(
                "json: cannot unmarshal {} into Go value of type {go_type}",
                json_kind(&value)
            )));
        };
        Ok(Self {
            members: normalize(object),
            owner: owner.to_owned(),
        })
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        self.members.remove(&fold(field))
    }

    fn mismatch(&self, value: &Value, field: &str, go_type: &str) -> DecodeError {
        DecodeError(format!(
            "json: cannot unmarshal {} into Go struct field {}.{field} of type {go_type}",
            json_kind(value),
            self.owner
        ))
    }

    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(text)) => Ok(text),
            Some(other) => Err(self.mismatch(&other, field, "string")),
        }
    }

    fn bool(&mut self, field: &str) -> Result<bool, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(flag)) => Ok(flag),
            Some(other) => Err(self.mismatch(&other, field, "bool")),
        }
    }

    fn int(&mut self, field: &str) -> Result<i64, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(number)) => number.as_i64().ok_or_else(|| {
                DecodeError(format!(
                    "json: cannot unmarshal number {number} into Go struct field {}.{field} of type int",
                    self.owner
                ))
            }),
            Some(other) => Err(self.mismatch(&other, field, "int")),
        }
    }

    fn strings(&mut self, field: &str) -> Result<Vec<String>, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    Value::Null => Ok(String::new()),
                    other => Err(self.mismatch(&other, field, "string")),
                })
                .collect(),
            Some(other) => Err(self.mismatch(&other, field, "[]string")),
        }
    }

    fn string_map(&mut self, field: &str) -> Result<BTreeMap<String, String>, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(object)) => object
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key, text)),
                    Value::Null => Ok((key, String::new())),
                    other => Err(self.mismatch(&other, field, "string")),
                })
                .collect(),
            Some(other) => Err(self.mismatch(&other, field, "map[string]string")),
        }
    }

    fn header(&mut self, field: &str) -> Result<BTreeMap<String, Vec<String>>, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(object)) => {
                let mut header = BTreeMap::new();
                for (name, values) in object {
                    let values = match values {
                        Value::Null => Vec::new(),
                        Value::Array(items) => items
                            .into_iter()
                            .map(|item| match item {
                                Value::String(text) => Ok(text),
                                other => Err(self.mismatch(&other, field, "string")),
                            })
                            .collect::<Result<_, _>>()?,
                        other => return Err(self.mismatch(&other, field, "[]string")),
                    };
                    header.insert(name, values);
                }
                Ok(header)
            }
            Some(other) => Err(self.mismatch(&other, field, "map[string][]string")),
        }
    }

    /// Signed nanoseconds, from a Go duration string or a number of nanoseconds.
    fn duration(&mut self, field: &str) -> Result<i64, DecodeError> {
        match self.take(field) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::String(text)) => {
                duration::parse(&text).map_err(|error| DecodeError(error.to_string()))
            }
            // Go converts the float64 to a Duration; saturate instead of wrapping.
            Some(Value::Number(number)) => Ok(number.as_f64().unwrap_or_default() as i64),
            Some(other) => Err(self.mismatch(&other, field, "time.Duration")),
        }
    }
}

/// A key as compared: lowercase, without underscores.
fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn normalize(object: Map<String, Value>) -> BTreeMap<String, Value> {
    object
        .into_iter()
        .map(|(key, value)| (fold(&key), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_match_as_go_and_the_agent_config_match_them() -> Result<(), DecodeError> {
        let body = br#"{"id":"a","NAME":"web","port":80,"meta":{"Version_X":"1"},
            "check":{"grpc":"127.0.0.1:1","grpc_use_tls":true,"interval":"1s",
                     "deregister_critical_service_after":"90m"}}"#;
        let decoded = service_registration(body)?;
        assert_eq!(decoded.id, "a");
        assert_eq!(decoded.name, "web");
        assert_eq!(decoded.port, 80);
        assert_eq!(decoded.meta.get("Version_X").map(String::as_str), Some("1"));
        let check = &decoded.checks[0];
        assert!(check.grpc_use_tls);
        assert_eq!(check.interval, 1_000_000_000);
        assert_eq!(check.deregister_critical_service_after, 5_400_000_000_000);
        Ok(())
    }

    #[test]
    fn empty_checks_are_ignored_as_consul_ignores_them() -> Result<(), DecodeError> {
        let decoded = service_registration(br#"{"Name":"web","Check":{},"Checks":[null,{}]}"#)?;
        assert!(decoded.checks.is_empty());
        Ok(())
    }

    #[test]
    fn decode_failures_read_like_gos() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "Request decode failed: EOF"),
            (b"  \n", "Request decode failed: EOF"),
            (
                b"[]",
                "Request decode failed: json: cannot unmarshal array into Go value of type structs.ServiceDefinition",
            ),
            (
                br#"{"Name":7}"#,
                "Request decode failed: json: cannot unmarshal number into Go struct field ServiceDefinition.Name of type string",
            ),
            (
                br#"{"Name":"w","Port":1.5}"#,
                "Request decode failed: json: cannot unmarshal number 1.5 into Go struct field ServiceDefinition.Port of type int",
            ),
            (
                br#"{"Name":"w","Check":{"TTL":"ten seconds"}}"#,
                "Request decode failed: time: invalid duration \"ten seconds\"",
            ),
            (
                br#"{"Name":"w","Meta":{"k":1}}"#,
                "Request decode failed: json: cannot unmarshal number into Go struct field ServiceDefinition.Meta of type string",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(
                service_registration(body)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(message.to_owned()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn unsupported_check_types_are_named() -> Result<(), DecodeError> {
        let decoded = service_registration(
            br#"{"Name":"w","Check":{"Args":["/bin/true"],"Interval":"10s"}}"#,
        )?;
        assert_eq!(decoded.checks[0].unsupported, vec!["Args"]);
        Ok(())
    }
}
