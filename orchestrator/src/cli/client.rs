//! The admin API over HTTP, and everything that can go wrong talking to it, each said in one line with the
//! exit code scripts can branch on.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, ETAG, HeaderMap, HeaderValue, IF_MATCH};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line makes no sense (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Nothing answered at the URL; nothing was done (exit code 3).
    #[error("cannot reach the orchestrator at {url}: {cause} — is it running? (make up)")]
    Unreachable { url: String, cause: String },
    /// The server answered with a 4xx (exit code 1).
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The server failed (`status`), did not answer in time (no status), or answered what sagactl cannot
    /// read (exit code 4).
    #[error("{message}")]
    Failed { status: Option<u16>, message: String },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Refused { .. } => 1,
            Error::Usage(_) => 2,
            Error::Unreachable { .. } => 3,
            Error::Failed { .. } => 4,
        }
    }

    /// The HTTP status the server refused with, if it did.
    pub fn refused_with(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The same error with `more` added to its message when it leaves the outcome of a request unknown: no
    /// answer in time, or the server's own 504 (accepted, outcome not seen).
    pub fn with_unknown_outcome(self, more: &str) -> Self {
        match self {
            Error::Failed { status: status @ (None | Some(504)), message } => {
                Error::Failed { status, message: format!("{message}; {more}") }
            }
            other => other,
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// The JSON body.
    pub body: Value,
    /// The `ETag` header, if any.
    pub etag: Option<String>,
}

/// The admin API of one orchestrator.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    /// Where a minted token's secret came from (for the hint on a 401); `None` for a given token.
    minted_with: Option<&'static str>,
}

impl Client {
    /// A client of the orchestrator at `base`, sending `token`, waiting `timeout` for each answer.
    pub fn new(base: &str, token: &str, timeout: Duration, minted_with: Option<&'static str>) -> Result<Self, Error> {
        let base = parse_base(base)?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| Error::Usage("the token holds characters a header cannot carry".into()))?;
        bearer.set_sensitive(true);
        let headers = HeaderMap::from_iter([(AUTHORIZATION, bearer)]);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("sagactl/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Failed { status: None, message: format!("cannot set up the HTTP client: {e}") })?;
        Ok(Self { http, base, timeout, minted_with })
    }

    /// The URL of the path made of `segments` (each escaped) with `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("an http URL has a path").pop_if_empty().extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// `GET`.
    pub async fn get(&self, url: Url) -> Result<Answer, Error> {
        self.send(Method::GET, url, None, None).await
    }

    /// `POST` of a JSON `body`, with `If-Match: "version"` when given.
    pub async fn post(&self, url: Url, body: &Value, if_match: Option<u64>) -> Result<Answer, Error> {
        self.send(Method::POST, url, Some(body), if_match).await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<Answer, Error> {
        let what = format!("{method} {}", url.path());
        let mut request = self.http.request(method, url);
        if let Some(version) = if_match {
            request = request.header(IF_MATCH, format!("\"{version}\""));
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            return Err(self.refusal(status, &bytes, &what));
        }
        let body = serde_json::from_slice(&bytes).map_err(|_| Error::Failed {
            status: Some(status.as_u16()),
            message: format!(
                "{what} at {} answered {status} with something that is not JSON; is --url the orchestrator?",
                self.base_text()
            ),
        })?;
        Ok(Answer { body, etag })
    }

    fn base_text(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// A request that got no HTTP answer.
    fn transport(&self, error: &reqwest::Error) -> Error {
        let url = self.base_text().to_owned();
        if error.is_connect() {
            return Error::Unreachable { url, cause: root_cause(error) };
        }
        if error.is_timeout() {
            let after = humantime(self.timeout);
            return Error::Failed {
                status: None,
                message: format!("no answer from the orchestrator at {url} within {after} (raise --timeout)"),
            };
        }
        Error::Failed { status: None, message: format!("talking to the orchestrator at {url}: {}", root_cause(error)) }
    }

    /// An answer with a 4xx or 5xx status.
    fn refusal(&self, status: StatusCode, body: &[u8], what: &str) -> Error {
        let problem = Problem::read(status, body);
        let detail = problem.detail_with_fields();
        let code = status.as_u16();
        let message = match code {
            401 => match self.minted_with {
                Some(source) => format!(
                    "the token was refused: {detail} (sagactl minted it with {source}; pass --token, or set \
                     JWT_SECRET to the orchestrator's secret)"
                ),
                None => format!("the token was refused: {detail}"),
            },
            403 => format!("forbidden: {detail}"),
            404 if problem.from_api => format!("not found: {detail}"),
            404 => format!(
                "not found: {what} (the server at {} does not know this path; is it the orchestrator, and as new \
                 as sagactl?)",
                self.base_text()
            ),
            409 => format!("conflict: {detail}"),
            412 => format!("the resource changed since the version sent: {detail}"),
            428 => format!("the server wants the version acted on (If-Match): {detail}"),
            500 => {
                format!("the orchestrator failed ({code} {}): {detail}; its log says why (make logs)", problem.title)
            }
            503 => format!("the orchestrator is unavailable ({code}): {detail}"),
            _ => format!("{} ({code}): {detail}", problem.title),
        };
        if status.is_server_error() {
            Error::Failed { status: Some(code), message }
        } else {
            Error::Refused { status: code, message }
        }
    }
}

/// The base URL: http only (this build has no TLS; reach a remote orchestrator through a port-forward).
fn parse_base(text: &str) -> Result<Url, Error> {
    let url = Url::parse(text).map_err(|e| Error::Usage(format!("--url {text:?} is not a URL: {e}")))?;
    match url.scheme() {
        "http" if url.host().is_some() => Ok(url),
        "https" => Err(Error::Usage(format!(
            "--url {text:?}: sagactl speaks plain HTTP only; reach the orchestrator over http:// (a port-forward, \
             for example)"
        ))),
        _ => Err(Error::Usage(format!("--url {text:?} is not an http:// URL with a host"))),
    }
}

/// The innermost cause of a transport error, in words: "connection refused" rather than a chain of wrappers.
fn root_cause(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = error.to_string();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "the connection timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        last = current.to_string();
        source = current.source();
    }
    last
}

/// `30s`, `2m`, `1m30s`, `500ms`.
pub fn humantime(duration: Duration) -> String {
    let secs = duration.as_secs();
    match (secs, duration.subsec_millis()) {
        (0, ms) => format!("{ms}ms"),
        (s, _) if s < 60 => format!("{s}s"),
        (s, _) if s % 60 == 0 => format!("{}m", s / 60),
        (s, _) => format!("{}m{}s", s / 60, s % 60),
    }
}

/// An error body: `application/problem+json` from the API, or whatever else the server sent.
#[derive(Debug)]
struct Problem {
    title: String,
    detail: String,
    fields: Vec<(String, String)>,
    /// Whether the body was a problem document (a 404 from the API, not an unknown path).
    from_api: bool,
}

impl Problem {
    fn read(status: StatusCode, body: &[u8]) -> Self {
        let reason = status.canonical_reason().unwrap_or("error").to_owned();
        let Ok(Value::Object(json)) = serde_json::from_slice::<Value>(body) else {
            let text = String::from_utf8_lossy(body).trim().replace('\n', " ");
            let detail = if text.is_empty() { "no details".to_owned() } else { super::table::truncate(&text, 300) };
            return Self { title: reason, detail, fields: Vec::new(), from_api: false };
        };
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let fields = json
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        let get = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                        (get("field"), get("message"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            title: text("title").unwrap_or(reason),
            detail: text("detail").unwrap_or_else(|| "no details".to_owned()),
            fields,
            from_api: true,
        }
    }

    /// The detail and each invalid field, on one line.
    fn detail_with_fields(&self) -> String {
        if self.fields.is_empty() {
            return self.detail.clone();
        }
        let fields: Vec<String> = self.fields.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        format!("{} — {}", self.detail, fields.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(minted_with: Option<&'static str>) -> Client {
        Client::new("http://127.0.0.1:8080", "t", Duration::from_secs(30), minted_with).expect("a client")
    }

    #[test]
    fn urls_escape_their_segments_and_keep_a_base_path() {
        let c = Client::new("http://h:1/ops/", "t", Duration::from_secs(1), None).expect("a client");
        let url = c.url(&["admin", "sagas", "a/b?c"], &[("state", "FAILED".into())]);
        assert_eq!(url.as_str(), "http://h:1/ops/admin/sagas/a%2Fb%3Fc?state=FAILED");
        assert!(matches!(Client::new("https://h", "t", Duration::from_secs(1), None), Err(Error::Usage(_))));
        assert!(matches!(Client::new("h:8080", "t", Duration::from_secs(1), None), Err(Error::Usage(_))));
    }

    #[test]
    fn problems_become_one_line_with_their_fields_and_exit_code_1() {
        let body = br#"{"type":"/problems/validation","title":"Invalid request","status":400,
            "detail":"the query is invalid","errors":[{"field":"state","message":"unknown state"},
            {"field":"limit","message":"too big"}]}"#;
        let error = client(None).refusal(StatusCode::BAD_REQUEST, body, "GET /admin/sagas");
        assert_eq!(
            error.to_string(),
            "Invalid request (400): the query is invalid — state: unknown state; limit: too big"
        );
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn a_refused_minted_token_says_how_it_was_minted() {
        let body = br#"{"title":"Unauthorized","status":401,"detail":"the token's signature does not verify"}"#;
        let error = client(Some("the built-in development secret")).refusal(StatusCode::UNAUTHORIZED, body, "GET /");
        let text = error.to_string();
        assert!(text.starts_with("the token was refused: the token's signature does not verify"), "{text}");
        assert!(text.contains("built-in development secret") && text.contains("JWT_SECRET"), "{text}");
    }

    #[test]
    fn an_unknown_path_is_told_apart_from_an_unknown_saga() {
        let c = client(None);
        let path = c.refusal(StatusCode::NOT_FOUND, b"", "GET /admin/dlq").to_string();
        assert!(path.contains("does not know this path"), "{path}");
        let saga = c.refusal(StatusCode::NOT_FOUND, br#"{"title":"Not found","detail":"no saga x"}"#, "GET /");
        assert_eq!(saga.to_string(), "not found: no saga x");
    }

    #[test]
    fn server_errors_exit_with_4() {
        let body = br#"{"title":"Internal error","status":500,"detail":"the error was logged"}"#;
        let error = client(None).refusal(StatusCode::INTERNAL_SERVER_ERROR, body, "GET /");
        assert_eq!(error.exit_code(), 4);
        assert!(error.to_string().contains("make logs"), "{error}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(humantime(Duration::from_millis(250)), "250ms");
        assert_eq!(humantime(Duration::from_secs(30)), "30s");
        assert_eq!(humantime(Duration::from_secs(120)), "2m");
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
    }
}
