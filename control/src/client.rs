//! The client side of `limpet affinity ...`: one HTTP/1.1 request to the
//! admin API of a running limpet. The API is on loopback and speaks plain
//! JSON, so a few lines over `TcpStream` serve better than an HTTP client
//! stack.

use crate::admin::AffinityView;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach limpet's admin API at {addr}: {source} (is `limpet run` running, with --admin {addr}?)"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("admin API sent something that is not an HTTP response")]
    BadResponse,
    #[error("admin API sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Percent-encodes a query value (service names hold `/` and `:`).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(service: Option<&str>, client: Option<IpAddr>) -> String {
    let mut parts = Vec::new();
    if let Some(s) = service {
        parts.push(format!("service={}", encode(s)));
    }
    if let Some(c) = client {
        parts.push(format!("client={}", encode(&c.to_string())));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Where a running limpet's admin API is, and the token its `/v1` wants
/// (`--admin-token-file`), if any.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// Sends one request and returns the response body on a 2xx status.
pub fn request(api: &AdminApi, method: &str, path: &str) -> Result<String, ClientError> {
    let (status, _, body) = request_full(api, method, path)?;
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(ClientError::Status { status, body })
    }
}

/// Sends one request and returns the status, the head and the body,
/// whatever the status.
pub fn request_full(
    api: &AdminApi,
    method: &str,
    path: &str,
) -> Result<(u16, String, String), ClientError> {
    let addr = api.addr;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|source| ClientError::Connect { addr, source })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = api
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::BadResponse)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::BadResponse)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, head.to_owned(), body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Starts draining `target` (`node`, `ADDR`, `ADDR:PORT`) with `deadline`
/// (`300s`, `5m`).
pub fn drain_start(api: &AdminApi, target: &str, deadline: &str) -> Result<(), ClientError> {
    request(
        api,
        "POST",
        &format!(
            "/v1/drain?target={}&deadline={}",
            encode(target),
            encode(deadline)
        ),
    )
    .map(drop)
}

/// Ends a drain.
pub fn drain_cancel(api: &AdminApi, target: &str) -> Result<(), ClientError> {
    request(
        api,
        "DELETE",
        &format!("/v1/drain?target={}", encode(target)),
    )
    .map(drop)
}

/// Every drain and its progress.
pub fn drains(api: &AdminApi) -> Result<Vec<crate::admin::DrainView>, ClientError> {
    Ok(serde_json::from_str(&request(api, "GET", "/v1/drain")?)?)
}

/// The table `limpet drain` prints.
pub fn render_drains(drains: &[crate::admin::DrainView]) -> String {
    if drains.is_empty() {
        return "nothing is being drained\n".to_owned();
    }
    let mut out = format!(
        "{:<40} {:<16} {:>9} {:>14} {:>17}  BACKENDS\n",
        "TARGET", "PHASE", "DEADLINE", "CLIENTS PINNED", "CONNECTIONS OPEN"
    );
    for d in drains {
        let phase = match d.phase {
            crate::drain::Phase::Draining => "draining",
            crate::drain::Phase::DeadlinePassed => "deadline passed",
        };
        let deadline = if d.deadline_in_seconds >= 0 {
            format!("in {}s", d.deadline_in_seconds)
        } else {
            format!("{}s ago", -d.deadline_in_seconds)
        };
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:>9} {:>14} {:>17}  {}",
            d.target,
            phase,
            deadline,
            d.clients_pinned,
            d.connections_open,
            d.backends.join(",")
        );
    }
    out
}

/// `GET /v1/status`, as JSON.
pub fn status(api: &AdminApi) -> Result<serde_json::Value, ClientError> {
    Ok(serde_json::from_str(&request(api, "GET", "/v1/status")?)?)
}

pub fn list(
    api: &AdminApi,
    service: Option<&str>,
    client: Option<IpAddr>,
) -> Result<Vec<AffinityView>, ClientError> {
    let body = request(
        api,
        "GET",
        &format!("/v1/affinity{}", query(service, client)),
    )?;
    Ok(serde_json::from_str(&body)?)
}

pub fn delete(api: &AdminApi, client: IpAddr, service: Option<&str>) -> Result<u64, ClientError> {
    let body = request(
        api,
        "DELETE",
        &format!("/v1/affinity{}", query(service, Some(client))),
    )?;
    deleted(&body)
}

pub fn flush(api: &AdminApi, service: Option<&str>) -> Result<u64, ClientError> {
    let body = request(
        api,
        "POST",
        &format!("/v1/affinity/flush{}", query(service, None)),
    )?;
    deleted(&body)
}

fn deleted(body: &str) -> Result<u64, ClientError> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    Ok(v.get("deleted")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

/// What `limpet status` prints: readiness, the snapshot, and each service
/// address with whether it is announced and why.
pub fn render_status(v: &serde_json::Value) -> String {
    let yes = |b: Option<bool>| if b == Some(true) { "yes" } else { "no" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ready: {}  (source in reach: {})",
        yes(v["ready"].as_bool()),
        yes(v["source_connected"].as_bool())
    );
    let _ = writeln!(
        out,
        "snapshot: generation {}, {} service ports",
        v["generation"], v["service_ports"]
    );
    let a = &v["announce"];
    if a.is_null() {
        out.push_str("announce: off (no --announce)\n");
        return out;
    }
    let text = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
    let _ = writeln!(
        out,
        "announce: {} (socket {}, fragment {})",
        text("speaker"),
        text("socket"),
        text("fragment")
    );
    let link = if a["link_up"].as_bool() == Some(true) {
        "up".to_owned()
    } else {
        format!(
            "down: every route withdrawn ({})",
            text("withdrawn_because")
        )
    };
    let _ = writeln!(out, "  liveness link {}: {link}", text("link"));
    let speaker = if a["speaker_ok"].as_bool() == Some(true) {
        format!("ok, took the routes {} s ago", a["configured_ago_s"])
    } else {
        format!("NOT OK: {}", text("last_error"))
    };
    let _ = writeln!(out, "  speaker: {speaker}");
    let routes = a["routes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<40} {:<10} {:<30} WHY",
        "ADDRESS", "ANNOUNCED", "SERVICES"
    );
    for r in routes {
        let services: Vec<&str> = r["services"]
            .as_array()
            .map(|s| s.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<40} {:<10} {:<30} {}",
            r["address"].as_str().unwrap_or_default(),
            yes(r["announced"].as_bool()),
            services.join(","),
            r["reason"].as_str().unwrap_or_default()
        );
    }
    out
}

/// The table `limpet affinity list` prints.
pub fn render_table(entries: &[AffinityView]) -> String {
    let mut out = format!(
        "{:<40} {:<34} {:<28} {:>8} {:>11}\n",
        "CLIENT", "SERVICE PORT", "BACKEND", "AGE", "EXPIRES IN"
    );
    for e in entries {
        let backend = match (e.backend_usable, e.backend_drain) {
            (false, _) => format!("{} (gone)", e.backend),
            (true, Some(crate::drain::Phase::Draining)) => format!("{} (draining)", e.backend),
            (true, _) => e.backend.clone(),
        };
        let expires = e
            .expires_in_seconds
            .map_or_else(|| "-".to_string(), |s| format!("{s}s"));
        let _ = writeln!(
            out,
            "{:<40} {:<34} {:<28} {:>7}s {:>11}",
            e.client, e.service, backend, e.idle_seconds, expires
        );
    }
    let _ = writeln!(out, "{} entries", entries.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_service_names() {
        assert_eq!(
            query(
                Some("default/hostnames:80/TCP"),
                Some("198.18.0.1".parse().unwrap())
            ),
            "?service=default%2Fhostnames%3A80%2FTCP&client=198.18.0.1"
        );
        assert_eq!(query(None, None), "");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn status_says_what_is_announced_and_why() {
        let v = serde_json::json!({
            "ready": true, "source_connected": true, "generation": 7, "service_ports": 2,
            "announce": {
                "speaker": "bird", "socket": "/run/bird/bird.ctl",
                "fragment": "/etc/bird/limpet.conf", "link": "limpet0",
                "link_up": true, "withdrawn_because": null, "speaker_ok": true,
                "last_error": null, "configured_ago_s": 3,
                "routes": [
                    {"address": "192.0.2.100", "serving": true, "services": ["default/web"],
                     "reason": "1 of 1 service ports have usable endpoints", "announced": true},
                    {"address": "192.0.2.101", "serving": false, "services": ["default/db"],
                     "reason": "none of its 1 service ports has a usable endpoint on this node",
                     "announced": false}
                ]
            }
        });
        let text = render_status(&v);
        assert!(text.contains("ready: yes"), "{text}");
        assert!(text.contains("generation 7, 2 service ports"), "{text}");
        assert!(text.contains("liveness link limpet0: up"), "{text}");
        assert!(
            text.contains("speaker: ok, took the routes 3 s ago"),
            "{text}"
        );
        let row = |addr: &str| {
            text.lines()
                .find(|l| l.starts_with(addr))
                .unwrap()
                .to_owned()
        };
        assert!(row("192.0.2.100").contains(" yes "), "{text}");
        assert!(row("192.0.2.101").contains(" no "), "{text}");
        assert!(row("192.0.2.101").ends_with("has a usable endpoint on this node"));
        let off = render_status(&serde_json::json!({"ready": false, "announce": null}));
        assert!(off.contains("announce: off"), "{off}");
    }
}
