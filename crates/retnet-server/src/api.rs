//! The OpenAI-compatible request bodies, their validation, and the chat template.

use retnet_model::SamplingParams;
use serde::Deserialize;
use serde_json::Value;

/// Most stop sequences per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most tokens one request may ask to generate.
pub const MAX_TOKENS_LIMIT: i64 = 1 << 20;

/// A bad request: the message and the parameter at fault.
#[derive(Debug)]
pub struct Invalid {
    /// One line.
    pub message: String,
    /// The parameter, if one is at fault.
    pub param: Option<&'static str>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        param: Some(param),
    }
}

/// The sampling and length fields shared by both endpoints (OpenAI's, plus `top_k`,
/// `repeat_penalty` and `session_id`).
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    /// The model id (`GET /v1/models`); optional.
    pub model: Option<String>,
    /// Tokens to generate (default 16).
    pub max_tokens: Option<Value>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<Value>,
    /// Softmax temperature, ≥ 0 (default 1; 0 is greedy).
    pub temperature: Option<Value>,
    /// Nucleus sampling, in (0, 1] (default 1).
    pub top_p: Option<Value>,
    /// Extension: sample from the k most likely tokens only (default 0: all).
    pub top_k: Option<Value>,
    /// Extension: penalty of the last 64 tokens, > 0 (default 1: off).
    pub repeat_penalty: Option<Value>,
    /// Seed of the sampler (default: drawn from the clock).
    pub seed: Option<Value>,
    /// A string or up to 4 strings that end the completion (not included in it).
    pub stop: Option<Value>,
    /// Server-sent events.
    pub stream: Option<Value>,
    /// Completions per prompt: only 1.
    pub n: Option<Value>,
    /// Extension: continue the session kept under this id (or start it), and keep its final
    /// state under it.
    pub session_id: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The prompt: one string (or a list holding one string).
    pub prompt: Option<Value>,
    /// Everything else.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Option<Value>,
    /// Everything else.
    #[serde(flatten)]
    pub common: Common,
}

/// A validated request.
#[derive(Debug)]
pub struct Checked {
    /// Sampling parameters.
    pub params: SamplingParams,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Whether to stream.
    pub stream: bool,
    /// A session id.
    pub session: Option<String>,
}

fn number(value: &Option<Value>, param: &'static str) -> Result<Option<f64>, Invalid> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(invalid(param, format!("`{param}` must be a finite number"))),
        },
        Some(_) => Err(invalid(param, format!("`{param}` must be a number"))),
    }
}

fn integer(value: &Option<Value>, param: &'static str) -> Result<Option<i64>, Invalid> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(param, format!("`{param}` must be an integer"))),
        Some(_) => Err(invalid(param, format!("`{param}` must be an integer"))),
    }
}

fn boolean(value: &Option<Value>, param: &'static str) -> Result<bool, Invalid> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(param, format!("`{param}` must be true or false"))),
    }
}

impl Common {
    /// Checks every field; `default_stop` applies when the request gives none.
    pub fn check(&self, default_stop: &[&str]) -> Result<Checked, Invalid> {
        let max_tokens = match integer(&self.max_tokens, "max_tokens")? {
            Some(m) => Some(m),
            None => integer(&self.max_completion_tokens, "max_completion_tokens")?,
        };
        let max_tokens = max_tokens.unwrap_or(16);
        if !(0..=MAX_TOKENS_LIMIT).contains(&max_tokens) {
            return Err(invalid(
                "max_tokens",
                format!("`max_tokens` must be in 0..={MAX_TOKENS_LIMIT}, got {max_tokens}"),
            ));
        }
        let temperature = number(&self.temperature, "temperature")?.unwrap_or(1.0);
        if temperature < 0.0 {
            return Err(invalid(
                "temperature",
                format!("`temperature` must be ≥ 0, got {temperature}"),
            ));
        }
        let top_p = number(&self.top_p, "top_p")?.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(invalid(
                "top_p",
                format!("`top_p` must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = integer(&self.top_k, "top_k")?.unwrap_or(0);
        if top_k < 0 {
            return Err(invalid(
                "top_k",
                format!("`top_k` must be ≥ 0, got {top_k}"),
            ));
        }
        let repeat_penalty = number(&self.repeat_penalty, "repeat_penalty")?.unwrap_or(1.0);
        if repeat_penalty <= 0.0 {
            return Err(invalid(
                "repeat_penalty",
                format!("`repeat_penalty` must be > 0, got {repeat_penalty}"),
            ));
        }
        let seed = match &self.seed {
            None | Some(Value::Null) => clock_seed(),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u,
                // A negative seed is a seed too (OpenAI's is a signed 64-bit integer).
                (None, Some(i)) => i as u64,
                _ => return Err(invalid("seed", "`seed` must be an integer")),
            },
            Some(_) => return Err(invalid("seed", "`seed` must be an integer")),
        };
        if let Some(n) = integer(&self.n, "n")? {
            if n != 1 {
                return Err(invalid("n", format!("only `n` = 1 is supported, got {n}")));
            }
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => default_stop.iter().map(|s| s.to_string()).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(invalid(
                        "stop",
                        "`stop` must be a string or a list of strings",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(invalid(
                    "stop",
                    "`stop` must be a string or a list of strings",
                ));
            }
        };
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(invalid(
                "stop",
                format!("`stop` takes at most {MAX_STOP} non-empty strings"),
            ));
        }
        let session = match &self.session_id {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if valid_session_id(s) => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "session_id",
                    "`session_id` must be 1 to 128 characters of A-Z a-z 0-9 - _ .",
                ))
            }
        };
        let params = SamplingParams {
            temperature: temperature as f32,
            top_k: top_k as usize,
            top_p: top_p as f32,
            repeat_penalty: repeat_penalty as f32,
            seed,
        };
        params.validate().map_err(|m| Invalid {
            message: m,
            param: None,
        })?;
        Ok(Checked {
            params,
            max_tokens: max_tokens as usize,
            stop,
            stream: boolean(&self.stream, "stream")?,
            session,
        })
    }
}

/// Session ids: short, and safe in a URL path.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl CompletionRequest {
    /// The prompt text (an empty prompt is allowed only to continue a session).
    pub fn prompt(&self) -> Result<String, Invalid> {
        match &self.prompt {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(list)) if list.len() == 1 => match list.first() {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(invalid("prompt", "`prompt` must be a string")),
            },
            Some(_) => Err(invalid(
                "prompt",
                "`prompt` must be a string (token-id prompts and batches of prompts are not supported)",
            )),
        }
    }
}

/// The stop sequence chat requests get by default: the start of the user's next turn.
pub const CHAT_STOP: &str = "\nUser:";

impl ChatRequest {
    /// The conversation rendered with the plain template for base models: each message as
    /// `Role: content` on its own line (roles `system`, `user`, `assistant` as `System`, `User`,
    /// `Assistant`), then `Assistant:` for the reply. The reply stops at [`CHAT_STOP`] unless
    /// the request gives its own `stop`.
    pub fn prompt(&self) -> Result<String, Invalid> {
        let Some(Value::Array(messages)) = &self.messages else {
            return Err(invalid("messages", "`messages` must be a list of messages"));
        };
        if messages.is_empty() {
            return Err(invalid("messages", "`messages` must not be empty"));
        }
        let mut prompt = String::new();
        for m in messages {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system") | Some("developer") => "System",
                Some("user") => "User",
                Some("assistant") => "Assistant",
                _ => {
                    return Err(invalid(
                        "messages",
                        "each message needs a `role`: system, user or assistant",
                    ))
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // Content parts: the text ones, concatenated.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type"), p.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(text))) if t == "text" => {
                            Ok(text.as_str())
                        }
                        _ => Err(invalid("messages", "only text content parts are supported")),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                _ => return Err(invalid("messages", "each message needs a text `content`")),
            };
            prompt.push_str(role);
            prompt.push_str(": ");
            prompt.push_str(&content);
            prompt.push('\n');
        }
        prompt.push_str("Assistant:");
        Ok(prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common(v: Value) -> Result<Checked, Invalid> {
        serde_json::from_value::<Common>(v).unwrap().check(&[])
    }

    #[test]
    fn parameters_out_of_range_name_the_parameter() {
        for (body, param) in [
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_k": -3}), "top_k"),
            (json!({"repeat_penalty": 0}), "repeat_penalty"),
            (json!({"n": 2}), "n"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": [""]}), "stop"),
            (json!({"stop": 3}), "stop"),
            (json!({"stream": "yes"}), "stream"),
            (json!({"session_id": "a/b"}), "session_id"),
        ] {
            let e = common(body.clone()).unwrap_err();
            assert_eq!(e.param, Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn defaults_are_openai_s() {
        let c = common(json!({"seed": 7, "stop": "\n\n"})).unwrap();
        assert_eq!(c.max_tokens, 16);
        assert_eq!(c.params.temperature, 1.0);
        assert_eq!(c.params.top_p, 1.0);
        assert_eq!(c.params.top_k, 0);
        assert_eq!(c.params.seed, 7);
        assert_eq!(c.stop, vec!["\n\n".to_string()]);
        assert!(!c.stream);
    }

    #[test]
    fn chat_template_is_plain() {
        let r: ChatRequest = serde_json::from_value(json!({
            "messages": [
                {"role": "system", "content": "Speak as Hamlet."},
                {"role": "user", "content": [{"type": "text", "text": "To be?"}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            r.prompt().unwrap(),
            "System: Speak as Hamlet.\nUser: To be?\nAssistant:"
        );
        let bad: ChatRequest =
            serde_json::from_value(json!({"messages": [{"role": "x"}]})).unwrap();
        assert!(bad.prompt().is_err());
    }
}
