//! The Kubernetes REST API over HTTP: discovery, CRUD, patch, watch.

use crate::error::ApiError;
use crate::faults::Faults;
use crate::patch::{self, PatchKind};
use crate::resources::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{DeleteOptions, Event, EventType, Store, Sub};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Shared state of the API handlers.
pub struct ApiState {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub requests: Arc<crate::requests::RequestCounts>,
    pub server_address: String,
    pub bookmark_interval: Duration,
}

type Shared = Arc<ApiState>;

const MAX_BODY: usize = 64 * 1024 * 1024;

pub fn router(state: Shared) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = value_response(code, &self.status());
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// A parsed resource request path.
struct Target {
    info: Arc<ResourceInfo>,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn dispatch(State(state): State<Shared>, req: Request) -> Response {
    match handle(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: Shared, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = parts.method.clone();
    match segs.as_slice() {
        ["version"] => return Ok(value_response(StatusCode::OK, &version_info())),
        ["healthz"] | ["readyz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["openapi", "v3"] => {
            return Ok(value_response(
                StatusCode::OK,
                &openapi_v3_root(&state.store.registry()),
            ));
        }
        ["openapi", "v3", "api", "v1"] => {
            return openapi_v3_group(&state.store.registry(), "", "v1");
        }
        ["openapi", "v3", "apis", group, version] => {
            return openapi_v3_group(&state.store.registry(), group, version);
        }
        // Older kubectl (1.20) reads the v2 document as protobuf before apply; an empty
        // message is a valid, empty document, so it validates on the server instead.
        ["openapi", "v2"] => {
            return Ok((
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )],
                Vec::<u8>::new(),
            )
                .into_response());
        }
        ["openapi", ..] => return Err(not_found_path()),
        ["api"] => {
            return Ok(value_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": state.server_address}]}),
            ));
        }
        ["apis"] => {
            let groups = state.store.registry().api_groups();
            return Ok(value_response(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ));
        }
        ["apis", group] => {
            let groups = state.store.registry().api_groups();
            return groups
                .into_iter()
                .find(|g| g["name"] == *group)
                .map(|g| value_response(StatusCode::OK, &g))
                .ok_or_else(not_found_path);
        }
        ["api", "v1"] => {
            return state
                .store
                .registry()
                .resource_list("", "v1")
                .map(|l| value_response(StatusCode::OK, &l))
                .ok_or_else(not_found_path);
        }
        ["apis", group, version] => {
            return state
                .store
                .registry()
                .resource_list(group, version)
                .map(|l| value_response(StatusCode::OK, &l))
                .ok_or_else(not_found_path);
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let target = resolve(&state.store, group, version, rest)?;
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, target.name.is_some(), is_watch) {
        (&Method::GET, false, true) => "watch",
        (&Method::GET, false, false) => "list",
        (&Method::GET, true, _) => "get",
        (&Method::POST, false, _) => "create",
        (&Method::POST, true, _) if target.sub.as_deref() == Some("eviction") => "create",
        (&Method::PUT, true, _) => "update",
        (&Method::PATCH, true, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            )));
        }
    };
    let resource = match &target.sub {
        Some(s) => format!("{}/{s}", target.info.plural),
        None => target.info.plural.clone(),
    };
    state.requests.count(verb, &resource);
    let observer = parts.headers.contains_key(crate::faults::OBSERVER_HEADER);
    let fault = if observer {
        crate::faults::FaultDecision::default()
    } else {
        state.faults.decide(verb, &resource)
    };
    if !fault.delay.is_zero() {
        tokio::time::sleep(fault.delay).await;
    }
    if let Some(code) = fault.fail_with {
        let mut error = ApiError::from_code(code, format!("injected fault for {verb} {resource}"));
        if let Some(seconds) = fault.retry_after {
            error.retry_after = Some(seconds);
            error.details = Some(serde_json::json!({"retryAfterSeconds": seconds}));
        }
        return Err(error);
    }
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request("kubesim does not support dryRun"));
    }
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    if target.sub.as_deref() == Some("scale") && target.info.has_scale() {
        return crate::scale::serve(
            &state.store,
            &target.info,
            &target.namespace.clone().unwrap_or_default(),
            target.name.as_deref().unwrap_or_default(),
            verb,
            &parts.headers,
            &body,
        );
    }
    if target.sub.as_deref() == Some("eviction")
        && target.info.group.is_empty()
        && target.info.plural == "pods"
        && verb == "create"
    {
        let status = crate::eviction::serve(
            &state.store,
            &target.namespace.clone().unwrap_or_default(),
            target.name.as_deref().unwrap_or_default(),
            &body,
        )?;
        return Ok(value_response(StatusCode::CREATED, &status));
    }
    let sub = match target.sub.as_deref() {
        None => Sub::Main,
        Some("status") if target.info.has_status => Sub::Status,
        Some("finalize") if verb == "update" && info_is_namespaces(&target.info) => Sub::Finalize,
        Some(_) => return Err(not_found_path()),
    };
    let info = target.info.clone();
    let ns = target.namespace.clone().unwrap_or_default();
    let store = &state.store;
    match verb {
        "watch" => watch(state.clone(), &target, &query, &parts.headers),
        "list" => list(store, &target, &query, crate::table::wanted(&parts.headers)),
        "get" => {
            let name = target.name.as_deref().unwrap_or_default();
            let obj = store
                .get(&info.key(), &ns, name)
                .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, name))?;
            if crate::table::wanted(&parts.headers) {
                let table = crate::table::render(store, &info, store.current_rv(), &[obj]);
                return Ok(value_response(StatusCode::OK, &table));
            }
            Ok(object_response(StatusCode::OK, &info, &obj))
        }
        "create" => {
            let obj = parse_object(&parts.headers, &body)?;
            let created = store.create(&info, &ns, obj)?;
            Ok(object_response(StatusCode::CREATED, &info, &created))
        }
        "update" => {
            let obj = parse_object(&parts.headers, &body)?;
            let name = target.name.as_deref().unwrap_or_default();
            let updated = store.update(&info, &ns, name, obj, sub)?;
            Ok(object_response(StatusCode::OK, &info, &updated))
        }
        "patch" => {
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)?;
            // Custom resources have no patch strategy to merge by.
            if kind == PatchKind::Strategic && info.crd.is_some() {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            let p = patch::parse_body(kind, &body)?;
            let name = target.name.as_deref().unwrap_or_default();
            let existed = store.get(&info.key(), &ns, name).is_some();
            let patched = store.patch(&info, &ns, name, kind, &p, sub)?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok(object_response(code, &info, &patched))
        }
        "delete" => {
            let opts = delete_options(&body, &query)?;
            let name = target.name.as_deref().unwrap_or_default();
            let deleted = store.delete(&info, &ns, name, &opts)?;
            let still_there = store.get(&info.key(), &ns, name).is_some();
            if still_there || info.returns_deleted_object() {
                return Ok(object_response(StatusCode::OK, &info, &deleted));
            }
            // Named by the storage resource: events.k8s.io deletes report core `events`.
            let mut details = json!({"name": name, "kind": info.key().plural});
            if !info.key().group.is_empty() {
                details["group"] = json!(info.key().group);
            }
            if let Some(uid) = crate::util::str_at(&deleted, "/metadata/uid") {
                details["uid"] = json!(uid);
            }
            Ok(value_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
        "deletecollection" => {
            let opts = delete_options(&body, &query)?;
            let (labels, fields) = selectors(&info, &query)?;
            let page = store.list(
                &info.key(),
                target.namespace.as_deref(),
                &labels,
                &fields,
                None,
                None,
            );
            let mut deleted = Vec::new();
            for obj in page.items {
                let o_ns = crate::util::namespace_of(&obj).to_string();
                if let Ok(d) = store.delete(&info, &o_ns, crate::util::name_of(&obj), &opts) {
                    deleted.push(d);
                }
            }
            let rv = store.current_rv();
            Ok(json_response(
                StatusCode::OK,
                render_list(&info, rv, None, &deleted),
            ))
        }
        _ => Err(not_found_path()),
    }
}

fn info_is_namespaces(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "namespaces"
}

fn resolve(store: &Store, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let lookup = |plural: &str| {
        store.resource(group, version, plural).ok_or_else(|| {
            if store.registry().has_group_version(group, version) {
                not_found_path()
            } else {
                ApiError::new(404, "NotFound", format!("the server could not find the requested resource (no {group}/{version} API)"))
            }
        })
    };
    let t = |info, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        info,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    };
    let namespaced_collection = |ns: &str, res: &str| -> Result<Arc<ResourceInfo>, ApiError> {
        let info = lookup(res)?;
        if !info.namespaced || (group.is_empty() && ns.is_empty()) {
            return Err(not_found_path());
        }
        Ok(info)
    };
    let target = match rest {
        [res] => t(lookup(res)?, None, None, None),
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            t(lookup("namespaces")?, None, Some(ns), Some(sub))
        }
        ["namespaces", ns, res] => t(namespaced_collection(ns, res)?, Some(ns), None, None),
        ["namespaces", ns, res, name] => {
            t(namespaced_collection(ns, res)?, Some(ns), Some(name), None)
        }
        ["namespaces", ns, res, name, sub] => t(
            namespaced_collection(ns, res)?,
            Some(ns),
            Some(name),
            Some(sub),
        ),
        [res, name] => {
            let info = lookup(res)?;
            if info.namespaced {
                return Err(not_found_path());
            }
            t(info, None, Some(name), None)
        }
        [res, name, sub] => {
            let info = lookup(res)?;
            if info.namespaced {
                return Err(not_found_path());
            }
            t(info, None, Some(name), Some(sub))
        }
        _ => return Err(not_found_path()),
    };
    Ok(target)
}

fn parse_query(q: &str) -> HashMap<String, String> {
    serde_urlencoded_pairs(q).into_iter().collect()
}

/// Decodes `a=b&c=d` with percent-decoding and `+` as space.
fn serde_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The object of a create or update body: JSON, or the protobuf kubectl's generators send.
pub(crate) fn parse_object(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    let base = ct.split(';').next().unwrap_or_default().trim();
    if base == crate::protobuf::MEDIA_TYPE {
        use crate::protobuf::DecodeError;
        return crate::protobuf::decode_object(body).map_err(|e| match e {
            DecodeError::UnknownKind { .. }
            | DecodeError::ContentType(_)
            | DecodeError::ContentEncoding(_) => {
                ApiError::unsupported_body_type(ct, &e.to_string())
            }
            DecodeError::Schema(_) => ApiError::internal(e.to_string()),
            _ => ApiError::bad_request(format!(
                "the object provided is unrecognized: error decoding protobuf: {e}"
            )),
        });
    }
    if base.contains("yaml") {
        // The same YAML reading as apply patches.
        return patch::parse_body(PatchKind::Apply, body);
    }
    if !base.is_empty() && !base.contains("json") {
        return Err(ApiError::unsupported_body_type(ct, "unknown media type"));
    }
    parse_json(body)
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized: error decoding JSON: {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized: not a JSON object",
        ));
    }
    Ok(v)
}

/// The selectors of a request; a view's field paths are translated to the stored shape.
fn selectors(
    info: &ResourceInfo,
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let (labels, fields) = raw_selectors(query)?;
    let fields = match info.view() {
        Some(view) => fields.rename_roots(|p| view.storage_field(p)),
        None => fields,
    };
    // Only the fields the real server indexes can be selected, by their stored names.
    let key = info.key();
    let custom = info.crd.is_some();
    if let Some(path) = fields
        .paths()
        .find(|p| !crate::selector::selectable_field(&key.group, &key.plural, custom, p))
    {
        return Err(ApiError::bad_request(format!(
            "field label not supported: {path}"
        )));
    }
    Ok((labels, fields))
}

fn raw_selectors(
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(
        query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(
        query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn delete_options(
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions::default();
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(ApiError::bad_request("kubesim does not support dryRun"));
        }
        opts.grace_period_seconds = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        opts.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(g) = query.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    Ok(opts)
}

/// Writes an object, fixing apiVersion when it is read through another served version
/// and converting it when read through a view of another resource.
fn write_object(info: &ResourceInfo, obj: &Value, out: &mut Vec<u8>) {
    if let Some(view) = info.view() {
        let _ = serde_json::to_writer(&mut *out, &view.to_view(obj));
        return;
    }
    let want = info.api_version();
    if obj.get("apiVersion").and_then(Value::as_str) == Some(want.as_str()) {
        let _ = serde_json::to_writer(&mut *out, obj);
    } else {
        let mut o = obj.clone();
        o["apiVersion"] = Value::String(want);
        let _ = serde_json::to_writer(&mut *out, &o);
    }
}

fn object_response(code: StatusCode, info: &ResourceInfo, obj: &Value) -> Response {
    let mut out = Vec::new();
    write_object(info, obj, &mut out);
    json_response(code, out)
}

fn render_list(
    info: &ResourceInfo,
    rv: u64,
    cont: Option<(String, Option<usize>)>,
    items: &[Arc<Value>],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + items.len() * 512);
    let mut md = json!({"resourceVersion": rv.to_string()});
    if let Some((c, remaining)) = cont {
        md["continue"] = Value::String(c);
        if let Some(n) = remaining {
            md["remainingItemCount"] = json!(n);
        }
    }
    let head = json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": md});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    out.extend_from_slice(&head[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    // The real server leaves apiVersion and kind out of built-in list items (custom
    // resources, being unstructured, keep them).
    let builtin = info.crd.is_none();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if builtin {
            let mut shown = match info.view() {
                Some(view) => view.to_view(item),
                None => (**item).clone(),
            };
            if let Some(o) = shown.as_object_mut() {
                o.remove("apiVersion");
                o.remove("kind");
            }
            let _ = serde_json::to_writer(&mut out, &shown);
        } else {
            write_object(info, item, &mut out);
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

fn list(
    store: &Store,
    target: &Target,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(&target.info, query)?;
    let limit = match query.get("limit") {
        Some(l) if !l.is_empty() => {
            let n: i64 = l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?;
            if n > 0 { Some(n as usize) } else { None }
        }
        _ => None,
    };
    // The continue token carries the first page's resourceVersion and the last key served.
    let (first_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let decoded =
                unhex(c).ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            let mut parts = decoded.splitn(3, '\u{0}');
            let rv: u64 = parts
                .next()
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            let ns = parts.next().unwrap_or_default().to_string();
            let name = parts
                .next()
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?
                .to_string();
            (Some(rv), Some((ns, name)))
        }
        None => (None, None),
    };
    let page = store.list(
        &target.info.key(),
        target.namespace.as_deref(),
        &labels,
        &fields,
        limit,
        after,
    );
    let rv = first_rv.unwrap_or(page.resource_version);
    let cont = page
        .next
        .map(|(ns, name)| hex(&format!("{rv}\u{0}{ns}\u{0}{name}")));
    if as_table {
        let mut table = crate::table::render(store, &target.info, rv, &page.items);
        if let Some(c) = cont {
            table["metadata"]["continue"] = Value::String(c);
        }
        return Ok(value_response(StatusCode::OK, &table));
    }
    Ok(json_response(
        StatusCode::OK,
        render_list(
            &target.info,
            rv,
            cont.map(|c| (c, page.remaining)),
            &page.items,
        ),
    ))
}

/// The OpenAPI v3 index: one document per group/version.
fn openapi_v3_root(registry: &crate::resources::Registry) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in registry.groups.keys() {
        let p = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=kubesim")}),
        );
    }
    json!({"paths": paths})
}

/// A schema-less OpenAPI v3 document: enough for kubectl to see that `fieldValidation` is
/// supported, so it validates on the server (which accepts any field) instead of downloading schemas.
fn openapi_v3_group(
    registry: &crate::resources::Registry,
    group: &str,
    version: &str,
) -> Result<Response, ApiError> {
    let resources = registry
        .groups
        .get(&(group.to_string(), version.to_string()))
        .ok_or_else(not_found_path)?;
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    for info in resources.values() {
        let gvk = json!({"group": group, "version": version, "kind": info.kind});
        let params = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
        let op = |id: &str| json!({"operationId": id, "parameters": params, "responses": {"200": {"description": "OK"}}, "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk});
        let item = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural)
        } else {
            format!("{prefix}/{}/{{name}}", info.plural)
        };
        paths.insert(item, json!({"patch": op(&format!("patch{}", info.kind)), "put": op(&format!("replace{}", info.kind))}));
    }
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-kubesim"},
        "paths": paths,
        "components": {"schemas": {}},
    });
    Ok(value_response(StatusCode::OK, &doc))
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kubesim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
        "emulationMajor": "1",
        "emulationMinor": "33",
    })
}

/// What a watcher wants to see.
struct WatchFilter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && crate::util::namespace_of(obj) != ns
        {
            return false;
        }
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }

    /// The event type this watcher sees, if any: selector changes become ADDED or DELETED.
    fn event_type(&self, ev: &Event) -> Option<EventType> {
        let now = self.matches(&ev.object);
        let before = ev.old.as_deref().is_some_and(|o| self.matches(o));
        match ev.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => (now || before).then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn object_bytes(info: &ResourceInfo, obj: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_object(info, obj, &mut out);
    out
}

fn bookmark(info: &ResourceInfo, rv: u64, initial_end: bool) -> Bytes {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": md});
    event_line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
}

fn watch(
    state: Shared,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let observer = headers.contains_key(crate::faults::OBSERVER_HEADER);
    let (labels, fields) = selectors(&target.info, query)?;
    let info = target.info.clone();
    let filter = WatchFilter {
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let bookmarks = matches!(
        query.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let send_initial = matches!(
        query.get("sendInitialEvents").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let expired = since.is_some() && !observer && state.faults.take_watch_expiry();
    let start = match state.store.watch(&info.key(), since).and_then(|start| {
        if expired {
            Err(ApiError::gone(format!(
                "too old resource version: {} (injected fault)",
                since.unwrap_or_default()
            )))
        } else {
            Ok(start)
        }
    }) {
        Ok(s) => s,
        Err(e) => {
            // Like the real server: an expired version is an ERROR event on a 200 stream, so clients relist.
            let line = event_line(
                "ERROR",
                &serde_json::to_vec(&e.status()).unwrap_or_default(),
            );
            return Ok(stream_response(futures::stream::iter([
                Ok::<_, Infallible>(line),
            ])));
        }
    };
    let mut closer = state.faults.watch_closer();
    closer.mark_unchanged();
    let interval = state.bookmark_interval;
    tokio::spawn(async move {
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(b).await.is_ok() }
        };
        for obj in &start.initial {
            if filter.matches(obj) && !send(event_line("ADDED", &object_bytes(&info, obj))).await {
                return;
            }
        }
        for ev in &start.replay {
            if let Some(kind) = filter.event_type(ev)
                && !send(event_line(kind.as_str(), &event_object(&info, ev))).await
            {
                return;
            }
        }
        let mut last_rv = start.start_rv;
        if send_initial && bookmarks && !send(bookmark(&info, last_rv, true)).await {
            return;
        }
        let mut rx_events = start.rx;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(interval);
        ticker.reset();
        let mut bookmarked_rv = last_rv;
        loop {
            tokio::select! {
                ev = rx_events.recv() => match ev {
                    Ok(ev) => {
                        last_rv = ev.rv;
                        if let Some(kind) = filter.event_type(&ev)
                            && !send(event_line(kind.as_str(), &event_object(&info, &ev))).await
                        {
                            return;
                        }
                    }
                    // A lagging watcher is cut off; the client re-watches from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => return,
                _ = closer.changed(), if !observer => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if last_rv != bookmarked_rv {
                        bookmarked_rv = last_rv;
                        if !send(bookmark(&info, last_rv, false)).await {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(stream_response(stream))
}

fn event_object(info: &ResourceInfo, ev: &Event) -> Bytes {
    if ev.object.get("apiVersion").and_then(Value::as_str) == Some(info.api_version().as_str()) {
        ev.object_json()
    } else {
        Bytes::from(object_bytes(info, &ev.object))
    }
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding_handles_selectors() {
        assert_eq!(
            super::percent_decode("app%3Dweb%2Ctier+in+%28a%29"),
            "app=web,tier in (a)"
        );
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(
            super::unhex(&super::hex("5\u{0}ns\u{0}n")).unwrap(),
            "5\u{0}ns\u{0}n"
        );
    }
}
