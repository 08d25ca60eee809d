//! The HTTP client the providers share: timeouts, retries with capped
//! exponential backoff and jitter on 5xx answers and transport failures,
//! rate limits waited out when they reset soon enough (and reported with their
//! reset time when not, so a reconciler never hangs for an hour), pagination,
//! and error messages that say what the forge said without the token.
//!
//! The token travels in one header only, marked sensitive; URLs never carry
//! it, redirects are followed only within the API's origin (a custom header
//! like GitLab's `PRIVATE-TOKEN` would otherwise go along to another host),
//! and every text that comes back from the server is scrubbed of it before it
//! reaches a log line or an error.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::token::Token;
use super::ForgeError;

/// How patient the client is. The defaults suit a reconciler pass; tests
/// shrink them so that retries cost milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// One request, from connecting to the last byte of the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Further attempts after a 5xx answer or a transport failure.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each next one, up to
    /// `backoff_max`, and each wait is drawn between half of it and all of it
    /// (jitter, so that many sites do not retry in lockstep).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest wait for a rate limit to reset. A later reset fails the
    /// call at once with [`ForgeError::RateLimited`], which says when it resets.
    pub max_rate_limit_wait: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            // A dead forge costs a pass at most 4 timeouts plus 3.5 s of backoff.
            retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            // GitHub asks for at least a minute after a secondary limit.
            max_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

/// Rate-limit waits within one call: a forge that keeps answering "later"
/// after three waits is reported rather than waited on forever.
const MAX_RATE_LIMIT_WAITS: u32 = 3;

/// Pages followed at most for one listing: a pagination loop on a confused
/// server ends as an error, not as a hang.
const MAX_PAGES: usize = 1000;

/// The longest server message kept in an error.
const MAX_MESSAGE: usize = 400;

/// How the token is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer T` (GitHub).
    Bearer,
    /// `Authorization: token T` (Gitea, Forgejo).
    Token,
    /// `PRIVATE-TOKEN: T` (GitLab).
    PrivateToken,
}

/// Whether a request may be sent again after an answer that leaves open
/// whether the forge acted on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Reads, updates in place, statuses: sending twice is harmless.
    Safe,
    /// Creating a comment: re-sent only when the forge surely did not act
    /// (a rate-limit answer, a refused connection); the caller decides the rest.
    Once,
}

/// How a listing tells where its next page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pager {
    /// `Link: rel="next"` (GitHub).
    Link,
    /// `Link`, else `X-Total-Count` against what came so far, else a full
    /// page (`limit` items) means there may be another.
    Gitea { limit: usize },
    /// `X-Next-Page`, empty on the last page; `Link` when it is absent.
    GitLab,
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// One forge's API client. Clones share the connection pool.
#[derive(Clone)]
pub(crate) struct Client {
    kind: &'static str,
    http: reqwest::Client,
    auth: (HeaderName, HeaderValue),
    token: Token,
    base: Url,
    settings: HttpSettings,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("kind", &self.kind)
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Parses an API base URL: http(s), no credentials in it (they would be sent
/// as basic auth and shown in every log line), no query or fragment.
pub(crate) fn parse_base(kind: &str, url: &str) -> Result<Url, ForgeError> {
    let parsed = Url::parse(url.trim())
        .map_err(|e| ForgeError::Config(format!("{kind}: API URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ForgeError::Config(format!(
            "{kind}: API URL {url:?}: only http and https are supported"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ForgeError::Config(format!(
            "{kind}: the API URL must not carry credentials; give the token with --forge-token-file or --forge-token-env"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ForgeError::Config(format!(
            "{kind}: API URL {url:?}: no query or fragment expected"
        )));
    }
    Ok(parsed)
}

/// `base` with `suffix` (like `/api/v1`) appended unless its path already
/// ends with it, so users may give either the server or the API root.
pub(crate) fn with_api_path(mut base: Url, suffix: &str) -> Url {
    let path = base.path().trim_end_matches('/').to_string();
    if !path.ends_with(suffix) {
        base.set_path(&format!("{path}{suffix}"));
    } else {
        base.set_path(&path);
    }
    base
}

impl Client {
    pub(crate) fn new(
        kind: &'static str,
        base: Url,
        auth: Auth,
        token: Token,
        mut headers: HeaderMap,
        settings: HttpSettings,
    ) -> Result<Client, ForgeError> {
        let config = |what: &str| ForgeError::Config(format!("{kind}: {what}"));
        let (name, value) = match auth {
            Auth::Bearer => (AUTHORIZATION, format!("Bearer {}", token.secret())),
            Auth::Token => (AUTHORIZATION, format!("token {}", token.secret())),
            Auth::PrivateToken => (
                HeaderName::from_static("private-token"),
                token.secret().to_string(),
            ),
        };
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| config("the token is not a valid HTTP header value"))?;
        // Hyper and reqwest print sensitive values as `Sensitive`, never in full.
        value.set_sensitive(true);
        headers
            .entry(reqwest::header::USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "fermata/",
                env!("CARGO_PKG_VERSION")
            )));
        let origin = base.origin();
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if attempt.url().origin() == origin {
                    attempt.follow()
                } else {
                    // The token header would go along to another host.
                    attempt.stop()
                }
            }))
            .build()
            .map_err(|e| {
                config(&format!(
                    "cannot set up the HTTP client: {}",
                    crate::errors::chain(&e)
                ))
            })?;
        Ok(Client {
            kind,
            http,
            auth: (name, value),
            token,
            base,
            settings,
        })
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }

    pub(crate) fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The API URL of `segments` below the base, each one percent-encoded as
    /// one path segment (so GitLab's `group/project` becomes `group%2Fproject`).
    pub(crate) fn url<S: AsRef<str>>(&self, segments: &[S]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            for s in segments {
                path.push(s.as_ref());
            }
        }
        url
    }

    /// The wait before retry number `attempt` (1-based): exponential, capped,
    /// with jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        backoff(&self.settings, attempt, rand::random_range(0.5..=1.0))
    }

    /// Text from the server (or a transport error), made safe to show: the
    /// token, should a server echo it, becomes `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, self.token.secret())
    }

    /// Sends one request, retrying as [`HttpSettings`] says; `Ok` only for a
    /// 2xx answer.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        replay: Replay,
    ) -> Result<Answer, ForgeError> {
        let kind = self.kind;
        let mut failures = 0u32;
        let mut waits = 0u32;
        loop {
            let started = Instant::now();
            let result = self.attempt(&method, url, body).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let (status, headers, bytes) = match result {
                Ok(answer) => answer,
                Err(e) => {
                    let message = self.redact(&crate::errors::chain(&e));
                    let may_resend = replay == Replay::Safe || e.is_connect();
                    if may_resend && failures < self.settings.retries {
                        failures += 1;
                        let wait = self.backoff(failures);
                        tracing::warn!(forge = kind, %method, %url, retry = failures,
                            wait_ms = wait.as_millis() as u64, error = %message,
                            "forge request failed; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    let attempts = if failures > 0 {
                        format!(" (after {} attempts)", failures + 1)
                    } else {
                        String::new()
                    };
                    return Err(ForgeError::Transport {
                        forge: kind,
                        method: method.to_string(),
                        url: url.to_string(),
                        message: format!("{message}{attempts}"),
                    });
                }
            };
            tracing::debug!(forge = kind, %method, %url, status = status.as_u16(), elapsed_ms,
                "forge request");
            if status.is_success() {
                return Ok(Answer {
                    headers,
                    body: bytes,
                });
            }
            if let Some(limit) = rate_limit(status, &headers, &bytes, SystemTime::now()) {
                if limit.wait <= self.settings.max_rate_limit_wait && waits < MAX_RATE_LIMIT_WAITS {
                    waits += 1;
                    tracing::warn!(forge = kind, %method, %url, wait_ms = limit.wait.as_millis() as u64,
                        resets_at = %limit.resets_at.to_rfc3339(), "forge rate limit reached; waiting for it to reset");
                    tokio::time::sleep(limit.wait).await;
                    continue;
                }
                let said = self.server_message(status, &bytes);
                let why = if waits >= MAX_RATE_LIMIT_WAITS {
                    format!("still limited after {waits} waits")
                } else {
                    format!(
                        "not waiting longer than {} s",
                        self.settings.max_rate_limit_wait.as_secs()
                    )
                };
                return Err(ForgeError::RateLimited {
                    forge: kind,
                    method: method.to_string(),
                    url: url.to_string(),
                    resets_at: limit.resets_at,
                    message: format!("{said} ({why})"),
                });
            }
            if status.is_server_error()
                && replay == Replay::Safe
                && failures < self.settings.retries
            {
                failures += 1;
                let wait = self.backoff(failures);
                tracing::warn!(forge = kind, %method, %url, status = status.as_u16(), retry = failures,
                    wait_ms = wait.as_millis() as u64, "forge answered a server error; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            let mut message = self.error_message(status, &bytes);
            if failures > 0 {
                message.push_str(&format!(" (after {} attempts)", failures + 1));
            }
            tracing::debug!(forge = kind, %method, %url, status = status.as_u16(), error = %message,
                "forge request refused");
            return Err(ForgeError::Http {
                forge: kind,
                method: method.to_string(),
                url: url.to_string(),
                status: status.as_u16(),
                message,
            });
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), reqwest::Error> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header(self.auth.0.clone(), self.auth.1.clone());
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok((status, headers, bytes.to_vec()))
    }

    /// What the server said, made safe; the status's reason when it said nothing useful.
    fn server_message(&self, status: StatusCode, body: &[u8]) -> String {
        let said = self.redact(&extract_message(body));
        if said.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            said
        }
    }

    /// The message of an error answer: the server's words plus what to check.
    fn error_message(&self, status: StatusCode, body: &[u8]) -> String {
        let said = self.server_message(status, body);
        let hint = match status.as_u16() {
            401 => Some("the token was refused: check that it is valid, not expired, and meant for this forge"),
            403 => Some("the token is not allowed to do this: check its scopes or permissions on the repository"),
            404 => Some("check the repository name and the API URL, and that the token can see the repository"),
            300..=399 => Some("the forge redirected to another host, which fermata does not follow: check the API URL"),
            _ => None,
        };
        match hint {
            Some(h) => format!("{said} ({h})"),
            None => said,
        }
    }

    /// Parses a JSON answer; the message names the field that did not fit.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        url: &Url,
        body: &[u8],
    ) -> Result<T, ForgeError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(de).map_err(|e| ForgeError::Decode {
            forge: self.kind,
            url: url.to_string(),
            message: self.redact(&e.to_string()),
        })
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, ForgeError> {
        let answer = self.send(Method::GET, url, None, Replay::Safe).await?;
        self.decode(url, &answer.body)
    }

    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &Url,
        body: &serde_json::Value,
        replay: Replay,
    ) -> Result<T, ForgeError> {
        let answer = self.send(method, url, Some(body), replay).await?;
        self.decode(url, &answer.body)
    }

    /// Every item of a paginated listing, in the forge's order.
    pub(crate) async fn get_pages<T: DeserializeOwned>(
        &self,
        first: Url,
        pager: Pager,
    ) -> Result<Vec<T>, ForgeError> {
        let mut url = first;
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let answer = self.send(Method::GET, &url, None, Replay::Safe).await?;
            let items: Vec<T> = self.decode(&url, &answer.body)?;
            let got = items.len();
            all.extend(items);
            let next = match pager {
                // GitLab's offset pagination always says `X-Next-Page` (empty
                // on the last page); its keyset pagination only sends `Link`.
                Pager::GitLab if answer.headers.contains_key("x-next-page") => {
                    header_u64(&answer.headers, "x-next-page")
                        .filter(|_| got > 0)
                        .map(|n| with_page(&url, n))
                }
                _ => match link_next(&answer.headers) {
                    Some(link) => Some(self.follow_link(&url, &link)?),
                    None => match pager {
                        Pager::Link | Pager::GitLab => None,
                        Pager::Gitea { limit } => {
                            let more = match header_u64(&answer.headers, "x-total-count") {
                                Some(total) => got > 0 && (all.len() as u64) < total,
                                None => got > 0 && got >= limit,
                            };
                            more.then(|| with_page(&url, page as u64 + 1))
                        }
                    },
                },
            };
            match next {
                Some(next) => url = next,
                None => return Ok(all),
            }
        }
        Err(ForgeError::Decode {
            forge: self.kind,
            url: url.to_string(),
            message: format!("more than {MAX_PAGES} pages: stopped following the pagination"),
        })
    }

    /// Resolves a `Link` target; one outside the API's origin is refused, as
    /// the token would go with the request.
    fn follow_link(&self, current: &Url, link: &str) -> Result<Url, ForgeError> {
        let next = current.join(link).map_err(|e| ForgeError::Decode {
            forge: self.kind,
            url: current.to_string(),
            message: format!("bad Link header target: {e}"),
        })?;
        if next.origin() != self.base.origin() {
            return Err(ForgeError::Decode {
                forge: self.kind,
                url: current.to_string(),
                message: format!(
                    "the next page is on another host ({}): not followed, the token would go with it",
                    next.origin().ascii_serialization()
                ),
            });
        }
        Ok(next)
    }
}

/// A rate limit read off an answer: how long to wait, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub wait: Duration,
    pub resets_at: DateTime<Utc>,
}

/// Reads a rate-limit answer, any flavour's: `Retry-After` (seconds or an
/// HTTP date: GitHub's secondary limits, GitLab, proxies in front of Gitea),
/// else an exhausted `X-RateLimit-Remaining` with `X-RateLimit-Reset` (GitHub,
/// epoch seconds) or `RateLimit-Remaining`/`RateLimit-Reset` (GitLab). A 429
/// without a hint, or a 403 whose message names a rate limit (GitHub's
/// secondary limit), waits a minute, as GitHub asks. Any other 403 is a
/// permission problem, not a limit.
pub(crate) fn rate_limit(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Option<RateLimit> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::FORBIDDEN {
        return None;
    }
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    let until = |epoch: f64| {
        let wait = Duration::from_secs_f64((epoch - now_secs).max(0.0));
        Some(RateLimit {
            wait,
            resets_at: DateTime::<Utc>::from(now + wait),
        })
    };
    if let Some(value) = header_str(headers, "retry-after") {
        if let Ok(secs) = value.trim().parse::<u64>() {
            return until(now_secs + secs as f64);
        }
        if let Ok(at) = DateTime::parse_from_rfc2822(value.trim()) {
            return until(at.timestamp() as f64);
        }
    }
    let remaining = header_u64(headers, "x-ratelimit-remaining")
        .or_else(|| header_u64(headers, "ratelimit-remaining"));
    let reset =
        header_u64(headers, "x-ratelimit-reset").or_else(|| header_u64(headers, "ratelimit-reset"));
    let exhausted = remaining == Some(0) || status == StatusCode::TOO_MANY_REQUESTS;
    if exhausted {
        if let Some(reset) = reset {
            return until(reset as f64);
        }
    }
    let minute = until(now_secs + 60.0);
    if exhausted {
        return minute;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if text.contains("rate limit") {
        return minute;
    }
    None
}

/// The wait before retry `attempt` (1-based) with jitter factor `jitter` in [0.5, 1].
fn backoff(settings: &HttpSettings, attempt: u32, jitter: f64) -> Duration {
    let doubling = 1u32 << attempt.saturating_sub(1).min(20);
    let full = settings
        .backoff_base
        .saturating_mul(doubling)
        .min(settings.backoff_max);
    full.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The `rel="next"` target of the `Link` headers, if any.
pub(crate) fn link_next(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_link_next)
}

/// `<url>; rel="next", <url>; rel="last"` (RFC 8288; Gitea omits the space
/// after the comma, and a `rel` may list several relations).
fn parse_link_next(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let tail = &after[close + 1..];
        let params = match tail.find('<') {
            Some(i) => &tail[..i],
            None => tail,
        };
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            match p.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("rel") => v
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next")),
                _ => false,
            }
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &tail[params.len()..];
    }
    None
}

/// `url` with its `page` query parameter set to `page`.
pub(crate) fn with_page(url: &Url, page: u64) -> Url {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut next = url.clone();
    next.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("page", &page.to_string());
    next
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.trim().parse().ok())
}

/// The human part of an error answer: `message` (GitHub, Gitea, GitLab; an
/// object on GitLab validation errors), `error` and `error_description`
/// (GitLab, OAuth), each of `errors` (GitHub's validation details); plain
/// text as is, HTML (a proxy's error page) dropped.
pub(crate) fn extract_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        if text.starts_with('<') {
            return String::new();
        }
        return cut(text);
    };
    let as_text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut parts: Vec<String> = Vec::new();
    for key in ["message", "error", "error_description"] {
        if let Some(v) = value.get(key) {
            let s = as_text(v);
            if !s.is_empty() && !parts.contains(&s) {
                parts.push(s);
            }
        }
    }
    if let Some(serde_json::Value::Array(errors)) = value.get("errors") {
        for e in errors {
            let s = e.get("message").map(as_text).unwrap_or_else(|| as_text(e));
            if !s.is_empty() {
                parts.push(s);
            }
        }
    }
    if parts.is_empty() && !value.is_object() {
        return cut(&as_text(&value));
    }
    cut(&parts.join(": "))
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn link_next_reads_github_gitea_and_gitlab_forms() {
        let gh = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        assert_eq!(
            parse_link_next(gh).as_deref(),
            Some("https://api.github.com/repositories/1/pulls?page=2")
        );
        let gitea = r#"<http://g/api/v1/repos/a/b/pulls?limit=2&page=3&state=open>; rel="next",<http://g/api/v1/repos/a/b/pulls?limit=2&page=4&state=open>; rel="last""#;
        assert_eq!(
            parse_link_next(gitea).as_deref(),
            Some("http://g/api/v1/repos/a/b/pulls?limit=2&page=3&state=open")
        );
        let last_page = r#"<http://g/x?page=1>; rel="first", <http://g/x?page=3>; rel="prev""#;
        assert_eq!(parse_link_next(last_page), None);
        assert_eq!(
            parse_link_next("<http://g/x?page=2>; rel=\"prev next\"").as_deref(),
            Some("http://g/x?page=2")
        );
        let h = headers(&[
            ("link", r#"<http://g/x?page=1>; rel="first""#),
            ("link", r#"<http://g/x?page=9>; rel=next"#),
        ]);
        assert_eq!(link_next(&h).as_deref(), Some("http://g/x?page=9"));
    }

    #[test]
    fn with_page_replaces_the_page_parameter() {
        let u = Url::parse("http://h/a?state=open&page=1&per_page=2").unwrap();
        assert_eq!(
            with_page(&u, 3).as_str(),
            "http://h/a?state=open&per_page=2&page=3"
        );
    }

    #[test]
    fn rate_limits_of_every_flavour_are_recognised() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        // GitHub primary: 403 with remaining 0 and an epoch reset.
        let gh = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000030"),
        ]);
        let l = rate_limit(StatusCode::FORBIDDEN, &gh, b"{}", now).unwrap();
        assert_eq!(l.wait, Duration::from_secs(30));
        assert_eq!(l.resets_at.timestamp(), 1_000_030);
        // GitHub secondary: retry-after wins.
        let sec = headers(&[("retry-after", "7"), ("x-ratelimit-remaining", "12")]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &sec, b"", now)
                .unwrap()
                .wait,
            Duration::from_secs(7)
        );
        // GitHub secondary without headers: a minute.
        let body = br#"{"message":"You have exceeded a secondary rate limit."}"#;
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &HeaderMap::new(), body, now)
                .unwrap()
                .wait,
            Duration::from_secs(60)
        );
        // GitLab: 429 with RateLimit-Reset.
        let gl = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "1000005")]);
        assert_eq!(
            rate_limit(StatusCode::TOO_MANY_REQUESTS, &gl, b"Retry later", now)
                .unwrap()
                .wait,
            Duration::from_secs(5)
        );
        // An HTTP-date Retry-After.
        let date = headers(&[("retry-after", "Mon, 12 Jan 1970 13:46:50 GMT")]);
        assert_eq!(
            rate_limit(StatusCode::TOO_MANY_REQUESTS, &date, b"", now)
                .unwrap()
                .wait,
            Duration::from_secs(10)
        );
        // A reset in the past: no wait at all.
        let past = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &past, b"", now)
                .unwrap()
                .wait,
            Duration::ZERO
        );
        // A plain 403 is a permission problem.
        let perm = headers(&[("x-ratelimit-remaining", "4999")]);
        let body = br#"{"message":"Resource not accessible by integration"}"#;
        assert_eq!(rate_limit(StatusCode::FORBIDDEN, &perm, body, now), None);
        assert_eq!(rate_limit(StatusCode::BAD_GATEWAY, &gh, b"", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = HttpSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..HttpSettings::default()
        };
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&s, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&s, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(&s, 4, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(&s, 60, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(&s, 2, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn messages_are_extracted_from_each_flavour() {
        assert_eq!(
            extract_message(br#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#),
            "Bad credentials"
        );
        assert_eq!(
            extract_message(br#"{"message":"Validation Failed","errors":[{"resource":"IssueComment","code":"custom","field":"body","message":"body is too long (maximum is 65536 characters)"}]}"#),
            "Validation Failed: body is too long (maximum is 65536 characters)"
        );
        assert_eq!(
            extract_message(br#"{"message":{"note":["is too long"]}}"#),
            r#"{"note":["is too long"]}"#
        );
        assert_eq!(
            extract_message(br#"{"error":"state does not have a valid value"}"#),
            "state does not have a valid value"
        );
        assert_eq!(
            extract_message(b"<html><body>502 Bad Gateway</body></html>"),
            ""
        );
        assert_eq!(extract_message(b"Retry later\n"), "Retry later");
        assert!(extract_message(&[b'x'; 2000]).len() < 500);
    }

    #[test]
    fn base_urls_are_checked_and_completed() {
        assert!(parse_base("gitea", "https://user:pw@git.example.com").is_err());
        assert!(parse_base("gitea", "ftp://git.example.com").is_err());
        assert!(parse_base("gitea", "not a url").is_err());
        let b = parse_base("gitea", "https://git.example.com").unwrap();
        assert_eq!(
            with_api_path(b, "/api/v1").as_str(),
            "https://git.example.com/api/v1"
        );
        let b = parse_base("gitea", "https://git.example.com/sub/api/v1/").unwrap();
        assert_eq!(
            with_api_path(b, "/api/v1").as_str(),
            "https://git.example.com/sub/api/v1"
        );
    }

    #[test]
    fn url_segments_are_encoded_one_by_one() {
        let c = Client::new(
            "gitlab",
            Url::parse("https://gl.example.com/api/v4").unwrap(),
            Auth::PrivateToken,
            Token::new("t0ken-value").unwrap(),
            HeaderMap::new(),
            HttpSettings::default(),
        )
        .unwrap();
        assert_eq!(
            c.url(&["projects", "acme/platform/fleet", "merge_requests"])
                .as_str(),
            "https://gl.example.com/api/v4/projects/acme%2Fplatform%2Ffleet/merge_requests"
        );
        assert!(!format!("{c:?}").contains("t0ken-value"));
        let here = Url::parse("https://gl.example.com/api/v4/projects/1/notes").unwrap();
        assert!(c
            .follow_link(&here, "/api/v4/projects/1/notes?page=2")
            .is_ok());
        let e = c
            .follow_link(&here, "https://evil.example.net/steal?page=2")
            .unwrap_err();
        assert!(e.to_string().contains("another host"), "{e}");
        assert_eq!(c.redact("echo t0ken-value back"), "echo *** back");
    }
}
