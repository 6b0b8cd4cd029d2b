//! The HTTP layer (axum): OpenAI-compatible routes over the engine, JSON errors, metrics,
//! sessions.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use retnet_model::state_file::state_from_bytes;
use retnet_model::{ModelConfig, WeightsFingerprint};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, ChatRequest, Checked, CompletionRequest, Invalid};
use crate::engine::{Event, Job, SessionError, Shared};

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// What every handler sees.
pub struct App {
    /// The engine's shared half.
    pub shared: Arc<Shared>,
    /// Where jobs go.
    pub jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    /// The model's id.
    pub model_id: String,
    /// The model's config (to check imported session states).
    pub config: ModelConfig,
    /// The fingerprint of the model's weights (likewise).
    pub fingerprint: WeightsFingerprint,
    /// `cpu` or `gpu`.
    pub backend: &'static str,
    /// When the server started (Unix seconds), the models' `created`.
    pub created: u64,
}

/// An OpenAI-style error response.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self {
            param: e.param,
            ..Self::bad_request(e.message)
        }
    }
}

impl ApiError {
    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": Value::Null,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// JSON bodies whose rejections are OpenAI-style errors too (400; 413 when too large).
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    Json<T>: axum::extract::FromRequest<S, Rejection = JsonRejection>,
    T: Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError::new(
                    status,
                    "invalid_request_error",
                    rejection.body_text(),
                ))
            }
        }
    }
}

/// The router of every route.
pub fn router(app: Arc<App>) -> Router {
    let c = &app.config;
    let state_bytes = c.num_layers * c.retention_state_len() * 4;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/metrics", get(metrics))
        .route(
            "/v1/sessions/{id}",
            get(session_export)
                .put(session_import)
                .delete(session_delete)
                // A state file is the states plus a small header.
                .layer(DefaultBodyLimit::max(state_bytes + (1 << 16))),
        )
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such route")
        })
        .with_state(app)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&app)]}))
}

fn model_object(app: &App) -> Value {
    json!({"id": app.model_id, "object": "model", "created": app.created, "owned_by": "retnet"})
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let o = &app.shared.options;
    let text = app.shared.metrics.render(app.backend, o.max_batch, o.queue);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Which endpoint a job serves (their responses differ in shape).
#[derive(Clone, Copy)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(
    State(app): State<Arc<App>>,
    request: Result<ApiJson<CompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let result = async {
        let ApiJson(request) = request?;
        check_model(&app, request.common.model.as_deref())?;
        let checked = request.common.check(&[])?;
        let prompt = request.prompt()?;
        start(&app, Kind::Completion, &prompt, checked).await
    }
    .await;
    count_error(&app, result)
}

async fn chat(
    State(app): State<Arc<App>>,
    request: Result<ApiJson<ChatRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let result = async {
        let ApiJson(request) = request?;
        check_model(&app, request.common.model.as_deref())?;
        let checked = request.common.check(&[api::CHAT_STOP])?;
        let prompt = request.prompt()?;
        start(&app, Kind::Chat, &prompt, checked).await
    }
    .await;
    count_error(&app, result)
}

/// Counts an error answer in `retnet_request_errors_total` (bodies that are not JSON, or too
/// large, included: the handlers take their rejection as a value).
fn count_error(app: &App, result: Result<Response, ApiError>) -> Result<Response, ApiError> {
    if result.is_err() {
        app.shared.metrics.request_errors.fetch_add(1, Relaxed);
    }
    result
}

fn check_model(app: &App, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != app.model_id => Err(ApiError {
            param: Some("model"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!(
                    "the model `{m}` does not exist: this server has `{}`",
                    app.model_id
                ),
            )
        }),
        _ => Ok(()),
    }
}

/// Tokenizes, queues the job (503 when the queue is full) and answers: a stream of events,
/// or one JSON body once the completion is done.
async fn start(
    app: &Arc<App>,
    kind: Kind,
    prompt: &str,
    checked: Checked,
) -> Result<Response, ApiError> {
    let shared = &app.shared;
    let tokens = shared
        .tokenizer
        .encode(prompt)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if tokens.is_empty() && checked.session.is_none() {
        return Err(ApiError {
            param: Some("prompt"),
            ..ApiError::bad_request("the prompt is empty")
        });
    }
    if let Some(id) = &checked.session {
        let mut sessions = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .claim(id, shared.options.max_sessions)
            .map_err(session_error)?;
    }
    // The queue bound: a slot in the queue is taken here, and given back by the scheduler
    // when the job joins the batch.
    let queue = &shared.metrics.queue_length;
    let capacity = shared.options.queue as u64;
    if queue
        .fetch_update(Relaxed, Relaxed, |n| (n < capacity).then_some(n + 1))
        .is_err()
    {
        if let Some(id) = &checked.session {
            shared.release_session(id, None);
        }
        shared.metrics.rejected_queue_full.fetch_add(1, Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            format!("the queue is full ({capacity} requests waiting): retry later"),
        ));
    }
    let (events, receiver) = unbounded_channel();
    let prompt_tokens = tokens.len();
    let job = Job {
        prompt: tokens,
        params: checked.params,
        max_tokens: checked.max_tokens,
        stop: checked.stop,
        session: checked.session.clone(),
        events,
    };
    let sent = app.jobs.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    if sent.is_err() {
        queue.fetch_sub(1, Relaxed);
        if let Some(id) = &checked.session {
            shared.release_session(id, None);
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine has stopped",
        ));
    }
    shared.metrics.requests.fetch_add(1, Relaxed);
    shared
        .metrics
        .prompt_tokens
        .fetch_add(prompt_tokens as u64, Relaxed);
    let reply = Reply {
        kind,
        id: next_id(kind),
        created: unix_now(),
        model: app.model_id.clone(),
    };
    if checked.stream {
        Ok(Sse::new(sse_stream(reply, receiver)).into_response())
    } else {
        collect(reply, receiver).await
    }
}

fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::Busy(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict_error", e.to_string())
        }
        SessionError::Full(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            e.to_string(),
        ),
    }
}

/// The parts of a response that every chunk repeats.
struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn choice(&self, text: &str, finish: Option<&str>, stream: bool, first: bool) -> Value {
        match self.kind {
            Kind::Completion => json!({
                "text": text, "index": 0, "logprobs": Value::Null, "finish_reason": finish,
            }),
            Kind::Chat if stream => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish})
            }
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": Value::Null,
                "finish_reason": finish,
            }),
        }
    }

    fn body(&self, choice: Value, usage: Option<Value>, stream: bool) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": self.object(stream),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let (Some(usage), Some(map)) = (usage, body.as_object_mut()) {
            map.insert("usage".into(), usage);
        }
        body
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

fn engine_error(invalid_request: bool, message: String) -> ApiError {
    if invalid_request {
        ApiError::bad_request(message)
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
}

async fn collect(reply: Reply, mut events: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                let choice = reply.choice(&text, Some(reason.as_str()), false, false);
                let usage = usage(prompt_tokens, completion_tokens, cached_tokens);
                return Ok(Json(reply.body(choice, Some(usage), false)).into_response());
            }
            Event::Error {
                invalid_request,
                message,
            } => return Err(engine_error(invalid_request, message)),
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the engine dropped the request",
    ))
}

/// Server-sent events: one `data:` chunk per piece of text, the last with the finish reason
/// and the usage, then `data: [DONE]`. Dropping the stream (the client went away) closes the
/// channel, and the scheduler frees the slot at its next step.
fn sse_stream(
    reply: Reply,
    events: UnboundedReceiver<Event>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    /// Where the stream is: relaying events, owing `[DONE]`, or over.
    enum Phase {
        Relaying { first: bool },
        Ending,
        Over,
    }
    let done = || SseEvent::default().data("[DONE]");
    stream::unfold(
        (events, reply, Phase::Relaying { first: true }),
        move |(mut events, reply, phase)| async move {
            let first = match phase {
                Phase::Over => return None,
                Phase::Ending => return Some((Ok(done()), (events, reply, Phase::Over))),
                Phase::Relaying { first } => first,
            };
            let (event, next) = match events.recv().await {
                Some(Event::Text(t)) => {
                    let choice = reply.choice(&t, None, true, first);
                    let body = reply.body(choice, None, true);
                    (json_event(&body), Phase::Relaying { first: false })
                }
                Some(Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                }) => {
                    let choice = reply.choice("", Some(reason.as_str()), true, first);
                    let usage = usage(prompt_tokens, completion_tokens, cached_tokens);
                    (
                        json_event(&reply.body(choice, Some(usage), true)),
                        Phase::Ending,
                    )
                }
                Some(Event::Error {
                    invalid_request,
                    message,
                }) => {
                    let error = engine_error(invalid_request, message);
                    (json_event(&error.body()), Phase::Ending)
                }
                None => (done(), Phase::Over),
            };
            Some((Ok(event), (events, reply, next)))
        },
    )
}

fn json_event(body: &Value) -> SseEvent {
    SseEvent::default().data(body.to_string())
}

async fn session_export(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sessions = app
        .shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match sessions.get(&id) {
        Some(bytes) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.to_vec(),
        )
            .into_response()),
        None => Err(no_session(&id)),
    }
}

async fn session_import(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !api::valid_session_id(&id) {
        return Err(ApiError::bad_request(
            "a session id is 1 to 128 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let name = format!("session {id}");
    // The same checks as a load: format, fingerprint of this model, shapes, bookkeeping.
    state_from_bytes(
        std::path::Path::new(&name),
        &body,
        &app.config,
        &app.fingerprint,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut sessions = app
        .shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    sessions
        .put(&id, body.to_vec(), app.shared.options.max_sessions)
        .map_err(session_error)?;
    app.shared
        .metrics
        .sessions
        .store(sessions.len() as u64, Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "object": "session"})),
    )
        .into_response())
}

async fn session_delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut sessions = app
        .shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let existed = sessions.delete(&id).map_err(session_error)?;
    app.shared
        .metrics
        .sessions
        .store(sessions.len() as u64, Relaxed);
    if existed {
        Ok(Json(json!({"id": id, "object": "session", "deleted": true})).into_response())
    } else {
        Err(no_session(&id))
    }
}

fn no_session(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("no session `{id}`"),
    )
}

fn next_id(kind: Kind) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Relaxed);
    match kind {
        Kind::Completion => format!("cmpl-{n}"),
        Kind::Chat => format!("chatcmpl-{n}"),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
