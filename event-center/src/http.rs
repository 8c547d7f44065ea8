//! The HTTP API and the on-call web page.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{Method, StatusCode, header},
    response::{
        Html, IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{MethodRouter, get, post},
};
use firebreak_plumbing::auth::{Caller, Guard, Tokens, require};
use firebreak_schema::{ClearEscalation, Role, control_topic};
use futures::Stream;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

use crate::{
    Error, EventFilter, Live, StepFilter, Store,
    store::{Action, IncidentQuery},
};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) live: broadcast::Sender<Live>,
    pub(crate) registry: Arc<Registry>,
    /// Whether the consumer holds partitions.
    pub(crate) ready: Arc<AtomicBool>,
    /// Sends operators' instructions to the remediators.
    pub(crate) producer: firebreak_plumbing::kafka::Producer,
    /// The brokers, asked whether a cluster's control topic exists.
    pub(crate) kafka: firebreak_plumbing::kafka::KafkaConfig,
    /// The consumer's lag as last measured, per partition.
    pub(crate) lag: tokio::sync::watch::Receiver<Vec<(firebreak_plumbing::kafka::LagLabels, i64)>>,
    /// Cancelled at shutdown: live streams end then, so the server can stop.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// Wakes the outbox after an operator's action.
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

/// `GET /api/v1/lag`: records on the topics the event center has not read yet, in all and per
/// partition, as last measured.
async fn lag(State(s): State<AppState>) -> Json<serde_json::Value> {
    let now = s.lag.borrow().clone();
    let total: i64 = now.iter().map(|(_, n)| n).sum();
    let partitions: Vec<serde_json::Value> = now
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| serde_json::json!({"topic": l.topic, "partition": l.partition, "lag": n}))
        .collect();
    Json(
        serde_json::json!({"total": total, "partitions": partitions, "measured_every_s": firebreak_plumbing::kafka::LAG_EVERY.as_secs()}),
    )
}

/// Every route: method, path, whether it writes (an operator's token), and its handler. The
/// router is built from this table and the OpenAPI document is checked against it.
pub(crate) fn routes() -> Vec<(Method, &'static str, bool, MethodRouter<AppState>)> {
    vec![
        (Method::GET, "/", false, get(|| async { Html(include_str!("index.html")) })),
        (Method::GET, "/api/v1/openapi.json", false, get(openapi)),
        (Method::GET, "/api/v1/events", false, get(events)),
        (Method::GET, "/api/v1/remediations", false, get(remediations)),
        (Method::GET, "/api/v1/incidents", false, get(incidents)),
        (Method::GET, "/api/v1/incidents/{id}", false, get(incident)),
        (Method::POST, "/api/v1/incidents/{id}/acknowledge", true, post(acknowledge)),
        (Method::POST, "/api/v1/incidents/{id}/silence", true, post(silence)),
        (Method::POST, "/api/v1/incidents/{id}/assign", true, post(assign)),
        (Method::POST, "/api/v1/incidents/{id}/annotate", true, post(annotate)),
        (Method::POST, "/api/v1/incidents/{id}/clear-escalation", true, post(clear_incident_escalation)),
        (Method::GET, "/api/v1/nodes/{cluster}/{node}", false, get(node)),
        (Method::GET, "/api/v1/fleet", false, get(fleet)),
        (Method::GET, "/api/v1/correlations", false, get(correlations)),
        (Method::GET, "/api/v1/gate", false, get(gate)),
        (Method::GET, "/api/v1/lag", false, get(lag)),
        (Method::GET, "/api/v1/stream", false, get(stream)),
        (Method::POST, "/api/v1/escalations/clear", true, post(clear_escalation)),
        (Method::GET, "/healthz", false, get(healthz)),
        (Method::GET, "/readyz", false, get(readyz)),
        (Method::GET, "/metrics", false, get(metrics)),
    ]
}

pub(crate) fn router(state: AppState, tokens: Option<Arc<Tokens>>) -> Router {
    let (mut reads, mut writes) = (Router::new(), Router::new());
    for (_, path, write, handler) in routes() {
        if write {
            writes = writes.route(path, handler);
        } else {
            reads = reads.route(path, handler);
        }
    }
    // Write actions: an operator's token, or off without tokens.
    let writes = match tokens {
        Some(tokens) => {
            writes.route_layer(axum::middleware::from_fn_with_state(Guard { tokens, role: Role::Operator }, require))
        }
        None => writes.route_layer(axum::middleware::from_fn(writes_off)),
    };
    reads.merge(writes).with_state(state)
}

/// The OpenAPI 3.1 document of this API.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A query string, or a 400 that says what is wrong with it.
type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: Q<T>) -> Result<T, Error> {
    q.map(|Query(t)| t).map_err(|e| Error::BadRequest(e.body_text()))
}

/// An incident's id, hyphenated as the API writes it (either case), as its document says.
fn incident_id(id: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::try_parse(id)
        .ok()
        .filter(|_| id.len() == 36)
        .ok_or_else(|| Error::BadRequest(format!("`{id}` is not an incident id")))
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": what}))).into_response()
}

/// `GET /api/v1/incidents`: see [`IncidentQuery`]; `{"items", "next"}`.
async fn incidents(State(s): State<AppState>, q: Q<IncidentQuery>) -> Result<Response, Error> {
    Ok(Json(s.store.list_incidents(&query(q)?).await?).into_response())
}

/// `GET /api/v1/incidents/{id}`: the incident, its correlation and its timeline.
async fn incident(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, Error> {
    let id = incident_id(&id)?;
    Ok(match s.store.incident_detail(id).await? {
        Some(d) => Json(d).into_response(),
        None => not_found(format!("no incident {id}")),
    })
}

/// `GET /api/v1/nodes/{cluster}/{node}`: the node's active incidents, health and timeline.
async fn node(State(s): State<AppState>, Path((cluster, node)): Path<(String, String)>) -> Result<Response, Error> {
    Ok(Json(s.store.node_timeline(&cluster, &node).await?).into_response())
}

/// `GET /api/v1/fleet`: each cluster's size, readiness, nodes out of service, escalations and
/// active incidents by class.
async fn fleet(State(s): State<AppState>) -> Result<Response, Error> {
    Ok(Json(s.store.fleet().await?).into_response())
}

/// `GET /api/v1/correlations`: correlations with an active incident.
async fn correlations(State(s): State<AppState>) -> Result<Response, Error> {
    Ok(Json(s.store.active_correlations().await?).into_response())
}

/// A request's JSON body: an object, as the document says (serde would also take an array for a
/// struct, its fields in order).
type Body = Result<Json<serde_json::Map<String, serde_json::Value>>, axum::extract::rejection::JsonRejection>;

fn body<T: serde::de::DeserializeOwned>(b: Body) -> Result<T, Error> {
    let Json(object) = b.map_err(|e| Error::BadRequest(e.body_text()))?;
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| Error::BadRequest(format!("Failed to deserialize the JSON body into the target type: {e}")))
}

/// Free text from an operator: printable, at most 1,000 characters.
fn text(what: &str, s: &str) -> Result<String, Error> {
    if !firebreak_schema::names::is_plain_text(s, 1000) {
        return Err(Error::BadRequest(format!("{what} must be printable text of at most 1000 characters")));
    }
    Ok(s.to_owned())
}

/// Applies an operator's action; 200 with the incident as it now is, 404 if there is none.
async fn act(s: &AppState, id: &str, caller: &Caller, action: Action) -> Result<Response, Error> {
    let id = incident_id(id)?;
    match s.store.act(id, &caller.name, &action).await? {
        Some(i) => {
            tracing::info!(incident_id = %i.id, cluster = %i.cluster, node = %i.node, by = %caller.name, action = action.name(), "operator action");
            let _ = s.live.send(Live::Incident(Box::new(i.clone())));
            s.wake.notify_one();
            Ok(Json(i).into_response())
        }
        None => Ok(not_found(format!("no incident {id}"))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Note {
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/incidents/{id}/acknowledge` `{"note"}` (operator).
async fn acknowledge(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    b: Body,
) -> Result<Response, Error> {
    let Note { note } = body(b)?;
    let note = text("note", &note)?;
    act(&s, &id, &caller, Action::Acknowledge { note }).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceRequest {
    /// Until this time (RFC 3339) …
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// … or for this long (`30m`, `2h`).
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/incidents/{id}/silence` `{"until" | "for", "note"}` (operator): at most 7 days.
async fn silence(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    b: Body,
) -> Result<Response, Error> {
    let r: SilenceRequest = body(b)?;
    let now = chrono::Utc::now();
    let until = match (r.until, r.for_.as_deref()) {
        (Some(t), None) => t,
        (None, Some(d)) => {
            let d = humantime::parse_duration(d).map_err(|e| Error::BadRequest(format!("for `{d}`: {e}")))?;
            now + chrono::TimeDelta::from_std(d).map_err(|e| Error::BadRequest(format!("for: {e}")))?
        }
        _ => return Err(Error::BadRequest("give one of `until` (RFC 3339) and `for` (`30m`, `2h`)".into())),
    };
    if until > now + chrono::TimeDelta::days(7) {
        return Err(Error::BadRequest(format!("silence until {until}: at most 7 days")));
    }
    let note = text("note", &r.note)?;
    act(&s, &id, &caller, Action::Silence { until, note }).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    to: String,
}

/// `POST /api/v1/incidents/{id}/assign` `{"to"}` (operator).
async fn assign(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    b: Body,
) -> Result<Response, Error> {
    let AssignRequest { to } = body(b)?;
    if to.is_empty() || !firebreak_schema::names::is_plain_text(&to, 253) {
        return Err(Error::BadRequest("`to` must be a name of 1 to 253 printable characters".into()));
    }
    act(&s, &id, &caller, Action::Assign { to }).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnotateRequest {
    text: String,
}

/// `POST /api/v1/incidents/{id}/annotate` `{"text"}` (operator).
async fn annotate(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    b: Body,
) -> Result<Response, Error> {
    let AnnotateRequest { text: t } = body(b)?;
    if t.is_empty() {
        return Err(Error::BadRequest("`text` is empty".into()));
    }
    let text = text("text", &t)?;
    act(&s, &id, &caller, Action::Annotate { text }).await
}

/// `POST /api/v1/incidents/{id}/clear-escalation` `{"note"}` (operator): asks the node's
/// remediator to clear its escalation (as `POST /api/v1/escalations/clear` does) and notes it on
/// the incident; 202.
async fn clear_incident_escalation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    b: Body,
) -> Result<Response, Error> {
    let Note { note } = body(b)?;
    let note = text("note", &note)?;
    let iid = incident_id(&id)?;
    let Some(i) = s.store.incident(iid).await? else { return Ok(not_found(format!("no incident {iid}"))) };
    let reason = if note.is_empty() { format!("cleared from incident {iid}") } else { note.clone() };
    let asked = ask_clear(&s, &caller, i.cluster, i.node, reason).await?;
    act(&s, &id, &caller, Action::ClearEscalation { note }).await?;
    Ok((StatusCode::ACCEPTED, Json(asked)).into_response())
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = match &self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::WritesOff => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if code.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; see the event center's log".to_owned()
        } else {
            self.to_string()
        };
        (code, Json(serde_json::json!({"error": message}))).into_response()
    }
}

/// What the gate's topic and the health topic last said: health per cluster, halts in force,
/// recent changes.
async fn gate(State(s): State<AppState>) -> Result<Response, Error> {
    Ok(Json(s.store.gate_view().await?).into_response())
}

/// `GET /api/v1/events?cluster=&node=&class=&limit=`: faults, most recently observed first.
async fn events(State(s): State<AppState>, q: Q<EventFilter>) -> Result<Response, Error> {
    Ok(Json(s.store.list_faults(&query(q)?).await?).into_response())
}

/// `GET /api/v1/remediations?cluster=&node=&limit=`: remediation steps, newest first.
async fn remediations(State(s): State<AppState>, q: Q<StepFilter>) -> Result<Response, Error> {
    Ok(Json(s.store.list_remediations(&query(q)?).await?).into_response())
}

async fn stream(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = s.live.subscribe();
    let shutdown = s.shutdown.clone();
    let events = async_stream::stream! {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = rx.recv() => next,
            };
            match next {
                Ok(Live::Fault(r)) => yield Ok(Event::default().event("fault").json_data(&*r).unwrap_or_default()),
                Ok(Live::Remediation(r)) => yield Ok(Event::default().event("remediation").json_data(&*r).unwrap_or_default()),
                Ok(Live::Gate) => yield Ok(Event::default().event("gate").data("changed")),
                Ok(Live::Incident(i)) => yield Ok(Event::default().event("incident").json_data(&*i).unwrap_or_default()),
                Ok(Live::Correlation(c)) => yield Ok(Event::default().event("correlation").json_data(&*c).unwrap_or_default()),
                // A slow client missed some; tell it to reload.
                Err(broadcast::error::RecvError::Lagged(n)) => yield Ok(Event::default().event("lagged").data(n.to_string())),
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// What every write route answers when the event center has no tokens.
async fn writes_off(_: axum::extract::Request, _: axum::middleware::Next) -> Response {
    Error::WritesOff.into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearRequest {
    cluster: String,
    node: String,
    reason: String,
}

/// `POST /api/v1/escalations/clear` `{"cluster", "node", "reason"}` (operator): asks the
/// cluster's remediator to clear the node's escalation; 202 with the instruction's id. The
/// remediator records it in the node's workflow (a step on the remediation topic).
async fn clear_escalation(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    b: Body,
) -> Result<Response, Error> {
    let r: ClearRequest = body(b)?;
    let asked = ask_clear(&s, &caller, r.cluster, r.node, r.reason).await?;
    Ok((StatusCode::ACCEPTED, Json(asked)).into_response())
}

/// Publishes an operator's instruction to clear a node's escalation to its remediator.
async fn ask_clear(
    s: &AppState,
    caller: &Caller,
    cluster: String,
    node: String,
    reason: String,
) -> Result<serde_json::Value, Error> {
    let ask = ClearEscalation {
        id: uuid::Uuid::now_v7(),
        cluster,
        node,
        by: caller.name.clone(),
        reason,
        at: chrono::Utc::now(),
    };
    firebreak_schema::CloudEvent::validate(&ask).map_err(|e| Error::BadRequest(e.to_string()))?;
    let topic = control_topic(&ask.cluster);
    // A cluster with no remediator has no control topic: said at once, not after the
    // producer's 30 s of waiting for a topic that never comes.
    if !s.kafka.topic_exists(&topic).await? {
        return Err(Error::NotFound(format!(
            "no remediator of cluster `{}` reads instructions: its control topic {topic} does not exist",
            ask.cluster
        )));
    }
    s.producer.publish(&topic, &ask).await?;
    tracing::info!(id = %ask.id, cluster = %ask.cluster, node = %ask.node, by = %ask.by, "escalation clearing asked");
    Ok(serde_json::json!({"id": ask.id, "status": "asked", "cluster": ask.cluster, "node": ask.node}))
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Ready when the database answers and the consumer has been assigned partitions.
async fn readyz(State(s): State<AppState>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "consumer has no partitions yet").into_response();
    }
    healthz(State(s)).await
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object().expect("operations").keys().map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> =
            routes().into_iter().map(|(m, p, _, _)| (m.to_string(), p.to_owned())).collect();
        assert_eq!(documented, served);
        for (m, p, write, _) in routes() {
            let op = &doc["paths"][p][m.as_str().to_lowercase()];
            assert_eq!(op["security"].is_array(), write, "{m} {p}: a write route, and only one, needs a token");
            assert!(op["summary"].is_string(), "{m} {p} has a summary");
        }
    }

    #[test]
    fn the_openapi_document_names_every_kind_class_and_state() {
        use firebreak_schema::{FaultKind, IncidentState};
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
        let param = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .map(|p| p["schema"].clone())
                .unwrap_or_else(|| panic!("{path} has `{name}`"))
        };
        let names = |v: serde_json::Value| -> BTreeSet<String> {
            v["enum"].as_array().expect("an enum").iter().map(|s| s.as_str().expect("a name").to_owned()).collect()
        };
        // An empty filter is none: every enum takes "" too.
        let kinds: BTreeSet<String> =
            FaultKind::ALL.iter().map(|k| k.as_str().to_owned()).chain([String::new()]).collect();
        assert_eq!(names(param("/api/v1/incidents", "kind")), kinds);
        let classes: BTreeSet<String> =
            FaultKind::ALL.iter().map(|k| k.class().as_str().to_owned()).chain([String::new()]).collect();
        for path in ["/api/v1/incidents", "/api/v1/events"] {
            assert_eq!(names(param(path, "class")), classes, "{path}");
        }
        let states = param("/api/v1/incidents", "state")["pattern"].as_str().expect("a pattern").to_owned();
        for s in IncidentState::ALL {
            assert!(states.contains(&format!("|{}", s.as_str())), "{s} in {states}");
        }
    }
}
