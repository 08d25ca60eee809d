//! A `verify` stage's check, run by the driver: an HTTP probe (expected
//! status, a substring of the body) or a command (exit status 0). Every
//! check has its timeout and a kill path; what it found is one line for
//! the stage's outputs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::model::campaign::Verify;

/// Most of a probed body read for the substring check.
const MAX_BODY: usize = 1 << 20;

/// Whether the check passed, and what it saw.
pub fn check(v: &Verify) -> (bool, String) {
    match v {
        Verify::Http {
            url,
            status,
            body,
            timeout,
        } => http(url, *status, body.as_deref(), *timeout),
        Verify::Command { argv, timeout } => command(argv, *timeout),
    }
}

/// On a thread of its own with its own runtime, so it runs the same from
/// the CLI and from inside `fermata run`'s runtime.
fn http(url: &str, want: u16, body: Option<&str>, timeout: Duration) -> (bool, String) {
    let (url, body) = (url.to_string(), body.map(str::to_string));
    let probe = std::thread::spawn(move || -> Result<(bool, String), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| e.to_string())?;
            let mut resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", crate::errors::chain(&e)))?;
            let got = resp.status().as_u16();
            let mut text = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                text.extend_from_slice(&chunk);
                if text.len() >= MAX_BODY {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&text);
            if got != want {
                return Ok((false, format!("GET {url}: status {got}, expected {want}")));
            }
            match &body {
                Some(b) if !text.contains(b.as_str()) => {
                    Ok((false, format!("GET {url}: the body does not contain {b:?}")))
                }
                _ => Ok((true, format!("GET {url}: {got}"))),
            }
        })
    });
    match probe.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => (false, e),
        Err(_) => (false, "the probe panicked".into()),
    }
}

fn command(argv: &[String], timeout: Duration) -> (bool, String) {
    let Some((program, args)) = argv.split_first() else {
        return (false, "empty command".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, format!("{program}: {e}")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return (true, format!("{program}: exit 0")),
            Ok(Some(status)) => return (false, format!("{program}: {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, format!("{program}: killed after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return (false, format!("{program}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(argv: &[&str], ms: u64) -> Verify {
        Verify::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(ms),
        }
    }

    #[test]
    fn commands_pass_fail_and_are_killed_at_their_timeout() {
        assert!(check(&cmd(&["true"], 5000)).0);
        let (ok, why) = check(&cmd(&["false"], 5000));
        assert!(!ok && why.contains("exit status: 1"), "{why}");
        let (ok, why) = check(&cmd(&["sleep", "10"], 100));
        assert!(!ok && why.contains("killed after"), "{why}");
        let (ok, why) = check(&cmd(&["/no/such/program"], 100));
        assert!(!ok && why.contains("/no/such/program"), "{why}");
    }

    #[test]
    fn http_probes_check_status_and_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming().take(3) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nhealthy!\n",
                );
            }
        });
        let probe = |status, body: Option<&str>| Verify::Http {
            url: format!("http://{addr}/healthz"),
            status,
            body: body.map(str::to_string),
            timeout: Duration::from_secs(5),
        };
        assert!(check(&probe(200, Some("healthy"))).0);
        let (ok, why) = check(&probe(204, None));
        assert!(!ok && why.contains("status 200, expected 204"), "{why}");
        let (ok, why) = check(&probe(200, Some("ready")));
        assert!(!ok && why.contains("does not contain"), "{why}");
    }
}
