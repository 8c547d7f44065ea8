//! The HTTP face of a simulated cluster: the Kubernetes REST API, plus a small `/fleet-sim/v1`
//! control API (fault injection, audit log).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    At, AuditEntry, Cluster, Error, Fault, Result, now_plus, patch,
    pdb::{matching_pdbs, pod_ready},
    resources::{self, NAMESPACES, PDBS, PODS, Resource},
    select::Selector,
    str_at, time_now_rfc3339,
};

pub(crate) async fn serve(cluster: Arc<Cluster>, listener: tokio::net::TcpListener, cancel: CancellationToken) {
    let name = cluster.name().to_owned();
    let app = Router::new()
        .route("/fleet-sim/v1/audit", get(audit))
        .route("/fleet-sim/v1/nodes/{node}/faults", post(inject))
        .route("/fleet-sim/v1/runtime-versions", get(runtime_versions))
        .route("/fleet-sim/v1/runtime-versions/{version}", post(set_runtime))
        .fallback(kube_api)
        .with_state(cluster);
    let server = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
    if let Err(error) = server.await {
        tracing::error!(%error, cluster = %name, "fleet-sim API server failed");
    }
}

async fn audit(State(c): State<Arc<Cluster>>) -> Response {
    json_reply(StatusCode::OK, &json!(c.audit()))
}

#[derive(serde::Deserialize)]
struct InjectBody {
    fault: Fault,
}

async fn inject(State(c): State<Arc<Cluster>>, Path(node): Path<String>, body: Bytes) -> Response {
    let parsed: Result<InjectBody> =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("invalid body: {e}")));
    match parsed.and_then(|b| c.inject(&node, b.fault)) {
        Ok(()) => json_reply(StatusCode::ACCEPTED, &json!({"injected": true})),
        Err(e) => error_reply(&e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeBody {
    healthy: bool,
    #[serde(default)]
    failure: crate::RuntimeFailure,
}

/// The runtime versions marked unhealthy, and how pods fail on them.
async fn runtime_versions(State(c): State<Arc<Cluster>>) -> Response {
    json_reply(StatusCode::OK, &json!(c.bad_runtimes()))
}

/// Marks a runtime version healthy or not (`{"healthy": false, "failure": "crash_loop"}`).
async fn set_runtime(State(c): State<Arc<Cluster>>, Path(version): Path<String>, body: Bytes) -> Response {
    if !firebreak_schema::names::is_label_value(&version) || version.is_empty() {
        return error_reply(&Error::Unprocessable(format!("runtime version `{version}` is not a label value")));
    }
    match serde_json::from_slice::<RuntimeBody>(&body) {
        Ok(b) => {
            c.set_runtime_health(&version, b.healthy, b.failure);
            json_reply(StatusCode::OK, &json!({"version": version, "healthy": b.healthy, "failure": b.failure}))
        }
        Err(e) => error_reply(&Error::BadRequest(format!("invalid body: {e}"))),
    }
}

struct Req {
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

async fn kube_api(
    State(c): State<Arc<Cluster>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let path = uri.path().trim_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').collect();
    let req = Req { method, query, headers, body };
    let found = match segs.as_slice() {
        ["version"] => Some(Ok(json_reply(StatusCode::OK, &resources::version()))),
        ["healthz" | "livez" | "readyz"] => Some(Ok((StatusCode::OK, "ok").into_response())),
        ["api"] => Some(Ok(json_reply(StatusCode::OK, &resources::core_versions()))),
        ["apis"] => Some(Ok(json_reply(StatusCode::OK, &resources::groups()))),
        ["api", v] => resources::resource_list("", v).map(|l| Ok(json_reply(StatusCode::OK, &l))),
        ["apis", g, v] => resources::resource_list(g, v).map(|l| Ok(json_reply(StatusCode::OK, &l))),
        ["api", v, rest @ ..] => route(&c, "", v, rest, &req).await,
        ["apis", g, v, rest @ ..] => route(&c, g, v, rest, &req).await,
        _ => None,
    };
    match found {
        Some(Ok(r)) => r,
        Some(Err(e)) => error_reply(&e),
        None => error_reply(&Error::NotFound("path".into(), uri.path().to_owned())),
    }
}

/// Target of a resource request.
struct Target<'a> {
    res: &'static Resource,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn parse_target<'a>(group: &str, version: &str, rest: &[&'a str]) -> Option<Target<'a>> {
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if group.is_empty() || !plural.is_empty() => {
            if group.is_empty() && matches!(*plural, "status" | "finalize") {
                return Some(Target { res: &NAMESPACES, ns: None, name: Some(ns), sub: Some(plural) });
            }
            (Some(*ns), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let res = resources::find(group, version, rest.first()?)?;
    if ns.is_some() && !res.namespaced {
        return None;
    }
    Some(Target { res, ns, name: rest.get(1).copied(), sub: rest.get(2).copied() })
}

async fn route(c: &Arc<Cluster>, group: &str, version: &str, rest: &[&str], req: &Req) -> Option<Result<Response>> {
    let t = parse_target(group, version, rest)?;
    if t.res.namespaced && t.name.is_some() && t.ns.is_none() {
        return None;
    }
    if let Some(sub) = t.sub
        && !t.res.subresources.contains(&sub)
    {
        return None;
    }
    let verb = match (&req.method, t.name, t.sub) {
        (&Method::GET, None, _) if req.query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            return Some(watch(c, &t, req));
        }
        (&Method::GET, None, _) => return Some(list(c, &t, req)),
        (&Method::GET, Some(name), _) => return Some(get_one(c, &t, name, req)),
        (&Method::POST, None, _) => "create",
        (&Method::POST, Some(_), Some("eviction")) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), None) => "delete",
        _ => return Some(Err(Error::MethodNotAllowed)),
    };
    let result = {
        let mut st = c.lock();
        let r = match verb {
            "create" if t.sub == Some("eviction") => evict(&mut st.store, &t, req),
            "create" => create(&mut st.store, &t, req),
            "update" => update(&mut st.store, &t, req),
            "patch" => patch_one(&mut st.store, &t, req),
            _ => delete(&mut st.store, &t, req),
        };
        let code = match &r {
            Ok((code, _)) => code.as_u16(),
            Err(e) => status_code(e).as_u16(),
        };
        st.audit.push(AuditEntry {
            time: time_now_rfc3339(),
            verb: verb.into(),
            resource: t.res.plural.into(),
            subresource: t.sub.unwrap_or_default().into(),
            namespace: t.ns.unwrap_or_default().into(),
            name: t.name.unwrap_or_default().into(),
            code,
            user_agent: req.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().into(),
        });
        r
    };
    let warnings = if t.sub == Some("eviction") { unknown_eviction_fields(&req.body) } else { Vec::new() };
    Some(result.map(|(code, body)| {
        let mut reply = json_reply(code, &body);
        for field in warnings {
            // What a real API server answers for a field it drops (kube-core's `delete_options`).
            let warning = format!("299 - \"unknown field \\\"{field}\\\"\"");
            if let Ok(v) = header::HeaderValue::from_str(&warning) {
                reply.headers_mut().append(header::WARNING, v);
            }
        }
        reply
    }))
}

/// Top-level fields of an Eviction body that the API server does not know and ignores.
fn unknown_eviction_fields(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|o| {
            o.keys()
                .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "deleteOptions"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn ns_of<'a>(t: &Target<'a>) -> &'a str {
    t.ns.unwrap_or_default()
}

fn selectors(req: &Req) -> Result<(Selector, Selector)> {
    let l = Selector::labels(req.query.get("labelSelector").map_or("", String::as_str))?;
    let f = Selector::fields(req.query.get("fieldSelector").map_or("", String::as_str))?;
    Ok((l, f))
}

fn list(c: &Cluster, t: &Target, req: &Req) -> Result<Response> {
    let (l, f) = selectors(req)?;
    let (items, rv) = {
        let st = c.lock();
        let keep = |o: &&Value| {
            t.ns.is_none_or(|ns| str_at(o, "/metadata/namespace") == ns) && l.matches_labels(o) && f.matches_fields(o)
        };
        let items: Vec<Value> = match f.required("spec.nodeName").filter(|_| t.res.plural == PODS.plural) {
            Some(node) => st.store.pods_on(node).filter(keep).cloned().collect(),
            None => st.store.iter(t.res, t.ns).filter(keep).cloned().collect(),
        };
        (items, st.store.rv())
    };
    if wants_table(req) {
        return Ok(json_reply(StatusCode::OK, &table(t.res, &items, rv)));
    }
    let body = json!({"apiVersion": t.res.api_version(), "kind": format!("{}List", t.res.kind),
        "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    Ok(json_reply(StatusCode::OK, &body))
}

fn get_one(c: &Cluster, t: &Target, name: &str, req: &Req) -> Result<Response> {
    let (obj, rv) = {
        let st = c.lock();
        (st.store.get(t.res, ns_of(t), name), st.store.rv())
    };
    let obj = obj.ok_or_else(|| Error::NotFound(t.res.plural.into(), name.into()))?;
    if wants_table(req) {
        return Ok(json_reply(StatusCode::OK, &table(t.res, &[obj], rv)));
    }
    Ok(json_reply(StatusCode::OK, &obj))
}

fn watch(c: &Cluster, t: &Target, req: &Req) -> Result<Response> {
    let (l, f) = selectors(req)?;
    let ns = t.ns.map(str::to_owned);
    let res = t.res;
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let rv = req.query.get("resourceVersion").and_then(|s| s.parse::<u64>().ok()).filter(|rv| *rv > 0);
    let (initial, mut rx) = {
        let st = c.lock();
        match rv {
            Some(rv) => {
                let (past, rx) = st.store.watch_from(res, rv)?;
                (past.into_iter().map(|ch| (ch.kind, Arc::unwrap_or_clone(ch.object))).collect::<Vec<_>>(), rx)
            }
            None => {
                let objs = st.store.list(res, ns.as_deref()).into_iter().map(|o| ("ADDED", o)).collect();
                (objs, st.store.subscribe())
            }
        }
    };
    let keep = move |o: &Value| {
        ns.as_deref().is_none_or(|ns| str_at(o, "/metadata/namespace") == ns)
            && l.matches_labels(o)
            && f.matches_fields(o)
    };
    let shutdown = c.shutdown.clone();
    let stream = async_stream::stream! {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for (kind, obj) in initial {
            if keep(&obj) {
                yield Ok::<_, Infallible>(line(kind, &obj));
            }
        }
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.cancelled() => break,
                change = rx.recv() => match change {
                    Ok(ch) if ch.resource == res.plural && keep(&ch.object) => yield Ok(line(ch.kind, &ch.object)),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "watch fell behind; resourceVersion too old", "reason": "Expired", "code": 410});
                        yield Ok(line("ERROR", &status));
                        break;
                    }
                    Err(_) => break,
                },
            }
        }
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

fn line(kind: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn body_json(req: &Req) -> Result<Value> {
    serde_json::from_slice(&req.body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

fn create(store: &mut crate::store::Store, t: &Target, req: &Req) -> Result<(StatusCode, Value)> {
    let mut obj = body_json(req)?;
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::BadRequest("metadata is required".into()))?;
    if let Some(ns) = t.ns {
        meta.insert("namespace".into(), json!(ns));
    }
    if !meta.contains_key("name")
        && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
    {
        let name = format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..5]);
        meta.insert("name".into(), json!(name));
    }
    crate::validate::object(t.res, &obj)?;
    if dry_run(req, None) {
        return Ok((StatusCode::CREATED, obj));
    }
    Ok((StatusCode::CREATED, store.create(t.res, obj)?))
}

fn update(store: &mut crate::store::Store, t: &Target, req: &Req) -> Result<(StatusCode, Value)> {
    let name = t.name.unwrap_or_default();
    let old = store.get(t.res, ns_of(t), name).ok_or_else(|| Error::NotFound(t.res.plural.into(), name.into()))?;
    let mut new = body_json(req)?;
    if str_at(&new, "/metadata/name") != name {
        return Err(Error::BadRequest("the name of the object does not match the name on the URL".into()));
    }
    keep_split(t, &old, &mut new);
    crate::validate::object(t.res, &new)?;
    Ok((StatusCode::OK, store.replace(t.res, new)?))
}

fn patch_one(store: &mut crate::store::Store, t: &Target, req: &Req) -> Result<(StatusCode, Value)> {
    let name = t.name.unwrap_or_default();
    let old = store.get(t.res, ns_of(t), name).ok_or_else(|| Error::NotFound(t.res.plural.into(), name.into()))?;
    let ct = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut new = old.clone();
    patch::apply(&mut new, ct, &req.body)?;
    // A resourceVersion in the patch is a precondition.
    if let Ok(p) = serde_json::from_slice::<Value>(&req.body)
        && let Some(rv) = p.at("/metadata/resourceVersion").and_then(Value::as_str)
        && Some(rv) != old.at("/metadata/resourceVersion").and_then(Value::as_str)
    {
        return Err(Error::Conflict(format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            t.res.plural
        )));
    }
    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
        m.insert("name".into(), json!(name));
    }
    keep_split(t, &old, &mut new);
    crate::validate::object(t.res, &new)?;
    if dry_run(req, None) {
        return Ok((StatusCode::OK, new));
    }
    Ok((StatusCode::OK, store.replace(t.res, new)?))
}

/// The main resource never changes `status`; the status subresource changes only `status`.
fn keep_split(t: &Target, old: &Value, new: &mut Value) {
    if !t.res.has_status() {
        return;
    }
    if t.sub == Some("status") {
        let status = new.get("status").cloned();
        *new = old.clone();
        if let Some(s) = status {
            new["status"] = s;
        }
    } else if let Some(s) = old.get("status") {
        new["status"] = s.clone();
    } else if let Some(o) = new.as_object_mut() {
        o.remove("status");
    }
}

fn dry_run(req: &Req, body: Option<&Value>) -> bool {
    req.query.get("dryRun").is_some_and(|v| v == "All")
        || body
            .and_then(|b| b.at("/deleteOptions/dryRun"))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"))
}

/// The grace period a deletion asks for (query parameter, then delete options; a negative value
/// counts as not given), else the pod's own `terminationGracePeriodSeconds`, else 30 s.
fn grace_period(req: &Req, options: Option<&Value>, pod: &Value) -> i64 {
    req.query
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| options.and_then(|o| o.get("gracePeriodSeconds")).and_then(Value::as_i64))
        .filter(|g| *g >= 0)
        .or_else(|| pod.at("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
        .unwrap_or(30)
}

fn delete(store: &mut crate::store::Store, t: &Target, req: &Req) -> Result<(StatusCode, Value)> {
    let name = t.name.unwrap_or_default();
    let options: Option<Value> = serde_json::from_slice(&req.body).ok();
    if dry_run(req, None) {
        let obj = store.get(t.res, ns_of(t), name).ok_or_else(|| Error::NotFound(t.res.plural.into(), name.into()))?;
        return Ok((StatusCode::OK, obj));
    }
    if t.res.plural == PODS.plural {
        let pod = store.get(&PODS, ns_of(t), name).ok_or_else(|| Error::NotFound("pods".into(), name.into()))?;
        let grace = grace_period(req, options.as_ref(), &pod);
        return terminate(store, pod, grace);
    }
    Ok((StatusCode::OK, store.remove(t.res, ns_of(t), name)?))
}

/// Graceful pod deletion: the pod gets a deletionTimestamp and stays Terminating for its grace
/// period, unless the grace period is 0.
fn terminate(store: &mut crate::store::Store, mut pod: Value, grace: i64) -> Result<(StatusCode, Value)> {
    let (ns, name) = (str_at(&pod, "/metadata/namespace"), str_at(&pod, "/metadata/name"));
    if grace == 0 {
        return Ok((StatusCode::OK, store.remove(&PODS, &ns, &name)?));
    }
    if pod.at("/metadata/deletionTimestamp").is_some() {
        return Ok((StatusCode::OK, pod));
    }
    let grace_u = u64::try_from(grace).unwrap_or(30);
    pod["metadata"]["deletionTimestamp"] = json!(now_plus(Duration::from_secs(grace_u)));
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    Ok((StatusCode::OK, store.replace(&PODS, pod)?))
}

/// `POST .../pods/NAME/eviction`, honouring PodDisruptionBudgets as the API server does.
fn evict(store: &mut crate::store::Store, t: &Target, req: &Req) -> Result<(StatusCode, Value)> {
    let name = t.name.unwrap_or_default();
    let body = body_json(req)?;
    // Like the API server: a missing kind defaults to Eviction; another kind is refused.
    if body.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Eviction") {
        return Err(Error::BadRequest("body must be a policy/v1 Eviction".into()));
    }
    let pod = store.get(&PODS, ns_of(t), name).ok_or_else(|| Error::NotFound("pods".into(), name.into()))?;
    let options = body.get("deleteOptions");
    let success = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    let terminating = pod.at("/metadata/deletionTimestamp").is_some();
    // The budget this eviction spends, as the API server records it at once (not at the
    // disruption controller's next pass), so that evictions in a burst cannot overspend it.
    let mut spent = None;
    if !terminating && pod_ready(&pod) {
        let mut pdbs = matching_pdbs(store, &pod);
        if pdbs.len() > 1 {
            return Err(Error::Unprocessable(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                    .into(),
            ));
        }
        if let Some(mut pdb) = pdbs.pop() {
            let allowed = pdb.at("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
            if allowed <= 0 {
                return Err(Error::TooManyRequests(str_at(&pdb, "/metadata/name")));
            }
            pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
            spent = Some(pdb);
        }
    }
    if dry_run(req, Some(&body)) {
        return Ok((StatusCode::CREATED, success));
    }
    if let Some(pdb) = spent {
        store.replace(&PDBS, pdb)?;
    }
    let grace = grace_period(req, options, &pod);
    terminate(store, pod, grace)?;
    Ok((StatusCode::CREATED, success))
}

fn wants_table(req: &Req) -> bool {
    req.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=Table"))
}

/// Computes a table row's cells from an object.
type CellsFn = dyn Fn(&Value) -> Vec<Value>;

/// The `meta.k8s.io/v1` Table kubectl asks for, with the columns a real API server prints.
fn table(res: &Resource, items: &[Value], rv: u64) -> Value {
    let col = |name: &str, ty: &str, priority: u8| json!({"name": name, "type": ty, "format": if name == "Name" {"name"} else {""}, "description": "", "priority": priority});
    let (columns, cells): (Vec<Value>, Box<CellsFn>) = match res.plural {
        "nodes" => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Roles", "string", 0),
                col("Age", "string", 0),
                col("Version", "string", 0),
                col("Internal-IP", "string", 1),
            ],
            Box::new(|n: &Value| {
                let ready = n
                    .at("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| str_at(c, "/status"))
                    .unwrap_or_default();
                let mut status = if ready == "True" { "Ready".to_owned() } else { "NotReady".to_owned() };
                if n.at("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                    status.push_str(",SchedulingDisabled");
                }
                let roles: Vec<String> = n
                    .at("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|l| {
                        l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned)).collect()
                    })
                    .unwrap_or_default();
                let roles = if roles.is_empty() { "<none>".to_owned() } else { roles.join(",") };
                let ip = n.at("/status/addresses/0/address").cloned().unwrap_or(json!("<none>"));
                vec![
                    json!(str_at(n, "/metadata/name")),
                    json!(status),
                    json!(roles),
                    json!(age(n)),
                    json!(str_at(n, "/status/nodeInfo/kubeletVersion")),
                    ip,
                ]
            }),
        ),
        "pods" => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
            ],
            Box::new(|p: &Value| {
                let ready = if pod_ready(p) { "1/1" } else { "0/1" };
                let status = if p.at("/metadata/deletionTimestamp").is_some() {
                    "Terminating".to_owned()
                } else {
                    str_at(p, "/status/phase")
                };
                vec![
                    json!(str_at(p, "/metadata/name")),
                    json!(ready),
                    json!(status),
                    json!("0"),
                    json!(age(p)),
                    json!(p.at("/status/podIP").and_then(Value::as_str).unwrap_or("<none>")),
                    json!(str_at(p, "/spec/nodeName")),
                ]
            }),
        ),
        _ => (
            vec![col("Name", "string", 0), col("Age", "string", 0)],
            Box::new(|o: &Value| vec![json!(str_at(o, "/metadata/name")), json!(age(o))]),
        ),
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": cells(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}}))
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": columns, "rows": rows})
}

/// Formats an object's age the way kubectl does (`45s`, `3m12s`, `2h`, `4d`).
fn age(obj: &Value) -> String {
    let created = obj
        .at("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let Some(created) = created else { return "<unknown>".into() };
    let s = (chrono::Utc::now() - created.to_utc()).num_seconds().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn json_reply(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn status_code(e: &Error) -> StatusCode {
    match e {
        Error::NotFound(..) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Gone(_) => StatusCode::GONE,
        Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A Kubernetes `Status` failure reply.
fn error_reply(e: &Error) -> Response {
    let code = status_code(e);
    let reason = match e {
        Error::NotFound(..) => "NotFound",
        Error::Conflict(m) if m.contains("already exists") => "AlreadyExists",
        Error::Conflict(_) => "Conflict",
        Error::BadRequest(_) => "BadRequest",
        Error::Gone(_) => "Expired",
        Error::UnsupportedMediaType(_) => "UnsupportedMediaType",
        Error::Unprocessable(_) => "Invalid",
        Error::MethodNotAllowed => "MethodNotAllowed",
        Error::TooManyRequests(_) => "TooManyRequests",
        Error::Io { .. } => "InternalError",
    };
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": e.to_string(), "reason": reason, "code": code.as_u16()});
    if let Error::NotFound(kind, name) = e {
        body["details"] = json!({"name": name, "kind": kind});
    }
    if let Error::TooManyRequests(_) = e {
        body["details"] = json!({"causes": [{"reason": "DisruptionBudget", "message": e.to_string()}]});
    }
    json_reply(code, &body)
}
